package io.qkern.dist;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Tensor;
import io.qkern.internal.NcclNative;
import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.SymbolLookup;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.MethodHandle;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The FFM bindings against a TEST DOUBLE of NCCL's C ABI (src/test/native/nccl_test_double.c,
 * compiled here with the system C compiler): the unique id passed by value, the non-blocking config,
 * error mapping with NCCL's own strings, timeouts and aborts. The double moves no data; the
 * collectives themselves need a real NCCL and GPU (NcclGpuTest).
 */
class NcclTestDoubleTest {
    @TempDir
    static Path dir;

    static Path library;
    static NcclNative nccl;
    static MethodHandle lastId, aborts, destroys;

    @BeforeAll
    static void build() throws Exception {
        Path source = Path.of("src/test/native/nccl_test_double.c").toAbsolutePath();
        library = dir.resolve("libnccl_test_double.so");
        Process p;
        try {
            p = new ProcessBuilder("cc", "-shared", "-fPIC", "-O1", "-Wall", "-Werror", "-o", library.toString(),
                    source.toString()).redirectErrorStream(true).start();
        } catch (java.io.IOException e) {
            Assumptions.abort("no C compiler (cc) to build the NCCL test double: " + e.getMessage());
            return;
        }
        String log = new String(p.getInputStream().readAllBytes());
        assertTrue(p.waitFor(120, TimeUnit.SECONDS), "cc timed out");
        assertEquals(0, p.exitValue(), "cc failed:\n" + log);
        nccl = NcclNative.open(library.toString(), "test double");
        SymbolLookup lookup = SymbolLookup.libraryLookup(library, Arena.global());
        Linker linker = Linker.nativeLinker();
        lastId = linker.downcallHandle(lookup.find("test_double_last_id").orElseThrow(),
                FunctionDescriptor.ofVoid(ValueLayout.ADDRESS));
        aborts = linker.downcallHandle(lookup.find("test_double_aborts").orElseThrow(),
                FunctionDescriptor.of(ValueLayout.JAVA_INT));
        destroys = linker.downcallHandle(lookup.find("test_double_destroys").orElseThrow(),
                FunctionDescriptor.of(ValueLayout.JAVA_INT));
    }

    private static byte[] idReceivedByDouble() throws Throwable {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment out = arena.allocate(NcclUniqueId.LAYOUT);
            lastId.invokeExact(out);
            return out.toArray(ValueLayout.JAVA_BYTE);
        }
    }

    private static byte[] doublePattern() {
        byte[] b = new byte[128];
        for (int i = 0; i < 128; i++) {
            b[i] = (byte) ((i * 7 + 3) & 0xff);
        }
        return b;
    }

    @Test
    void versionIsDecodedFromNcclGetVersion() {
        assertEquals(22105, nccl.versionCode());
        assertEquals("2.21.5", nccl.versionString());
        assertEquals("2.8.4", NcclNative.decodeVersion(2804)); // the pre-2.9 encoding
        assertEquals("no error", nccl.errorString(0));
    }

    @Test
    void uniqueIdComesFromNcclGetUniqueId() {
        NcclUniqueId id = NcclUniqueId.create(nccl);
        assertArrayEquals(doublePattern(), id.toBytes());
    }

    @Test
    void uniqueIdArrivesIntactByValueAndCpuTensorsAreRejected() throws Throwable {
        NcclUniqueId id = NcclUniqueId.create(nccl);
        int destroyedBefore = (int) destroys.invokeExact();
        NcclCommunicator c = NcclCommunicator.initRankOnCurrentDevice(nccl, id, 0, 1, Device.cuda(0),
                Duration.ofSeconds(5), false);
        try {
            assertArrayEquals(id.toBytes(), idReceivedByDouble());
            assertEquals("nccl", c.backend());
            assertEquals(0, c.rank());
            assertEquals(1, c.size());
            try (Tensor cpu = Tensor.allocate(DType.F32, Device.CPU, 4)) {
                CommunicatorException e = assertThrows(CommunicatorException.class,
                        () -> c.allReduce(cpu, ReduceOp.SUM));
                assertEquals(CommunicatorException.Kind.INVALID_ARGUMENT, e.kind());
                assertTrue(e.getMessage().contains("cpu") && e.getMessage().contains("cuda:0"), e.getMessage());
                e = assertThrows(CommunicatorException.class, () -> c.broadcast(cpu, 0));
                assertEquals(CommunicatorException.Kind.INVALID_ARGUMENT, e.kind());
            }
        } finally {
            c.close();
            c.close(); // idempotent
        }
        assertEquals(destroyedBefore + 1, (int) destroys.invokeExact());
        CommunicatorException e = assertThrows(CommunicatorException.class, c::barrier);
        assertEquals(CommunicatorException.Kind.ABORTED, e.kind());
        assertTrue(e.getMessage().contains("closed"), e.getMessage());
    }

    @Test
    void aDamagedIdIsReportedWithNcclsOwnErrorText() {
        byte[] bytes = doublePattern();
        bytes[77] ^= 1;
        CommunicatorException e = assertThrows(CommunicatorException.class,
                () -> NcclCommunicator.initRankOnCurrentDevice(nccl, NcclUniqueId.of(bytes), 0, 1, Device.cuda(0),
                        Duration.ofSeconds(5), false));
        assertEquals(CommunicatorException.Kind.BACKEND, e.kind());
        assertTrue(e.getMessage().contains("invalid argument"), e.getMessage());          // ncclGetErrorString
        assertTrue(e.getMessage().contains("did not arrive intact"), e.getMessage());     // ncclGetLastError
        assertTrue(e.getMessage().contains("ncclCommInitRankConfig"), e.getMessage());
    }

    @Test
    void aPeerThatNeverArrivesTimesOutAndAborts() throws Throwable {
        int abortedBefore = (int) aborts.invokeExact();
        long t0 = System.nanoTime();
        CommunicatorException e = assertThrows(CommunicatorException.class,
                () -> NcclCommunicator.initRankOnCurrentDevice(nccl, NcclUniqueId.create(nccl), 0, 2, Device.cuda(0),
                        Duration.ofMillis(300), false));
        long ms = (System.nanoTime() - t0) / 1_000_000;
        assertEquals(CommunicatorException.Kind.TIMEOUT, e.kind());
        assertTrue(e.getMessage().contains("PT0.3S"), e.getMessage());
        assertTrue(ms >= 290 && ms < 5_000, "took " + ms + " ms");
        assertEquals(abortedBefore + 1, (int) aborts.invokeExact());
    }

    @Test
    void anAsyncErrorIsMappedAndAborts() throws Throwable {
        int abortedBefore = (int) aborts.invokeExact();
        CommunicatorException e = assertThrows(CommunicatorException.class,
                () -> NcclCommunicator.initRankOnCurrentDevice(nccl, NcclUniqueId.create(nccl), 1, 3, Device.cuda(0),
                        Duration.ofSeconds(5), false));
        assertEquals(CommunicatorException.Kind.BACKEND, e.kind());
        assertTrue(e.getMessage().contains("remote process exited"), e.getMessage());
        assertTrue(e.getMessage().contains("peer rank 2 closed its connection"), e.getMessage());
        assertTrue(e.getMessage().startsWith("rank 1"), e.getMessage());
        assertEquals(abortedBefore + 1, (int) aborts.invokeExact());
    }

    @Test
    void argumentsAreCheckedBeforeNcclIsCalled() {
        NcclUniqueId id = NcclUniqueId.create(nccl);
        for (int[] rs : new int[][] {{-1, 2}, {2, 2}, {0, 0}}) {
            CommunicatorException e = assertThrows(CommunicatorException.class,
                    () -> NcclCommunicator.initRankOnCurrentDevice(nccl, id, rs[0], rs[1], Device.cuda(0),
                            Duration.ofSeconds(1), false));
            assertEquals(CommunicatorException.Kind.INVALID_ARGUMENT, e.kind(), e.getMessage());
        }
        CommunicatorException e = assertThrows(CommunicatorException.class,
                () -> NcclCommunicator.initRankOnCurrentDevice(nccl, id, 0, 1, Device.CPU, Duration.ofSeconds(1),
                        false));
        assertTrue(e.getMessage().contains("CUDA devices") && e.getMessage().contains("cpu"), e.getMessage());
        e = assertThrows(CommunicatorException.class,
                () -> NcclCommunicator.initRankOnCurrentDevice(nccl, id, 0, 1, Device.cuda(0), Duration.ZERO, false));
        assertTrue(e.getMessage().contains("timeout"), e.getMessage());
    }

    @Test
    void functionsTheDoubleLacksFailByName() {
        CommunicatorException e = assertThrows(CommunicatorException.class,
                () -> NcclCommunicator.initAllWith(nccl, List.of(Device.cuda(0)), Duration.ofSeconds(1)));
        assertEquals(CommunicatorException.Kind.BACKEND, e.kind());
        assertTrue(e.getMessage().contains("lacks ncclCommInitAll"), e.getMessage());
    }

    @Test
    void theDoubleIsFoundThroughThePathOverride() throws Exception {
        NcclNative.Discovery d = NcclNative.search(library.toString(), java.util.Map.of());
        assertTrue(d.library() != null, d.describeSearch());
        assertEquals("2.21.5", d.library().versionString());
        assertTrue(d.describeSearch().contains("found: NCCL 2.21.5"), d.describeSearch());
        // and through a directory on LD_LIBRARY_PATH, under NCCL's own file name
        Path libDir = Files.createDirectories(dir.resolve("ld"));
        Files.copy(library, libDir.resolve("libnccl.so.2"));
        d = NcclNative.search(null, java.util.Map.of("LD_LIBRARY_PATH", libDir.toString()));
        if (d.library() != null && d.library().location().startsWith("/")) {
            assertEquals(libDir.resolve("libnccl.so.2").toString(), d.library().location());
        }
        assertTrue(d.describeSearch().contains("dynamic loader name libnccl.so.2"), d.describeSearch());
    }
}
