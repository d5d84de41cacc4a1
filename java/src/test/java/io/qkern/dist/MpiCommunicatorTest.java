package io.qkern.dist;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import java.io.File;
import java.io.IOException;
import java.io.InputStream;
import java.lang.management.ManagementFactory;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;

/**
 * MpiCommunicator across two real processes: launches {@code mpirun -np 2} on {@link MpiSelfTestMain}
 * over loopback, with this JVM's classpath and native-access flags. Skipped when mpirun or Open
 * MPI's libmpi is missing, unless QKERN_REQUIRE_MPI=1 (CI), which turns that into a failure. Every
 * launch has a wall-clock bound; past it the whole process tree is killed and the test fails.
 */
class MpiCommunicatorTest {

    @Test
    void missingLibraryNamesWhereItLooked() {
        CommunicatorException e = assertThrows(CommunicatorException.class, () -> MpiLibrary.open("/nonexistent"));
        assertEquals(CommunicatorException.Kind.BACKEND, e.kind());
        assertTrue(e.getMessage().contains("-Dqkern.mpi.path=/nonexistent"), e.getMessage());
        assertTrue(e.getMessage().contains("Open MPI"), e.getMessage());
        assertTrue(e.getMessage().contains("apt-get install"), e.getMessage());
    }

    @Test
    void missingLibraryThroughTheSystemPropertyFailsWorld() {
        String before = System.getProperty("qkern.mpi.path");
        System.setProperty("qkern.mpi.path", "/nonexistent");
        try {
            CommunicatorException e = assertThrows(CommunicatorException.class,
                    () -> MpiCommunicator.world(Duration.ofSeconds(5)));
            assertEquals(CommunicatorException.Kind.BACKEND, e.kind());
            assertTrue(e.getMessage().contains("/nonexistent"), e.getMessage());
        } finally {
            if (before == null) {
                System.clearProperty("qkern.mpi.path");
            } else {
                System.setProperty("qkern.mpi.path", before);
            }
        }
    }

    @Test
    void aLibraryThatIsNotOpenMpiIsRefused() {
        CommunicatorException e = assertThrows(CommunicatorException.class, () -> MpiLibrary.open("libc.so.6"));
        assertEquals(CommunicatorException.Kind.BACKEND, e.kind());
        assertTrue(e.getMessage().contains("not Open MPI"), e.getMessage());
    }

    @Test
    void badTimeoutIsRefusedBeforeLoadingAnything() {
        CommunicatorException e = assertThrows(CommunicatorException.class, () -> MpiCommunicator.world(Duration.ZERO));
        assertEquals(CommunicatorException.Kind.INVALID_ARGUMENT, e.kind());
    }

    @Test
    void bf16RoundingIsNearestEven() {
        // against the neighbour-comparing reference, on random floats and on every tie pattern
        java.util.Random rnd = new java.util.Random(7);
        for (int i = 0; i < 200_000; i++) {
            int bits = i < 65536 ? (0x3f80_0000 | i) ^ (i % 3 == 0 ? 0x8000_0000 : 0) : rnd.nextInt();
            float f = Float.intBitsToFloat(bits);
            if (Float.isNaN(f)) {
                assertTrue(Float.isNaN(Float.intBitsToFloat(MpiCommunicator.toBf16(f) << 16)));
                continue;
            }
            assertEquals(MpiSelfTestMain.bf16Nearest(f), MpiCommunicator.toBf16(f) & 0xffff,
                    () -> "bits 0x" + Integer.toHexString(bits));
        }
    }

    @Test
    void everyCollectiveAcrossTwoProcesses() throws Exception {
        Run run = mpirun(Duration.ofSeconds(180), List.of(), "collectives");
        assertEquals(0, run.exitCode, run.output);
        assertPassed(run);
    }

    @Test
    void threeProcessesRunTheRingReduceScatterForEveryDtypeAndOp() throws Exception {
        // the ring takes P - 1 steps and reduces each block starting at a different rank: 3 ranks
        // exercise what 2 cannot (values are small integers, so every order gives the same sum)
        Run run = mpirun(3, Duration.ofSeconds(180), List.of(), "ring");
        assertEquals(0, run.exitCode, run.output);
        for (int r = 0; r < 3; r++) {
            Matcher m = Pattern.compile("RESULT ring rank " + r + " checks (\\d+) failures (\\d+)").matcher(run.output);
            assertTrue(m.find(), "rank " + r + " reported nothing:\n" + run.output);
            assertTrue(Integer.parseInt(m.group(1)) > 100, run.output);
            assertEquals("0", m.group(2), run.output);
        }
    }

    @Test
    void everyCollectiveSplitIntoSmallMpiCalls() throws Exception {
        // the > 2^31-1 element path, exercised with calls of at most 7 elements
        Run run = mpirun(Duration.ofSeconds(180), List.of("-Dqkern.mpi.maxCount=7"), "collectives");
        assertEquals(0, run.exitCode, run.output);
        assertPassed(run);
    }

    @Test
    void aStalledRankMakesTheOtherTimeOutInTime() throws Exception {
        long timeoutMs = 2000;
        Run run = mpirun(Duration.ofSeconds(60), List.of(), "stall", Long.toString(timeoutMs));
        Matcher m = Pattern.compile("RESULT stall rank 0 kind (\\w+) after_ms (\\d+) message (.*)").matcher(run.output);
        assertTrue(m.find(), run.output);
        assertEquals("TIMEOUT", m.group(1), run.output);
        long ms = Long.parseLong(m.group(2));
        assertTrue(ms >= timeoutMs - 50 && ms <= timeoutMs + 1500, "timed out after " + ms + " ms\n" + run.output);
        assertTrue(m.group(3).contains("rank [1] has not called it"), m.group(3));
        assertTrue(m.group(3).contains("all-reduce F32[3] SUM"), m.group(3));
        assertTrue(run.output.contains("RESULT stall rank 0 later ABORTED"), run.output);
        assertFalse(run.output.contains("completed (no timeout)"), run.output);
    }

    @Test
    void aDeadRankEndsTheJobInsteadOfHanging() throws Exception {
        long timeoutMs = 10_000;
        Run run = mpirun(Duration.ofSeconds(60), List.of(), "die", Long.toString(timeoutMs));
        assertTrue(run.output.contains("RESULT die rank 1 halting"), run.output);
        assertFalse(run.output.contains("completed (no failure)"), run.output);
        // Either rank 0 reports the failure itself, or mpirun ends the job (Open MPI's default).
        boolean reported = Pattern.compile("RESULT die rank 0 kind (TIMEOUT|BACKEND)").matcher(run.output).find();
        boolean endedByMpirun = run.exitCode != 0 && run.output.contains("exited with non-zero status");
        assertTrue(reported || endedByMpirun, run.output);
        assertTrue(run.wallMs <= timeoutMs + 20_000, "job took " + run.wallMs + " ms\n" + run.output);
    }

    // ---- launching ---------------------------------------------------------------------------------

    record Run(int exitCode, String output, long wallMs) {}

    private static void assertPassed(Run run) {
        for (int r = 0; r < 2; r++) {
            Matcher m = Pattern.compile("RESULT rank " + r + " checks (\\d+) failures (\\d+)").matcher(run.output);
            assertTrue(m.find(), "rank " + r + " reported nothing:\n" + run.output);
            assertTrue(Integer.parseInt(m.group(1)) > 250, run.output);
            assertEquals("0", m.group(2), run.output);
        }
        assertFalse(run.output.contains("FAIL rank"), run.output);
    }

    private static Run mpirun(Duration limit, List<String> extraJvmFlags, String... mainArgs) throws Exception {
        return mpirun(2, limit, extraJvmFlags, mainArgs);
    }

    private static Run mpirun(int processes, Duration limit, List<String> extraJvmFlags, String... mainArgs)
            throws Exception {
        String mpirun = requireMpi();
        List<String> cmd = new ArrayList<>(List.of(mpirun, "-np", Integer.toString(processes), "--oversubscribe",
                "--bind-to", "none"));
        if ("root".equals(System.getProperty("user.name"))) {
            cmd.add("--allow-run-as-root");
        }
        cmd.add(Path.of(System.getProperty("java.home"), "bin", "java").toString());
        for (String a : ManagementFactory.getRuntimeMXBean().getInputArguments()) {
            if (a.startsWith("--enable-native-access") || a.startsWith("-Dqkern.")) {
                cmd.add(a);
            }
        }
        // small, quick-starting JVMs: the two ranks share the machine with the build
        cmd.addAll(List.of("-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xshare:auto"));
        cmd.addAll(extraJvmFlags);
        cmd.add("-cp");
        cmd.add(System.getProperty("surefire.test.class.path", System.getProperty("java.class.path")));
        cmd.add(MpiSelfTestMain.class.getName());
        cmd.addAll(List.of(mainArgs));

        ProcessBuilder pb = new ProcessBuilder(cmd).redirectErrorStream(true)
                .redirectInput(ProcessBuilder.Redirect.from(new File("/dev/null")));
        Map<String, String> env = pb.environment();
        // Loopback only; no single-copy (CMA) shared memory, which containers often forbid.
        env.put("OMPI_MCA_btl", "self,vader,tcp");
        env.put("OMPI_MCA_btl_vader_single_copy_mechanism", "none");
        env.put("OMPI_MCA_btl_tcp_if_include", "lo");
        env.put("OMPI_MCA_oob_tcp_if_include", "lo");
        long start = System.nanoTime();
        Process p = pb.start();
        StringBuilder out = new StringBuilder();
        Thread reader = new Thread(() -> {
            try (InputStream in = p.getInputStream()) {
                byte[] buf = new byte[8192];
                for (int n; (n = in.read(buf)) > 0;) {
                    synchronized (out) {
                        out.append(new String(buf, 0, n, StandardCharsets.UTF_8));
                    }
                }
            } catch (IOException ignored) {
                // the process tree was killed
            }
        }, "mpirun-output");
        reader.setDaemon(true);
        reader.start();
        if (!p.waitFor(limit.toMillis(), TimeUnit.MILLISECONDS)) {
            p.descendants().forEach(ProcessHandle::destroyForcibly);
            p.destroyForcibly();
            p.waitFor(10, TimeUnit.SECONDS);
            reader.join(2000);
            synchronized (out) {
                fail("mpirun " + String.join(" ", mainArgs) + " did not end within " + limit + " (killed):\n" + out);
            }
        }
        long wallMs = (System.nanoTime() - start) / 1_000_000;
        reader.join(5000);
        synchronized (out) {
            return new Run(p.exitValue(), out.toString(), wallMs);
        }
    }

    /** The mpirun to use, or a skip (a failure under QKERN_REQUIRE_MPI=1) when MPI is missing. */
    private static String requireMpi() {
        String why = null;
        String mpirun = null;
        for (String dir : System.getenv().getOrDefault("PATH", "").split(File.pathSeparator)) {
            Path candidate = Path.of(dir.isEmpty() ? "." : dir, "mpirun");
            if (Files.isExecutable(candidate)) {
                mpirun = candidate.toString();
                break;
            }
        }
        if (mpirun == null) {
            why = "mpirun is not on the PATH";
        } else {
            try {
                MpiLibrary.open(System.getProperty("qkern.mpi.path"));
            } catch (CommunicatorException e) {
                why = e.getMessage();
            }
        }
        if (why != null) {
            if ("1".equals(System.getenv("QKERN_REQUIRE_MPI"))) {
                fail("QKERN_REQUIRE_MPI=1 but Open MPI is not usable: " + why);
            }
            Assumptions.abort("Open MPI not available (set QKERN_REQUIRE_MPI=1 to fail instead): " + why);
        }
        return mpirun;
    }
}
