package io.qkern.apmm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.QkernException;
import io.qkern.Tensor;
import io.qkern.internal.ApmmNative;
import io.qkern.internal.TensorStruct;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.function.Executable;

/**
 * The APMM ABI entry points fed hand-built bad descriptors from Java: NULL tensors, negative and
 * overflowing shapes, short buffers, CUDA-tagged host memory, out-of-range enums. Each call must
 * throw a QkernException naming the problem; the JVM keeps running.
 */
class ApmmNativeBadArgumentsTest {
    private final ApmmNative lib = ApmmNative.get();

    private static MemorySegment desc(Arena arena, MemorySegment data, DType dtype, int kind, long... shape) {
        return TensorStruct.write(arena, data.address(), data.byteSize(), dtype.code(), kind, 0, shape,
                TensorStruct.contiguousStrides(shape));
    }

    private static void fails(QkernException.Status status, String text, Executable call) {
        QkernException e = assertThrows(QkernException.class, call);
        assertEquals(status, e.status(), e.getMessage());
        assertTrue(e.getMessage().contains(text), e.getMessage());
    }

    @Test
    void everyEntryPointRejectsBadDescriptors() {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment codes = arena.allocate(4 * 70 * 4, 64), planes = arena.allocate(4 * 3 * 32, 64),
                    sums = arena.allocate(4 * 4, 64), x = arena.allocate(4 * 70 * 4, 64),
                    scales = arena.allocate(4 * 4, 64), out = arena.allocate(4 * 4 * 4, 64);
            MemorySegment tc = desc(arena, codes, DType.I32, 0, 4, 70), tp = desc(arena, planes, DType.U8, 0, 4, 3, 32),
                    ts = desc(arena, sums, DType.I32, 0, 4, 1), tx = desc(arena, x, DType.F32, 0, 4, 70),
                    tsc = desc(arena, scales, DType.F32, 0, 4, 1), to = desc(arena, out, DType.I32, 0, 4, 4);
            long[] bad = {0};
            MemorySegment nul = MemorySegment.NULL;
            fails(QkernException.Status.INVALID_ARGUMENT, "codes is NULL",
                    () -> lib.pack(nul, 1, 3, 0, tp, ts, bad, nul));
            fails(QkernException.Status.INVALID_ARGUMENT, "planes is NULL",
                    () -> lib.pack(tc, 1, 3, 0, nul, ts, bad, nul));
            fails(QkernException.Status.INVALID_ARGUMENT, "sums has shape [4, 1], expected [4, 2]",
                    () -> lib.pack(tc, 1, 3, 64, tp, ts, bad, nul));
            MemorySegment negative = desc(arena, codes, DType.I32, 0, 4, -70);
            fails(QkernException.Status.INVALID_ARGUMENT, "codes", () -> lib.pack(negative, 1, 3, 0, tp, ts, bad, nul));
            MemorySegment huge = TensorStruct.write(arena, codes.address(), codes.byteSize(), DType.I32.code(), 0, 0,
                    new long[] {Long.MAX_VALUE / 2, 4}, new long[] {4, 1});
            fails(QkernException.Status.INVALID_ARGUMENT, "codes", () -> lib.pack(huge, 1, 3, 0, tp, ts, bad, nul));
            MemorySegment shortPlanes = TensorStruct.write(arena, planes.address(), 100, DType.U8.code(), 0, 0,
                    new long[] {4, 3, 32}, TensorStruct.contiguousStrides(new long[] {4, 3, 32}));
            fails(QkernException.Status.INVALID_ARGUMENT, "planes", () -> lib.pack(tc, 1, 3, 0, shortPlanes, ts, bad,
                    nul));
            MemorySegment gpuCodes = desc(arena, codes, DType.I32, Device.Kind.CUDA.code(), 4, 70);
            QkernException gpu = assertThrows(QkernException.class,
                    () -> lib.pack(gpuCodes, 1, 3, 0, tp, ts, bad, nul));
            assertTrue(gpu.status() == QkernException.Status.INVALID_ARGUMENT
                    || gpu.status() == QkernException.Status.BACKEND_UNAVAILABLE, gpu.getMessage());
            fails(QkernException.Status.INVALID_ARGUMENT, "codes", () -> lib.unpack(tp, 1, 3, nul, nul));
            fails(QkernException.Status.INVALID_ARGUMENT, "bits 12 is outside 1..8",
                    () -> lib.unpack(tp, 1, 12, tc, nul));
            fails(QkernException.Status.INVALID_ARGUMENT, "x is NULL",
                    () -> lib.quantize(nul, 1, 3, 0, 0, tp, ts, tsc, nul, bad, nul));
            fails(QkernException.Status.INVALID_ARGUMENT, "scales is NULL",
                    () -> lib.quantize(tx, 1, 3, 0, 0, tp, ts, nul, nul, bad, nul));
            fails(QkernException.Status.INVALID_ARGUMENT, "format 3 is invalid",
                    () -> lib.quantize(tx, 3, 3, 0, 0, tp, ts, tsc, nul, bad, nul));
            fails(QkernException.Status.INVALID_ARGUMENT, "a_planes is NULL",
                    () -> lib.matmul(nul, ts, nul, nul, 1, 3, tp, ts, nul, nul, 1, 3, 70, 0, to, 0, nul));
            fails(QkernException.Status.INVALID_ARGUMENT, "out is NULL",
                    () -> lib.matmul(tp, ts, nul, nul, 1, 3, tp, ts, nul, nul, 1, 3, 70, 0, nul, 0, nul));
            fails(QkernException.Status.INVALID_ARGUMENT, "k -1 is negative",
                    () -> lib.matmul(tp, ts, nul, nul, 1, 3, tp, ts, nul, nul, 1, 3, -1, 0, to, 0, nul));
            fails(QkernException.Status.INVALID_ARGUMENT, "request 7 is invalid",
                    () -> lib.matmul(tp, ts, nul, nul, 1, 3, tp, ts, nul, nul, 1, 3, 70, 0, to, 7, nul));
            MemorySegment f32out = desc(arena, out, DType.F32, 0, 4, 4);
            fails(QkernException.Status.INVALID_ARGUMENT, "a_scales is NULL (required for a float output)",
                    () -> lib.matmul(tp, ts, nul, nul, 1, 3, tp, ts, tsc, nul, 1, 3, 70, 0, f32out, 0, nul));
            fails(QkernException.Status.INVALID_ARGUMENT, "a_zero_points given for the signed format",
                    () -> lib.matmul(tp, ts, tsc, ts, 1, 3, tp, ts, tsc, nul, 1, 3, 70, 0, f32out, 0, nul));
            fails(QkernException.Status.INVALID_ARGUMENT, "out", // out aliases the planes
                    () -> lib.matmul(tp, ts, nul, nul, 1, 3, tp, ts, nul, nul, 1, 3, 70, 0,
                            desc(arena, planes.asSlice(0, 64), DType.I32, 0, 4, 4), 0, nul));
            fails(QkernException.Status.INVALID_ARGUMENT, "a_bits 0 is outside 1..8",
                    () -> lib.choosePath(0, 3, 1, 0, 0));
            fails(QkernException.Status.INVALID_ARGUMENT, "device_kind 9 is invalid",
                    () -> lib.choosePath(2, 3, 1, 9, 0));
            assertEquals("unknown", lib.pathName(99));
        }
    }

    @Test
    void closedOperandsFailCleanly() {
        Tensor codes = Tensor.allocate(DType.I8, Device.CPU, 2, 10);
        codes.fillBytes(1);
        ApmmMatrix m = Apmm.pack(codes, ApmmFormat.SIGNED, 2, 0);
        codes.close();
        assertThrows(IllegalStateException.class, () -> Apmm.pack(codes, ApmmFormat.SIGNED, 2, 0));
        m.close();
        m.close();  // idempotent
        assertThrows(IllegalStateException.class, () -> Apmm.matmul(m, m, DType.I32, ApmmPath.AUTO));
    }
}
