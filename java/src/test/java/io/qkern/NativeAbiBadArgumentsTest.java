package io.qkern;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertDoesNotThrow;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.qkern.QkernException.Status;
import io.qkern.internal.NativeLib;
import io.qkern.internal.Nf4Native;
import io.qkern.internal.TensorStruct;
import io.qkern.nf4.Nf4;
import io.qkern.nf4.Nf4Tensor;
import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.SymbolLookup;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.MethodHandle;
import java.util.function.Consumer;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.function.Executable;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * Every ABI entry point fed bad arguments from Java through {@link NativeLib} with hand-built
 * {@code qk_tensor} descriptors: each call must fail with a {@link QkernException} carrying
 * the right status and a message naming the argument or value, and the JVM keeps running.
 * (A crash would take the whole test JVM down, which surefire reports as a failure.)
 */
class NativeAbiBadArgumentsTest {
    private static final int F32 = DType.F32.code();
    private static final int U8 = DType.U8.code();
    private static final int CPU = Device.Kind.CPU.code();
    private static final int CUDA = Device.Kind.CUDA.code();
    private static final long BS = 64;

    private final NativeLib lib = NativeLib.get();
    private final Nf4Native nf4 = Nf4Native.get();
    private Arena arena;
    /** Real host buffers for the valid tensors of each call: x F32[128], packed U8[64], absmax F32[2]. */
    private MemorySegment xBuf;
    private MemorySegment packedBuf;
    private MemorySegment absmaxBuf;

    @BeforeEach
    void buffers() {
        arena = Arena.ofConfined();
        xBuf = arena.allocate(128 * 4, 64);
        for (int i = 0; i < 128; i++) {
            xBuf.setAtIndex(ValueLayout.JAVA_FLOAT, i, (i - 64) / 10f);
        }
        packedBuf = arena.allocate(64, 64);
        absmaxBuf = arena.allocate(2 * 4, 64);
    }

    @AfterEach
    void close() {
        arena.close();
    }

    // ---- descriptor helpers ---------------------------------------------------------------------------

    /** A descriptor of a contiguous tensor over {@code seg}. */
    private MemorySegment desc(MemorySegment seg, int dtype, long... shape) {
        return desc(seg.address(), seg.byteSize(), dtype, CPU, 0, shape, TensorStruct.contiguousStrides(shape));
    }

    private MemorySegment desc(long address, long nbytes, int dtype, int kind, int index, long[] shape, long[] strides) {
        return TensorStruct.write(arena, address, nbytes, dtype, kind, index, shape, strides);
    }

    private MemorySegment x() {
        return desc(xBuf, F32, 128);
    }

    private MemorySegment packed() {
        return desc(packedBuf, U8, 64);
    }

    private MemorySegment absmax() {
        return desc(absmaxBuf, F32, 2);
    }

    private void quantize(MemorySegment x, long blocksize, MemorySegment packed, MemorySegment absmax) {
        nf4.nf4Quantize(x, blocksize, packed, absmax, new long[] {-2}, MemorySegment.NULL);
    }

    private void quantizeX(MemorySegment x) {
        quantize(x, BS, packed(), absmax());
    }

    /** Asserts the call throws a QkernException with {@code status} whose message holds every part. */
    private static QkernException expect(Status status, Executable call, String... parts) {
        QkernException e = assertThrows(QkernException.class, call);
        assertEquals(status, e.status(), e.getMessage());
        for (String p : parts) {
            assertTrue(e.getMessage().contains(p), () -> "message \"" + e.getMessage() + "\" lacks \"" + p + "\"");
        }
        return e;
    }

    // ---- sanity: the valid call succeeds, so every failure below is caused by its one bad argument -------

    @Test
    void validCallSucceeds() {
        long[] bad = {-2};
        nf4.nf4Quantize(x(), BS, packed(), absmax(), bad, MemorySegment.NULL);
        assertEquals(-1, bad[0]);
        assertEquals(6.4f, absmaxBuf.getAtIndex(ValueLayout.JAVA_FLOAT, 0));  // |(0-64)/10|
        assertEquals(6.3f, absmaxBuf.getAtIndex(ValueLayout.JAVA_FLOAT, 1));
        MemorySegment out = arena.allocate(128 * 4, 64);
        nf4.nf4Dequantize(packed(), absmax(), BS, desc(out, F32, 8, 16), MemorySegment.NULL);
        for (int i = 0; i < 128; i++) {
            float v = xBuf.getAtIndex(ValueLayout.JAVA_FLOAT, i);
            assertEquals(v, out.getAtIndex(ValueLayout.JAVA_FLOAT, i), 6.4f * 0.16f, "element " + i);
        }
    }

    // ---- qk_nf4_quantize: descriptors ---------------------------------------------------------------------

    @Test
    void nullDescriptor() {
        expect(Status.INVALID_ARGUMENT, () -> quantizeX(MemorySegment.NULL), "qk_nf4_quantize", "x is NULL");
        expect(Status.INVALID_ARGUMENT, () -> quantize(x(), BS, MemorySegment.NULL, absmax()), "packed is NULL");
        expect(Status.INVALID_ARGUMENT, () -> quantize(x(), BS, packed(), MemorySegment.NULL), "absmax is NULL");
        expect(Status.INVALID_ARGUMENT, () -> nf4.nf4Dequantize(packed(), absmax(), BS, MemorySegment.NULL,
                MemorySegment.NULL), "qk_nf4_dequantize", "out is NULL");
    }

    @Test
    void nullDataWithNonzeroShape() {
        expect(Status.INVALID_ARGUMENT, () -> quantizeX(desc(0, 512, F32, CPU, 0, new long[] {128}, new long[] {1})),
                "x has a NULL data pointer");
        // NULL data is fine for an empty tensor (nothing is read)
        MemorySegment empty = desc(0, 0, F32, CPU, 0, new long[] {0, 4}, new long[] {4, 1});
        MemorySegment noPacked = desc(0, 0, U8, CPU, 0, new long[] {0}, new long[] {1});
        MemorySegment noAbsmax = desc(0, 0, F32, CPU, 0, new long[] {0}, new long[] {1});
        assertDoesNotThrow(() -> quantize(empty, BS, noPacked, noAbsmax));
    }

    @Test
    void negativeShape() {
        expect(Status.INVALID_ARGUMENT,
                () -> quantizeX(desc(xBuf.address(), 512, F32, CPU, 0, new long[] {-4, 32}, new long[] {32, 1})),
                "x has negative size -4 in dim 0");
    }

    @Test
    void negativeStride() {
        expect(Status.INVALID_ARGUMENT,
                () -> quantizeX(desc(xBuf.address(), 512, F32, CPU, 0, new long[] {4, 32}, new long[] {-32, 1})),
                "x has negative stride -32 in dim 0");
    }

    @Test
    void nonContiguousStride() {
        expect(Status.INVALID_ARGUMENT,
                () -> quantizeX(desc(xBuf.address(), 512, F32, CPU, 0, new long[] {4, 16}, new long[] {32, 1})),
                "x must be contiguous", "stride 32");
    }

    @Test
    void overflowSizedShape() {
        long big = 1L << 62;
        expect(Status.INVALID_ARGUMENT,
                () -> quantizeX(desc(xBuf.address(), 512, F32, CPU, 0, new long[] {big, 4}, new long[] {4, 1})),
                "x", "overflows 64 bits");
        // element count overflow with unit strides
        expect(Status.INVALID_ARGUMENT,
                () -> quantizeX(desc(xBuf.address(), 512, F32, CPU, 0, new long[] {big, 4}, new long[] {0, 0})),
                "x element count overflows 64 bits");
        // the byte extent overflows though the element extent does not
        expect(Status.INVALID_ARGUMENT,
                () -> quantizeX(desc(xBuf.address(), 512, F32, CPU, 0, new long[] {big}, new long[] {1})),
                "x byte extent overflows 64 bits");
    }

    @Test
    void nbytesSmallerThanNeeded() {
        expect(Status.INVALID_ARGUMENT,
                () -> quantizeX(desc(xBuf.address(), 16, F32, CPU, 0, new long[] {8}, new long[] {1})),
                "x needs 32 bytes but its buffer holds 16");
        expect(Status.INVALID_ARGUMENT,
                () -> quantizeX(desc(xBuf.address(), -1, F32, CPU, 0, new long[] {8}, new long[] {1})),
                "x has negative nbytes -1");
        // an output one byte short must be refused before anything is written past it
        packedBuf.fill((byte) 0x5A);
        expect(Status.INVALID_ARGUMENT,
                () -> quantize(x(), BS, desc(packedBuf.address(), 63, U8, CPU, 0, new long[] {64}, new long[] {1}),
                        absmax()),
                "packed needs 64 bytes but its buffer holds 63");
        for (int i = 0; i < 64; i++) {
            assertEquals((byte) 0x5A, packedBuf.get(ValueLayout.JAVA_BYTE, i), "packed untouched after a failed call");
        }
    }

    @Test
    void unknownDtypeCode() {
        expect(Status.INVALID_ARGUMENT, () -> quantizeX(desc(xBuf, 99, 128)), "x has unknown dtype code 99");
        expect(Status.INVALID_ARGUMENT, () -> quantizeX(desc(xBuf, -1, 128)), "unknown dtype code -1");
    }

    @Test
    void wrongDtype() {
        expect(Status.INVALID_ARGUMENT, () -> quantizeX(desc(xBuf, DType.I32.code(), 128)),
                "x has dtype I32", "expected F32, F16, BF16");
        expect(Status.INVALID_ARGUMENT, () -> quantize(x(), BS, desc(packedBuf, DType.I8.code(), 64), absmax()),
                "packed has dtype I8");
        expect(Status.INVALID_ARGUMENT, () -> quantize(x(), BS, packed(), desc(absmaxBuf, DType.F16.code(), 4)),
                "absmax has dtype F16");
    }

    @Test
    void unknownDeviceKindAndBadCpuIndex() {
        expect(Status.INVALID_ARGUMENT, () -> quantizeX(desc(xBuf.address(), 512, F32, 7, 0, new long[] {128},
                new long[] {1})), "unknown device kind 7");
        expect(Status.INVALID_ARGUMENT, () -> quantizeX(desc(xBuf.address(), 512, F32, CPU, 3, new long[] {128},
                new long[] {1})), "cpu device index must be 0, got 3");
    }

    @Test
    void cudaDeviceWhenUnavailable() {
        org.junit.jupiter.api.Assumptions.assumeFalse(lib.backendAvailable(CUDA), "CUDA is available here");
        expect(Status.BACKEND_UNAVAILABLE, () -> quantizeX(desc(xBuf.address(), 512, F32, CUDA, 0, new long[] {128},
                new long[] {1})), "qk_nf4_quantize", "CUDA is unavailable");
        expect(Status.BACKEND_UNAVAILABLE, () -> lib.malloc(CUDA, 0, 1024), "qk_malloc", "CUDA is unavailable");
        expect(Status.BACKEND_UNAVAILABLE, () -> lib.memcpy(xBuf.address(), CUDA, 0, xBuf.address() + 256, CPU, 0, 16,
                MemorySegment.NULL), "qk_memcpy", "CUDA is unavailable");
        expect(Status.BACKEND_UNAVAILABLE, () -> lib.memset(xBuf.address(), CUDA, 0, 0, 16, MemorySegment.NULL),
                "qk_memset", "CUDA is unavailable");
        expect(Status.BACKEND_UNAVAILABLE, () -> lib.streamCreate(CUDA, 0), "qk_stream_create");
        expect(Status.BACKEND_UNAVAILABLE, () -> lib.eventCreate(CUDA, 0), "qk_event_create");
        expect(Status.BACKEND_UNAVAILABLE, () -> lib.deviceSynchronize(CUDA, 0), "qk_device_synchronize");
        expect(Status.BACKEND_UNAVAILABLE, () -> lib.deviceName(CUDA, 0), "qk_device_name");
        expect(Status.BACKEND_UNAVAILABLE, () -> lib.deviceMemory(CUDA, 0), "qk_device_memory");
        assertEquals(0, lib.deviceCount(CUDA));
        assertFalse(lib.backendStatus(CUDA).isBlank());
    }

    @Test
    void tensorsOnDifferentDevices() {
        org.junit.jupiter.api.Assumptions.assumeTrue(lib.backendAvailable(CUDA), "needs a CUDA device");
        expect(Status.INVALID_ARGUMENT, () -> quantize(x(), BS, desc(packedBuf.address(), 64, U8, CUDA, 0,
                new long[] {64}, new long[] {1}), absmax()), "x is on cpu:0 but packed is on cuda:0");
    }

    @Test
    void mismatchedPackedAndAbsmaxSizes() {
        expect(Status.INVALID_ARGUMENT, () -> quantize(x(), BS, desc(packedBuf, U8, 63), absmax()),
                "packed has 63 elements, expected 64");
        expect(Status.INVALID_ARGUMENT, () -> quantize(x(), BS, packed(), desc(absmaxBuf, F32, 1)),
                "absmax has 1 elements, expected 2");
        MemorySegment out = arena.allocate(128 * 4, 64);
        expect(Status.INVALID_ARGUMENT, () -> nf4.nf4Dequantize(packed(), desc(absmaxBuf, F32, 1), BS,
                desc(out, F32, 128), MemorySegment.NULL), "qk_nf4_dequantize", "absmax has 1 elements, expected 2");
        expect(Status.INVALID_ARGUMENT, () -> nf4.nf4Dequantize(desc(packedBuf, U8, 32), absmax(), BS,
                desc(out, F32, 128), MemorySegment.NULL), "packed has 32 elements, expected 64");
    }

    @Test
    void overlappingInputAndOutput() {
        // packed aliases the start of x
        MemorySegment aliased = desc(xBuf.address(), 64, U8, CPU, 0, new long[] {64}, new long[] {1});
        expect(Status.INVALID_ARGUMENT, () -> quantize(x(), BS, aliased, absmax()), "x and packed overlap");
        // absmax inside packed
        MemorySegment inPacked = desc(packedBuf.address() + 8, 8, F32, CPU, 0, new long[] {2}, new long[] {1});
        expect(Status.INVALID_ARGUMENT, () -> quantize(x(), BS, packed(), inPacked), "packed and absmax overlap");
        // dequantize writing over its own codes
        MemorySegment outOverPacked = desc(packedBuf.address(), 64, DType.BF16.code(), CPU, 0, new long[] {32},
                new long[] {1});
        expect(Status.INVALID_ARGUMENT, () -> nf4.nf4Dequantize(desc(packedBuf, U8, 16), desc(absmaxBuf, F32, 1),
                32, outOverPacked, MemorySegment.NULL), "out and packed overlap");
    }

    @ParameterizedTest
    @ValueSource(longs = {0, 48, 8192, -64, 16, 4097, Long.MIN_VALUE})
    void invalidBlocksize(long blocksize) {
        expect(Status.INVALID_ARGUMENT, () -> quantize(x(), blocksize, packed(), absmax()),
                "blocksize " + blocksize + " is invalid");
        expect(Status.INVALID_ARGUMENT, () -> nf4.nf4Dequantize(packed(), absmax(), blocksize,
                desc(arena.allocate(512, 64), F32, 128), MemorySegment.NULL), "blocksize " + blocksize);
    }

    @Test
    void badNdim() {
        MemorySegment d = x();
        d.set(ValueLayout.JAVA_INT, 28, 9);  // ndim beyond QK_MAX_DIMS
        expect(Status.INVALID_ARGUMENT, () -> quantizeX(d), "x has ndim 9");
        d.set(ValueLayout.JAVA_INT, 28, -1);
        expect(Status.INVALID_ARGUMENT, () -> quantizeX(d), "x has ndim -1");
    }

    @Test
    void nonFiniteInputNamesTheElement() {
        xBuf.setAtIndex(ValueLayout.JAVA_FLOAT, 77, Float.NaN);
        xBuf.setAtIndex(ValueLayout.JAVA_FLOAT, 100, Float.POSITIVE_INFINITY);
        long[] bad = {-2};
        QkernException e = expect(Status.NON_FINITE, () -> nf4.nf4Quantize(x(), BS, packed(), absmax(), bad,
                MemorySegment.NULL), "element 77 is NaN");
        assertEquals(77, bad[0], e.getMessage());
    }

    // ---- double quantization ------------------------------------------------------------------------------

    @Test
    void doubleQuantizeBadArguments() {
        MemorySegment map = arena.allocate(256 * 4, 64);
        for (int i = 0; i < 256; i++) {
            map.setAtIndex(ValueLayout.JAVA_FLOAT, i, (i - 128) / 128f);
        }
        MemorySegment codes = arena.allocate(2, 64);
        MemorySegment nested = arena.allocate(4, 64);
        absmaxBuf.setAtIndex(ValueLayout.JAVA_FLOAT, 0, 1f);
        absmaxBuf.setAtIndex(ValueLayout.JAVA_FLOAT, 1, 2f);
        // valid call first
        float offset = nf4.nf4DoubleQuantize(absmax(), desc(map, F32, 256), desc(codes, U8, 2), desc(nested, F32, 1),
                MemorySegment.NULL);
        assertEquals(1.5f, offset);
        expect(Status.INVALID_ARGUMENT, () -> nf4.nf4DoubleQuantize(absmax(), desc(map.asSlice(0, 512), F32, 128),
                desc(codes, U8, 2), desc(nested, F32, 1), MemorySegment.NULL), "code_map has 128 elements, expected 256");
        expect(Status.INVALID_ARGUMENT, () -> nf4.nf4DoubleQuantize(absmax(), desc(map, F32, 256), desc(codes, U8, 2),
                MemorySegment.NULL, MemorySegment.NULL), "nested_absmax is NULL");
        expect(Status.INVALID_ARGUMENT, () -> nf4.nf4DoubleQuantize(absmax(), desc(map, F32, 256),
                desc(absmaxBuf, U8, 2), desc(nested, F32, 1), MemorySegment.NULL), "absmax and codes overlap");
        map.setAtIndex(ValueLayout.JAVA_FLOAT, 10, 5f);
        expect(Status.INVALID_ARGUMENT, () -> nf4.nf4DoubleQuantize(absmax(), desc(map, F32, 256), desc(codes, U8, 2),
                desc(nested, F32, 1), MemorySegment.NULL), "code_map must be ascending");
        map.setAtIndex(ValueLayout.JAVA_FLOAT, 10, (10 - 128) / 128f);
        absmaxBuf.setAtIndex(ValueLayout.JAVA_FLOAT, 1, Float.NaN);
        expect(Status.NON_FINITE, () -> nf4.nf4DoubleQuantize(absmax(), desc(map, F32, 256), desc(codes, U8, 2),
                desc(nested, F32, 1), MemorySegment.NULL), "absmax[1] is not finite");

        expect(Status.INVALID_ARGUMENT, () -> nf4.nf4DoubleDequantize(desc(codes, U8, 2), desc(nested, F32, 1),
                desc(map, F32, 256), 0f, desc(absmaxBuf, F32, 1), MemorySegment.NULL),
                "qk_nf4_double_dequantize", "absmax has 1 elements, expected 2");
        expect(Status.NON_FINITE, () -> nf4.nf4DoubleDequantize(desc(codes, U8, 2), desc(nested, F32, 1),
                desc(map, F32, 256), Float.NaN, absmax(), MemorySegment.NULL), "offset is not finite");
        expect(Status.INVALID_ARGUMENT, () -> nf4.nf4DoubleDequantize(MemorySegment.NULL, desc(nested, F32, 1),
                desc(map, F32, 256), 0f, absmax(), MemorySegment.NULL), "codes is NULL");
    }

    // ---- memory -----------------------------------------------------------------------------------------------

    @Test
    void mallocFreeMemcpyMemset() {
        expect(Status.INVALID_ARGUMENT, () -> lib.malloc(CPU, 0, -1), "qk_malloc: negative size -1");
        expect(Status.INVALID_ARGUMENT, () -> lib.malloc(CPU, 0, Long.MIN_VALUE), "negative size");
        expect(Status.OUT_OF_MEMORY, () -> lib.malloc(CPU, 0, Long.MAX_VALUE), "qk_malloc", "too large");
        expect(Status.INVALID_ARGUMENT, () -> lib.malloc(9, 0, 16), "unknown device kind 9");
        assertEquals(0, lib.malloc(CPU, 0, 0), "0 bytes gives NULL");
        assertDoesNotThrow(() -> lib.free(CPU, 0, 0), "freeing NULL is a no-op");
        assertDoesNotThrow(() -> lib.free(CUDA, 0, 0), "freeing NULL is a no-op on any device");
        long p = lib.malloc(CPU, 0, 100);
        assertNotEquals(0, p);
        assertEquals(0, p % 64);
        try {
            lib.memset(p, CPU, 0, 0x1AB, 100, MemorySegment.NULL);  // only the low byte counts
            assertEquals((byte) 0xAB, MemorySegment.ofAddress(p).reinterpret(100).get(ValueLayout.JAVA_BYTE, 99));
            expect(Status.INVALID_ARGUMENT, () -> lib.memcpy(p, CPU, 0, xBuf.address(), CPU, 0, -8, MemorySegment.NULL),
                    "qk_memcpy: negative size -8");
            expect(Status.INVALID_ARGUMENT, () -> lib.memcpy(0, CPU, 0, xBuf.address(), CPU, 0, 8, MemorySegment.NULL),
                    "qk_memcpy: dst is NULL");
            expect(Status.INVALID_ARGUMENT, () -> lib.memcpy(p, CPU, 0, 0, CPU, 0, 8, MemorySegment.NULL),
                    "qk_memcpy: src is NULL");
            expect(Status.INVALID_ARGUMENT, () -> lib.memcpy(p, 5, 0, xBuf.address(), CPU, 0, 8, MemorySegment.NULL),
                    "unknown device kind 5");
            expect(Status.INVALID_ARGUMENT, () -> lib.memset(p, CPU, 0, 0, -1, MemorySegment.NULL),
                    "qk_memset: negative size -1");
            expect(Status.INVALID_ARGUMENT, () -> lib.memset(0, CPU, 0, 0, 4, MemorySegment.NULL), "dst is NULL");
            assertDoesNotThrow(() -> lib.memcpy(0, CPU, 0, 0, CPU, 0, 0, MemorySegment.NULL), "0 bytes is a no-op");
            lib.memcpy(p, CPU, 0, xBuf.address(), CPU, 0, 100, MemorySegment.NULL);
            assertArrayEquals(xBuf.asSlice(0, 100).toArray(ValueLayout.JAVA_BYTE),
                    MemorySegment.ofAddress(p).reinterpret(100).toArray(ValueLayout.JAVA_BYTE));
        } finally {
            lib.free(CPU, 0, p);
        }
    }

    // ---- CPU settings, devices, streams, events, probe -------------------------------------------------------------

    @Test
    void cpuSetPathRejectsUnknownPaths() {
        String before = lib.cpuPath();
        try {
            expect(Status.INVALID_ARGUMENT, () -> lib.cpuSetPath("avx9000"), "qk_cpu_set_path", "\"avx9000\"");
            expect(Status.INVALID_ARGUMENT, () -> lib.cpuSetPath(""), "unknown path \"\"");
            expect(Status.INVALID_ARGUMENT, () -> lib.cpuSetPath("AVX2 "), "unknown path");
            String longName = "x".repeat(10_000);
            QkernException e = expect(Status.INVALID_ARGUMENT, () -> lib.cpuSetPath(longName), "unknown path");
            assertTrue(e.getMessage().length() < 1000, "the echoed name is truncated");
            assertEquals(before, lib.cpuPath(), "a failed call leaves the path as it was");
            if (!lib.cpuFeatures().contains("avx512")) {
                expect(Status.UNSUPPORTED, () -> lib.cpuSetPath("avx512"), "cannot run the avx512 path");
                assertEquals(before, lib.cpuPath());
            }
        } finally {
            lib.cpuSetPath("auto");
        }
    }

    /** qk_cpu_set_path(NULL) itself: NativeLib cannot pass NULL, so call the symbol directly. */
    @Test
    void cpuSetPathNullPointer() throws Throwable {
        MethodHandle h = Linker.nativeLinker().downcallHandle(
                SymbolLookup.loaderLookup().find("qk_cpu_set_path").orElseThrow(),
                FunctionDescriptor.of(ValueLayout.JAVA_INT, ValueLayout.ADDRESS));
        int status = (int) h.invokeExact(MemorySegment.NULL);
        assertEquals(Status.INVALID_ARGUMENT.code(), status);
        assertTrue(lib.lastError().contains("path is NULL"), lib.lastError());
    }

    @Test
    void cpuThreadsOutOfRange() {
        int before = lib.cpuThreads();
        expect(Status.INVALID_ARGUMENT, () -> lib.cpuSetThreads(-1), "threads must be 0..1024, got -1");
        expect(Status.INVALID_ARGUMENT, () -> lib.cpuSetThreads(1_000_000), "got 1000000");
        assertEquals(before, lib.cpuThreads());
        assertThrows(IllegalArgumentException.class, () -> Qkern.setCpuThreads(-1), "Java checks first");
    }

    @Test
    void devicesStreamsAndEvents() {
        expect(Status.INVALID_ARGUMENT, () -> lib.deviceName(CPU, 1), "cpu device index must be 0, got 1");
        expect(Status.INVALID_ARGUMENT, () -> lib.deviceName(42, 0), "unknown device kind 42");
        expect(Status.UNSUPPORTED, () -> lib.deviceMemory(CPU, 0), "not reported for the cpu");
        expect(Status.INVALID_ARGUMENT, () -> lib.deviceSynchronize(CPU, -5), "got -5");
        expect(Status.INVALID_ARGUMENT, () -> lib.streamCreate(3, 0), "unknown device kind 3");
        expect(Status.INVALID_ARGUMENT, () -> lib.eventRecord(MemorySegment.NULL, MemorySegment.NULL),
                "event is NULL");
        expect(Status.INVALID_ARGUMENT, () -> lib.eventSynchronize(MemorySegment.NULL), "event is NULL");
        expect(Status.INVALID_ARGUMENT, () -> lib.eventElapsedMs(MemorySegment.NULL, MemorySegment.NULL),
                "NULL argument");
        assertDoesNotThrow(() -> lib.streamDestroy(MemorySegment.NULL));
        assertDoesNotThrow(() -> lib.eventDestroy(MemorySegment.NULL));
        assertDoesNotThrow(() -> lib.streamSynchronize(MemorySegment.NULL));
        assertFalse(lib.backendAvailable(7));
        assertEquals(0, lib.deviceCount(7));
        assertEquals("unknown device kind", lib.backendStatus(7));

        // a CPU event recorded on a stream of another device kind is refused; never-recorded events too
        MemorySegment s = lib.streamCreate(CPU, 0);
        MemorySegment a = lib.eventCreate(CPU, 0);
        MemorySegment b = lib.eventCreate(CPU, 0);
        try {
            expect(Status.INVALID_ARGUMENT, () -> lib.eventElapsedMs(a, b), "never recorded");
            lib.eventRecord(a, s);
            lib.eventRecord(b, MemorySegment.NULL);
            assertTrue(lib.eventElapsedMs(a, b) >= 0f);
        } finally {
            lib.eventDestroy(a);
            lib.eventDestroy(b);
            lib.streamDestroy(s);
        }
    }

    @Test
    void probeBadArguments() {
        String[] pattern = new String[1];
        expect(Status.INVALID_ARGUMENT, () -> lib.probeReadBandwidth(MemorySegment.NULL, 1, pattern),
                "qk_probe_read_bandwidth", "buf is NULL");
        expect(Status.INVALID_ARGUMENT, () -> lib.probeReadBandwidth(x(), 1, pattern), "buffer too small to probe");
        expect(Status.INVALID_ARGUMENT, () -> lib.probeReadBandwidth(x(), 0, pattern), "repetitions must be 1..1000, got 0");
        expect(Status.INVALID_ARGUMENT, () -> lib.probeReadBandwidth(x(), 1_000_000, pattern), "got 1000000");
        expect(Status.INVALID_ARGUMENT, () -> lib.probeReadBandwidth(desc(xBuf.address(), 4, F32, CPU, 0,
                new long[] {128}, new long[] {1}), 1, pattern), "needs 512 bytes but its buffer holds 4");
    }

    @Test
    void fmaPeakProbe() {
        expect(Status.INVALID_ARGUMENT, () -> lib.probeFmaPeak(0), "qk_probe_fma_peak", "repetitions must be 1..1000, got 0");
        expect(Status.INVALID_ARGUMENT, () -> lib.probeFmaPeak(1001), "got 1001");
        // a real measurement: at least one scalar multiply-add per ns on one thread, and no more
        // than 16-lane FMAs on 4 pipes at 6 GHz on every thread
        double g = Qkern.probeFmaPeak(2);
        assertTrue(g > 1 && g < Qkern.cpuThreads() * 6.0 * 4 * 32, "FMA peak " + g + " GFLOP/s");
    }

    // ---- freed buffers, in Java terms: closed tensors never reach native code ---------------------------------------

    @Test
    void closedTensorsAreRefusedBeforeAnyNativeCall() {
        Tensor x = Tensor.ofFloats(new float[128], 128);
        x.close();
        IllegalStateException q = assertThrows(IllegalStateException.class, () -> Nf4.quantize(x));
        assertTrue(q.getMessage().contains("closed"), q.getMessage());
        assertThrows(IllegalStateException.class, x::acquire);
        assertThrows(IllegalStateException.class, () -> x.descriptor(arena));

        try (Tensor live = Tensor.ofFloats(new float[128], 128); Nf4Tensor nf4 = Nf4.quantize(live)) {
            Tensor out = Tensor.allocate(DType.F32, Device.CPU, 128);
            out.close();
            IllegalStateException d = assertThrows(IllegalStateException.class, () -> Nf4.dequantizeInto(nf4, out));
            assertTrue(d.getMessage().contains("closed"), d.getMessage());
            assertThrows(IllegalStateException.class, () -> Qkern.probeReadBandwidth(out, 1));
        }
        // an NF4 tensor closed before use
        Tensor live = Tensor.ofFloats(new float[128], 128);
        Nf4Tensor closedNf4 = Nf4.quantize(live);
        live.close();
        closedNf4.close();
        closedNf4.close();  // idempotent
        assertThrows(IllegalStateException.class, closedNf4::dequantize);
        // wrapped memory freed by its owner
        Arena owner = Arena.ofShared();
        Tensor wrapped = Tensor.wrap(owner.allocate(512, 64), DType.F32, 128);
        owner.close();
        IllegalStateException w = assertThrows(IllegalStateException.class, () -> Nf4.quantize(wrapped));
        assertTrue(w.getMessage().contains("arena is closed"), w.getMessage());
    }

    @Test
    void lastErrorIsPerCallAndTheLibraryStillWorksAfterManyFailures() {
        Consumer<Integer> fail = i -> assertThrows(QkernException.class, () -> lib.malloc(CPU, 0, -i - 1));
        for (int i = 0; i < 1000; i++) {
            fail.accept(i);
        }
        assertTrue(lib.lastError().contains("negative size -1000"), lib.lastError());
        validCallSucceeds();
    }
}
