package io.qkern.internal;

import static java.lang.foreign.ValueLayout.ADDRESS;
import static java.lang.foreign.ValueLayout.JAVA_DOUBLE;
import static java.lang.foreign.ValueLayout.JAVA_FLOAT;
import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;

import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.MemorySegment;
import java.lang.invoke.MethodHandle;

/** The top-k / DGC functions of the C ABI, checked like every {@link NativeLib} call. */
public final class TopkNative {
    private static volatile TopkNative instance;

    /** The bindings, or a QkernException saying why the library is unavailable. */
    public static TopkNative get() {
        TopkNative n = instance;
        if (n == null) {
            synchronized (TopkNative.class) {
                if (instance == null) {
                    instance = new TopkNative(NativeLib.get());
                }
                n = instance;
            }
        }
        return n;
    }

    private final NativeLib lib;
    private final MethodHandle topk, topkSampled, dgcStep, dgcDecompress, topkBaseline, momentumBaseline;

    private TopkNative(NativeLib lib) {
        this.lib = lib;
        topk = lib.bind("qk_topk", FunctionDescriptor.of(JAVA_INT, ADDRESS, JAVA_LONG, JAVA_INT, JAVA_INT, ADDRESS,
                ADDRESS, ADDRESS, ADDRESS));
        topkSampled = lib.bind("qk_topk_sampled", FunctionDescriptor.of(JAVA_INT, ADDRESS, JAVA_LONG, JAVA_DOUBLE,
                JAVA_LONG, ADDRESS, ADDRESS, ADDRESS, ADDRESS, ADDRESS));
        dgcStep = lib.bind("qk_dgc_step", FunctionDescriptor.of(JAVA_INT, ADDRESS, ADDRESS, ADDRESS, JAVA_LONG, JAVA_INT,
                JAVA_FLOAT, JAVA_FLOAT, JAVA_INT, JAVA_DOUBLE, JAVA_LONG, ADDRESS, ADDRESS, ADDRESS, ADDRESS, ADDRESS));
        dgcDecompress = lib.bind("qk_dgc_decompress", FunctionDescriptor.of(JAVA_INT, ADDRESS, ADDRESS, JAVA_LONG,
                ADDRESS, ADDRESS));
        topkBaseline = lib.bind("qk_topk_baseline", FunctionDescriptor.of(JAVA_INT, ADDRESS, JAVA_LONG, JAVA_INT,
                ADDRESS, ADDRESS));
        momentumBaseline = lib.bind("qk_dgc_momentum_baseline", FunctionDescriptor.of(JAVA_INT, ADDRESS, ADDRESS,
                ADDRESS, JAVA_FLOAT));
    }

    /** Benchmark baseline: the momentum pass alone. */
    public void dgcMomentumBaseline(MemorySegment grad, MemorySegment u, MemorySegment v, float momentum) {
        int st;
        try {
            st = (int) momentumBaseline.invokeExact(grad, u, v, momentum);
        } catch (Throwable t) {
            throw NativeLib.bug("qk_dgc_momentum_baseline", t);
        }
        lib.check("qk_dgc_momentum_baseline", st);
    }

    /** {@code badIndexOut[0]} receives the NaN index (or -1) before a failure is thrown. */
    public void topk(MemorySegment x, long k, int order, int flags, MemorySegment indices, MemorySegment values,
            long[] badIndexOut, MemorySegment stream) {
        int st;
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment bad = arena.allocate(JAVA_LONG);
            st = (int) topk.invokeExact(x, k, order, flags, indices, values, bad, stream);
            badIndexOut[0] = bad.get(JAVA_LONG, 0);
        } catch (Throwable t) {
            throw NativeLib.bug("qk_topk", t);
        }
        lib.check("qk_topk", st);
    }

    /** Returns the number of real pairs; {@code badIndexOut[0]} as for {@link #topk}. */
    public long topkSampled(MemorySegment x, long k, double sampleRatio, long seed, MemorySegment indices,
            MemorySegment values, long[] badIndexOut, MemorySegment stream) {
        int st;
        long selected;
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment sel = arena.allocate(JAVA_LONG);
            MemorySegment bad = arena.allocate(JAVA_LONG);
            st = (int) topkSampled.invokeExact(x, k, sampleRatio, seed, indices, values, sel, bad, stream);
            selected = sel.get(JAVA_LONG, 0);
            badIndexOut[0] = bad.get(JAVA_LONG, 0);
        } catch (Throwable t) {
            throw NativeLib.bug("qk_topk_sampled", t);
        }
        lib.check("qk_topk_sampled", st);
        return selected;
    }

    /** Returns the number of real pairs; {@code badIndexOut[0]} receives the non-finite index (or -1). */
    public long dgcStep(MemorySegment grad, MemorySegment u, MemorySegment v, long k, int feedback, float momentum,
            float clipNorm, int flags, double sampleRatio, long seed, MemorySegment indices, MemorySegment values,
            long[] badIndexOut, MemorySegment stream) {
        int st;
        long selected;
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment sel = arena.allocate(JAVA_LONG);
            MemorySegment bad = arena.allocate(JAVA_LONG);
            st = (int) dgcStep.invokeExact(grad, u, v, k, feedback, momentum, clipNorm, flags, sampleRatio, seed,
                    indices, values, sel, bad, stream);
            selected = sel.get(JAVA_LONG, 0);
            badIndexOut[0] = bad.get(JAVA_LONG, 0);
        } catch (Throwable t) {
            throw NativeLib.bug("qk_dgc_step", t);
        }
        lib.check("qk_dgc_step", st);
        return selected;
    }

    public void dgcDecompress(MemorySegment indices, MemorySegment values, long worldSize, MemorySegment out,
            MemorySegment stream) {
        int st;
        try {
            st = (int) dgcDecompress.invokeExact(indices, values, worldSize, out, stream);
        } catch (Throwable t) {
            throw NativeLib.bug("qk_dgc_decompress", t);
        }
        lib.check("qk_dgc_decompress", st);
    }

    /** Benchmark baselines: 0 = std::nth_element, 1 = full std::sort. */
    public void topkBaseline(MemorySegment x, long k, int method, MemorySegment indices, MemorySegment values) {
        int st;
        try {
            st = (int) topkBaseline.invokeExact(x, k, method, indices, values);
        } catch (Throwable t) {
            throw NativeLib.bug("qk_topk_baseline", t);
        }
        lib.check("qk_topk_baseline", st);
    }
}
