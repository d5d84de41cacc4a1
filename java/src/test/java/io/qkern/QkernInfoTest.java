package io.qkern;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.qkern.internal.NativeLib;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.FileTime;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.concurrent.TimeUnit;
import java.util.stream.Stream;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** {@link Qkern#info()} in this JVM, and the loader's -D overrides in child JVMs. */
class QkernInfoTest {

    /** The flags of the first processor in /proc/cpuinfo, or null if there is no such file. */
    static Set<String> cpuinfoFlags() throws IOException {
        Path p = Path.of("/proc/cpuinfo");
        if (!Files.isReadable(p)) {
            return null;
        }
        for (String line : Files.readAllLines(p)) {
            if (line.startsWith("flags")) {
                return new HashSet<>(Arrays.asList(line.substring(line.indexOf(':') + 1).trim().split("\\s+")));
            }
        }
        return null;
    }

    @Test
    void infoDescribesTheLoadedLibrary() {
        Qkern.Info info = Qkern.info();
        assertTrue(info.nativeLoaded(), () -> "native library failed to load: " + info.loadFailure());
        assertNull(info.loadFailure());
        assertEquals(NativeLib.EXPECTED_ABI_VERSION, info.abiVersion());
        assertEquals(Runtime.version().toString(), info.javaVersion());
        assertNotNull(info.libraryPath());
        assertTrue(Files.isRegularFile(Path.of(info.libraryPath())), info.libraryPath());
        assertFalse(info.libraryOrigin().isBlank());
        assertFalse(info.libraryVersion().isBlank());
        assertTrue(Set.of("scalar", "avx2", "avx512").contains(info.cpuPath()), info.cpuPath());
        assertTrue(info.cpuThreads() >= 1);
        assertNotNull(info.cudaStatus());
        assertFalse(info.cudaStatus().isBlank(), "CUDA's state is explained even when it is unavailable");
        assertEquals(Qkern.cudaAvailable(), info.cudaAvailable());
        assertEquals(Device.CPU, info.devices().get(0).device(), "the CPU is always the first device");
        assertEquals(info.cudaAvailable() ? 1 + NativeLib.get().deviceCount(Device.Kind.CUDA.code()) : 1,
                info.devices().size());
        String text = info.format();
        assertTrue(text.contains("cpu path    " + info.cpuPath()), text);
        assertTrue(text.contains("abi         " + NativeLib.EXPECTED_ABI_VERSION), text);
        assertTrue(text.contains(info.libraryPath()), text);
        assertTrue(text.contains(info.cudaStatus()), text);
        assertFalse(text.contains("UNAVAILABLE"), text);
    }

    /** This machine (CI) has no GPU: CUDA must say so, with a reason, and the default device is the CPU. */
    @Test
    void cudaIsReportedUnavailableWithoutAGpu() {
        Assumptions.assumeFalse(Files.exists(Path.of("/dev/nvidia0")), "a GPU is present");
        Qkern.Info info = Qkern.info();
        assertFalse(info.cudaAvailable());
        assertFalse(Qkern.cudaAvailable());
        assertEquals(Device.CPU, Qkern.defaultDevice());
        assertEquals(1, info.devices().size());
        assertTrue(info.format().contains("cuda        unavailable: " + info.cudaStatus()), info.format());
    }

    @Test
    void cpuPathMatchesWhatTheCpuSupports() throws IOException {
        Set<String> flags = cpuinfoFlags();
        Assumptions.assumeTrue(flags != null, "no /proc/cpuinfo");
        Assumptions.assumeTrue(System.getenv("QKERN_CPU_PATH") == null, "QKERN_CPU_PATH pins the path");
        Qkern.setCpuPath("auto");
        Qkern.Info info = Qkern.info();
        String expected = flags.containsAll(List.of("avx512f", "avx512bw", "avx512vl", "avx512dq")) ? "avx512"
                : flags.containsAll(List.of("avx2", "fma", "f16c")) ? "avx2" : "scalar";
        assertEquals(expected, info.cpuPath(), "flags: " + flags);
        if (!flags.contains("avx512f")) {
            assertFalse(info.cpuPath().contains("avx512"));
            assertFalse(info.cpuFeatures().contains("avx512"), info.cpuFeatures());
            QkernException e = assertThrows(QkernException.class, () -> Qkern.setCpuPath("avx512"));
            assertEquals(QkernException.Status.UNSUPPORTED, e.status());
            assertEquals(expected, Qkern.cpuPath());
        }
        // every feature the library claims is one the kernel reports
        for (String f : info.cpuFeatures().split(" ")) {
            if (!f.isEmpty()) {
                assertTrue(flags.contains(f), "library claims " + f + " but /proc/cpuinfo lacks it");
            }
        }
        assertTrue(info.format().contains("cpu path    " + expected), info.format());
    }

    // ---- child JVMs ------------------------------------------------------------------------------------

    record Result(int exit, String output) {}

    static Result runChild(String mainClass, List<String> jvmArgs, String... args)
            throws IOException, InterruptedException {
        String java = ProcessHandle.current().info().command().orElse(
                Path.of(System.getProperty("java.home"), "bin", "java").toString());
        List<String> cmd = new ArrayList<>();
        cmd.add(java);
        cmd.add("--enable-native-access=ALL-UNNAMED");
        cmd.add("-Xshare:auto");
        cmd.add("-XX:TieredStopAtLevel=1");
        cmd.addAll(jvmArgs);
        cmd.add("-cp");
        cmd.add(System.getProperty("java.class.path"));
        cmd.add(mainClass);
        cmd.addAll(List.of(args));
        ProcessBuilder pb = new ProcessBuilder(cmd).redirectErrorStream(true);
        pb.environment().remove("QKERN_CPU_PATH");
        Process p = pb.start();
        byte[] out = p.getInputStream().readAllBytes();
        assertTrue(p.waitFor(60, TimeUnit.SECONDS), "child JVM finished");
        return new Result(p.exitValue(), new String(out, StandardCharsets.UTF_8));
    }

    @Test
    void libraryPathOverrideNamingAMissingFileIsReportedNotThrown() throws Exception {
        Result r = runChild("io.qkern.PrintInfoMain", List.of("-Dqkern.library.path=/nonexistent/libqkern.so"));
        assertEquals(0, r.exit(), r.output());
        assertTrue(r.output().contains("UNAVAILABLE"), r.output());
        assertTrue(r.output().contains("/nonexistent/libqkern.so"), r.output());
        assertTrue(r.output().contains("qkern.library.path"), r.output());
        assertTrue(r.output().contains("nativeLoaded=false"), r.output());
        // the CLI turns the same failure into exit code 1 with the reason
        Result cli = runChild("io.qkern.cli.Main", List.of("-Dqkern.library.path=/nonexistent/libqkern.so"), "info");
        assertEquals(1, cli.exit(), cli.output());
        assertTrue(cli.output().contains("UNAVAILABLE") && cli.output().contains("/nonexistent/libqkern.so"),
                cli.output());
    }

    @Test
    void libraryPathOverrideLoadsThatFile() throws Exception {
        Path lib = Path.of(Qkern.info().libraryPath());
        Result r = runChild("io.qkern.PrintInfoMain", List.of("-Dqkern.library.path=" + lib));
        assertEquals(0, r.exit(), r.output());
        assertTrue(r.output().contains("nativeLoaded=true"), r.output());
        assertTrue(r.output().contains("libraryPath=" + lib.toAbsolutePath()), r.output());
        assertTrue(r.output().contains("(-Dqkern.library.path)"), r.output());
    }

    @Test
    void cacheDirectoryReceivesTheExtractedLibraryOnceAndReusesIt(@TempDir Path cache) throws Exception {
        List<String> jvm = List.of("-Dqkern.cache.dir=" + cache);
        Result first = runChild("io.qkern.PrintInfoMain", jvm);
        assertEquals(0, first.exit(), first.output());
        assertTrue(first.output().contains("nativeLoaded=true"), first.output());
        List<Path> libs;
        try (Stream<Path> s = Files.walk(cache)) {
            libs = s.filter(p -> p.getFileName().toString().equals("libqkern.so")).toList();
        }
        assertEquals(1, libs.size(), "one extracted library under " + cache + ": " + libs);
        Path lib = libs.get(0);
        assertTrue(lib.startsWith(cache));
        assertTrue(first.output().contains("libraryPath=" + lib), first.output());
        assertTrue(first.output().contains("extracted to " + lib.getParent()), first.output());
        try (Stream<Path> s = Files.list(lib.getParent())) {
            assertEquals(List.of(lib), s.toList(), "no temp files left beside the library");
        }
        // bytes are the jar resource's
        try (var in = QkernInfoTest.class.getResourceAsStream("/native/linux-x86_64/libqkern.so")) {
            Assumptions.assumeTrue(in != null, "no packed library on the class path");
            assertTrue(Arrays.equals(in.readAllBytes(), Files.readAllBytes(lib)), "extracted bytes match");
        }
        FileTime mtime = Files.getLastModifiedTime(lib);
        long inode = (Long) Files.getAttribute(lib, "unix:ino");
        Thread.sleep(20);

        Result second = runChild("io.qkern.PrintInfoMain", jvm);
        assertEquals(0, second.exit(), second.output());
        assertTrue(second.output().contains("libraryPath=" + lib), second.output());
        assertEquals(mtime, Files.getLastModifiedTime(lib), "the second run reused the extracted file");
        assertEquals(inode, (Long) Files.getAttribute(lib, "unix:ino"), "not replaced");
    }

    @Test
    void aCorruptedCachedCopyIsReplaced(@TempDir Path cache) throws Exception {
        List<String> jvm = List.of("-Dqkern.cache.dir=" + cache);
        assertEquals(0, runChild("io.qkern.PrintInfoMain", jvm).exit());
        Path lib;
        try (Stream<Path> s = Files.walk(cache)) {
            lib = s.filter(p -> p.getFileName().toString().equals("libqkern.so")).findFirst().orElseThrow();
        }
        byte[] good = Files.readAllBytes(lib);
        Files.write(lib, new byte[] {1, 2, 3});  // a truncated, corrupted copy
        Result r = runChild("io.qkern.PrintInfoMain", jvm);
        assertEquals(0, r.exit(), r.output());
        assertTrue(r.output().contains("nativeLoaded=true"), r.output());
        assertTrue(Arrays.equals(good, Files.readAllBytes(lib)), "the checksum mismatch triggered a fresh extraction");
    }
}
