package io.qkern.internal;

import static java.lang.foreign.ValueLayout.ADDRESS;
import static java.lang.foreign.ValueLayout.JAVA_FLOAT;
import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;

import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.MemorySegment;
import java.lang.invoke.MethodHandle;

/** The NF4 functions of the C ABI, checked like every {@link NativeLib} call. */
public final class Nf4Native {
    private static volatile Nf4Native instance;

    /** The bindings, or a QkernException saying why the library is unavailable. */
    public static Nf4Native get() {
        Nf4Native n = instance;
        if (n == null) {
            synchronized (Nf4Native.class) {
                if (instance == null) {
                    instance = new Nf4Native(NativeLib.get());
                }
                n = instance;
            }
        }
        return n;
    }

    private final NativeLib lib;
    private final MethodHandle nf4Quantize, nf4Dequantize, nf4DoubleQuantize, nf4DoubleDequantize, nf4Matmul,
            nf4MatmulInputGrad, nf4MatmulPath, matmulF32;

    private Nf4Native(NativeLib lib) {
        this.lib = lib;
        nf4Quantize = lib.bind("qk_nf4_quantize", FunctionDescriptor.of(JAVA_INT, ADDRESS, JAVA_LONG, ADDRESS, ADDRESS,
                ADDRESS, ADDRESS));
        nf4Dequantize = lib.bind("qk_nf4_dequantize", FunctionDescriptor.of(JAVA_INT, ADDRESS, ADDRESS, JAVA_LONG,
                ADDRESS, ADDRESS));
        nf4DoubleQuantize = lib.bind("qk_nf4_double_quantize", FunctionDescriptor.of(JAVA_INT, ADDRESS, ADDRESS,
                ADDRESS, ADDRESS, ADDRESS, ADDRESS));
        nf4DoubleDequantize = lib.bind("qk_nf4_double_dequantize", FunctionDescriptor.of(JAVA_INT, ADDRESS, ADDRESS,
                ADDRESS, JAVA_FLOAT, ADDRESS, ADDRESS));
        nf4Matmul = lib.bind("qk_nf4_matmul", FunctionDescriptor.of(JAVA_INT, ADDRESS, ADDRESS, ADDRESS, JAVA_LONG,
                ADDRESS, ADDRESS, ADDRESS));
        nf4MatmulInputGrad = lib.bind("qk_nf4_matmul_input_grad", FunctionDescriptor.of(JAVA_INT, ADDRESS, ADDRESS,
                ADDRESS, JAVA_LONG, ADDRESS, ADDRESS));
        matmulF32 = lib.bind("qk_matmul_f32", FunctionDescriptor.of(JAVA_INT, ADDRESS, ADDRESS, ADDRESS, ADDRESS));
        nf4MatmulPath = lib.bind("qk_nf4_matmul_path", FunctionDescriptor.of(ADDRESS, JAVA_LONG, JAVA_INT, JAVA_INT));
    }

    // ---- NF4 ------------------------------------------------------------------------------------

    /**
     * Returns -1 on success; on NaN/Inf input throws a QkernException whose message names the
     * element; {@code badIndexOut[0]} receives that index so callers can add context.
     */
    public void nf4Quantize(MemorySegment x, long blocksize, MemorySegment packed, MemorySegment absmax,
            long[] badIndexOut, MemorySegment stream) {
        int st;
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment bad = arena.allocate(JAVA_LONG);
            st = (int) nf4Quantize.invokeExact(x, blocksize, packed, absmax, bad, stream);
            badIndexOut[0] = bad.get(JAVA_LONG, 0);
        } catch (Throwable t) {
            throw NativeLib.bug("qk_nf4_quantize", t);
        }
        lib.check("qk_nf4_quantize", st);
    }

    public void nf4Dequantize(MemorySegment packed, MemorySegment absmax, long blocksize, MemorySegment out,
            MemorySegment stream) {
        int st;
        try {
            st = (int) nf4Dequantize.invokeExact(packed, absmax, blocksize, out, stream);
        } catch (Throwable t) {
            throw NativeLib.bug("qk_nf4_dequantize", t);
        }
        lib.check("qk_nf4_dequantize", st);
    }

    public float nf4DoubleQuantize(MemorySegment absmax, MemorySegment codeMap, MemorySegment codes,
            MemorySegment nestedAbsmax, MemorySegment stream) {
        int st;
        float offset;
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment out = arena.allocate(JAVA_FLOAT);
            st = (int) nf4DoubleQuantize.invokeExact(absmax, codeMap, codes, nestedAbsmax, out, stream);
            offset = out.get(JAVA_FLOAT, 0);
        } catch (Throwable t) {
            throw NativeLib.bug("qk_nf4_double_quantize", t);
        }
        lib.check("qk_nf4_double_quantize", st);
        return offset;
    }

    public void nf4DoubleDequantize(MemorySegment codes, MemorySegment nestedAbsmax, MemorySegment codeMap,
            float offset, MemorySegment absmax, MemorySegment stream) {
        int st;
        try {
            st = (int) nf4DoubleDequantize.invokeExact(codes, nestedAbsmax, codeMap, offset, absmax, stream);
        } catch (Throwable t) {
            throw NativeLib.bug("qk_nf4_double_dequantize", t);
        }
        lib.check("qk_nf4_double_dequantize", st);
    }

    /** {@code bias} may be {@link MemorySegment#NULL}. */
    public void nf4Matmul(MemorySegment x, MemorySegment packed, MemorySegment absmax, long blocksize,
            MemorySegment bias, MemorySegment y, MemorySegment stream) {
        int st;
        try {
            st = (int) nf4Matmul.invokeExact(x, packed, absmax, blocksize, bias, y, stream);
        } catch (Throwable t) {
            throw NativeLib.bug("qk_nf4_matmul", t);
        }
        lib.check("qk_nf4_matmul", st);
    }

    public void nf4MatmulInputGrad(MemorySegment dy, MemorySegment packed, MemorySegment absmax, long blocksize,
            MemorySegment dx, MemorySegment stream) {
        int st;
        try {
            st = (int) nf4MatmulInputGrad.invokeExact(dy, packed, absmax, blocksize, dx, stream);
        } catch (Throwable t) {
            throw NativeLib.bug("qk_nf4_matmul_input_grad", t);
        }
        lib.check("qk_nf4_matmul_input_grad", st);
    }

    public String nf4MatmulPath(long m, int deviceKind, boolean inputGrad) {
        try {
            MemorySegment p = (MemorySegment) nf4MatmulPath.invokeExact(m, deviceKind, inputGrad ? 1 : 0);
            return p.reinterpret(256).getString(0);
        } catch (Throwable t) {
            throw NativeLib.bug("qk_nf4_matmul_path", t);
        }
    }

    /** The dense float32 baseline (qk_matmul_f32). */
    public void matmulF32(MemorySegment x, MemorySegment w, MemorySegment y, MemorySegment stream) {
        int st;
        try {
            st = (int) matmulF32.invokeExact(x, w, y, stream);
        } catch (Throwable t) {
            throw NativeLib.bug("qk_matmul_f32", t);
        }
        lib.check("qk_matmul_f32", st);
    }
}
