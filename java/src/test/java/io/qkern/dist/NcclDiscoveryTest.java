package io.qkern.dist;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.qkern.internal.NcclNative;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.MemoryLayout;
import java.lang.foreign.StructLayout;
import java.lang.foreign.ValueLayout;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Finding NCCL (or saying clearly where it looked), and the shapes the FFM downcalls rely on. */
class NcclDiscoveryTest {
    @TempDir
    Path dir;

    @Test
    void anOverrideThatDoesNotExistIsReportedAndNothingElseIsTried() {
        NcclNative.Discovery d = NcclNative.search("/nonexistent/libnccl.so.2", Map.of("LD_LIBRARY_PATH", "/tmp"));
        assertNull(d.library());
        assertEquals(List.of("-Dqkern.nccl.path=/nonexistent/libnccl.so.2 (no such file)"), d.searched());
    }

    @Test
    void aFileThatIsNotALibraryIsReportedAsSuch() throws Exception {
        Path fake = Files.writeString(dir.resolve("libnccl.so.2"), "not an ELF file");
        NcclNative.Discovery d = NcclNative.search(fake.toString(), Map.of());
        assertNull(d.library());
        assertTrue(d.describeSearch().contains("cannot be loaded"), d.describeSearch());
    }

    @Test
    void everyPlaceLookedAtIsListed() throws Exception {
        Path venv = dir.resolve("venv");
        Path wheel = Files.createDirectories(venv.resolve("lib/python3.12/site-packages/nvidia/nccl/lib"));
        Path ld = Files.createDirectories(dir.resolve("ld"));
        Map<String, String> env = Map.of("LD_LIBRARY_PATH", ld + ":" + dir.resolve("missing"), "CUDA_HOME",
                dir.resolve("cuda").toString(), "VIRTUAL_ENV", venv.toString());
        List<Path> dirs = NcclNative.candidateDirectories(env);
        assertEquals(List.of(ld, dir.resolve("missing"), dir.resolve("cuda/lib64"), Path.of("/usr/local/cuda/lib64"),
                Path.of("/usr/lib/x86_64-linux-gnu")), dirs.subList(0, 5));
        assertTrue(dirs.contains(wheel), dirs.toString());
        NcclNative.Discovery d = NcclNative.search(null, env);
        if (d.library() == null) { // this machine has no NCCL: the message must name every place
            String s = d.describeSearch();
            for (String expected : List.of("-Dqkern.nccl.path (not set)", "dynamic loader name libnccl.so.2",
                    "dynamic loader name libnccl.so", ld + " (no libnccl.so.2 / libnccl.so)",
                    dir.resolve("missing") + " (no such directory)", dir.resolve("cuda/lib64").toString(),
                    "/usr/local/cuda/lib64", "/usr/lib/x86_64-linux-gnu", wheel.toString())) {
                assertTrue(s.contains(expected), "missing \"" + expected + "\" in: " + s);
            }
        }
    }

    /** In a fresh JVM, so the property is read by the one-time discovery exactly as a user sets it. */
    @Test
    void thePropertyReachesTheFacadeAndTheErrorSaysWhereItLooked() throws Exception {
        List<String> cmd = new ArrayList<>(List.of(Path.of(System.getProperty("java.home"), "bin", "java").toString(),
                "--enable-native-access=ALL-UNNAMED", "-Dqkern.nccl.path=/nonexistent",
                "-cp", System.getProperty("java.class.path"), NcclProbeMain.class.getName()));
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
        String out = new String(p.getInputStream().readAllBytes());
        assertTrue(p.waitFor(60, TimeUnit.SECONDS));
        assertEquals(0, p.exitValue(), out);
        assertTrue(out.contains("available=false"), out);
        assertTrue(out.contains("describe=not found (looked in: -Dqkern.nccl.path=/nonexistent (no such file))"), out);
        assertTrue(out.contains("create=BACKEND NCCL (libnccl.so.2) was not found; looked in: "
                + "-Dqkern.nccl.path=/nonexistent (no such file)"), out);
    }

    @Test
    void uniqueIdIsA128ByteStructPassedByValue() {
        StructLayout id = NcclUniqueId.LAYOUT;
        assertEquals(128, id.byteSize());
        assertEquals(1, id.byteAlignment());
        assertEquals(1, id.memberLayouts().size());
        assertTrue(id.memberLayouts().get(0) instanceof java.lang.foreign.SequenceLayout s
                && s.elementCount() == 128 && s.elementLayout().equals(ValueLayout.JAVA_BYTE));
        // ncclCommInitRankConfig(ncclComm_t*, int, ncclUniqueId, int, ncclConfig_t*): the id is the struct
        // itself in the descriptor, not a pointer to it
        FunctionDescriptor init = FunctionDescriptor.of(ValueLayout.JAVA_INT, ValueLayout.ADDRESS,
                ValueLayout.JAVA_INT, NcclUniqueId.LAYOUT, ValueLayout.JAVA_INT, ValueLayout.ADDRESS);
        assertEquals(id, init.argumentLayouts().get(2));
        assertEquals(128, init.argumentLayouts().get(2).byteSize());
    }

    @Test
    void uniqueIdBytesAreCheckedAndCopied() {
        byte[] b = new byte[128];
        b[5] = 42;
        NcclUniqueId id = NcclUniqueId.of(b);
        b[5] = 0;
        assertEquals(42, id.toBytes()[5]);
        id.toBytes()[5] = 1;
        assertEquals(42, id.toBytes()[5]);
        for (byte[] bad : new byte[][] {null, new byte[127], new byte[129], new byte[0]}) {
            IllegalArgumentException e = org.junit.jupiter.api.Assertions.assertThrows(IllegalArgumentException.class,
                    () -> NcclUniqueId.of(bad));
            assertTrue(e.getMessage().contains("128"), e.getMessage());
        }
    }

    @Test
    void theConfigPrefixHasNccl214Offsets() {
        StructLayout c = NcclNative.CONFIG_2_14;
        assertEquals(40, c.byteSize());
        String[] names = {"size", "magic", "version", "blocking", "cgaClusterSize", "minCTAs", "maxCTAs", "netName"};
        long[] offsets = {0, 8, 12, 16, 20, 24, 28, 32};
        for (int i = 0; i < names.length; i++) {
            assertEquals(offsets[i], c.byteOffset(MemoryLayout.PathElement.groupElement(names[i])), names[i]);
        }
        try (java.lang.foreign.Arena arena = java.lang.foreign.Arena.ofConfined()) {
            var seg = NcclNative.nonBlockingConfig(arena);
            assertEquals(40L, seg.get(ValueLayout.JAVA_LONG, 0));
            assertEquals(0xcafebeef, seg.get(ValueLayout.JAVA_INT, 8));
            assertEquals(21400, seg.get(ValueLayout.JAVA_INT, 12));
            assertEquals(0, seg.get(ValueLayout.JAVA_INT, 16));
            assertEquals(Integer.MIN_VALUE, seg.get(ValueLayout.JAVA_INT, 20));
        }
    }
}
