package io.qkern.topk;

import io.qkern.DType;
import io.qkern.QkernException;
import io.qkern.Tensor;
import io.qkern.internal.TopkNative;
import io.qkern.nf4.NonFiniteException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;

/**
 * Top-k selection over an F32 tensor (flattened), on the tensor's device.
 *
 * <p>{@link #select} is exact: a radix select over the float bits (CPU: AVX-512 / AVX2 / scalar
 * chosen at run time, all worker threads; CUDA: no host synchronisation inside the selection).
 * Exactly k results; equal keys go to the lower index; -0.0 equals +0.0; the same result on every
 * path and thread count. {@link #selectApproximate} is DGC's sampled-threshold selection: it may
 * return fewer than k pairs (then the rest are empty slots).
 */
public final class TopK {
    private TopK() {}

    /** What "top" means. */
    public enum Order {
        /** The k largest |x| (gradient sparsification). */
        MAGNITUDE(0),
        /** The k largest x. */
        LARGEST(1),
        /** The k smallest x. */
        SMALLEST(2);

        final int code;

        Order(int code) {
            this.code = code;
        }
    }

    /** The selected elements: I64 flat indices and their F32 values, both [k]. Owns both tensors. */
    public record Result(Tensor indices, Tensor values) implements AutoCloseable {
        public long k() {
            return indices.numel();
        }

        @Override
        public void close() {
            indices.close();
            values.close();
        }
    }

    /** A sampled selection: {@code selected} real pairs first, then empty slots (index -1, value 0). */
    public record Approximate(Tensor indices, Tensor values, long selected) implements AutoCloseable {
        @Override
        public void close() {
            indices.close();
            values.close();
        }
    }

    /** The DGC convention for a ratio: k = ceil(n * ratio), at least 1 when n > 0, at most n. */
    public static long kFor(long n, double ratio) {
        if (!(ratio > 0 && ratio <= 1)) {
            throw new IllegalArgumentException("ratio " + ratio + " is outside (0, 1]");
        }
        if (n == 0) {
            return 0;
        }
        return Math.min(n, Math.max(1, (long) Math.ceil(n * ratio)));
    }

    /** The k largest |x|, in ascending index order. */
    public static Result select(Tensor x, long k) {
        return select("x", x, k, Order.MAGNITUDE, false);
    }

    /**
     * The exact top k of {@code x} by {@code order}: in ascending index order, or with
     * {@code sortedByKey} by descending key (ties: lower index first). NaN in {@code x} throws a
     * {@link NonFiniteException} naming {@code name} and the element.
     */
    public static Result select(String name, Tensor x, long k, Order order, boolean sortedByKey) {
        checkInput(name, x, k);
        Tensor indices = Tensor.allocate(DType.I64, x.device(), k);
        Tensor values = null;
        try {
            values = Tensor.allocate(DType.F32, x.device(), k);
            long[] bad = {-1};
            try (Arena arena = Arena.ofConfined(); Tensor.Lease a = x.acquire(); Tensor.Lease b = indices.acquire();
                    Tensor.Lease c = values.acquire()) {
                TopkNative.get().topk(x.descriptor(arena), k, order.code, sortedByKey ? 1 : 0,
                        indices.descriptor(arena), values.descriptor(arena), bad, MemorySegment.NULL);
            } catch (QkernException e) {
                throw nonFinite(name, x, bad[0], e);
            }
            return new Result(indices, values);
        } catch (RuntimeException e) {
            indices.close();
            if (values != null) {
                values.close();
            }
            throw e;
        }
    }

    /**
     * DGC's sampled-threshold selection by |x| (APPROXIMATE): samples {@code sampleRatio} of the
     * elements (at least 2n/k; random start from {@code seed}, odd stride), thresholds at the
     * sample's top-k, lowers the threshold by 0.8 up to 10 times while fewer than 0.8k survive;
     * with k or more survivors the result is the exact top-k among them (= the exact top-k).
     * See {@code qk_topk_sampled} in qkern.h.
     */
    public static Approximate selectApproximate(String name, Tensor x, long k, double sampleRatio, long seed) {
        checkInput(name, x, k);
        if (!(sampleRatio > 0 && sampleRatio <= 1)) {
            throw new IllegalArgumentException("sampleRatio " + sampleRatio + " is outside (0, 1]");
        }
        Tensor indices = Tensor.allocate(DType.I64, x.device(), k);
        Tensor values = null;
        try {
            values = Tensor.allocate(DType.F32, x.device(), k);
            long[] bad = {-1};
            long selected;
            try (Arena arena = Arena.ofConfined(); Tensor.Lease a = x.acquire(); Tensor.Lease b = indices.acquire();
                    Tensor.Lease c = values.acquire()) {
                selected = TopkNative.get().topkSampled(x.descriptor(arena), k, sampleRatio, seed,
                        indices.descriptor(arena), values.descriptor(arena), bad, MemorySegment.NULL);
            } catch (QkernException e) {
                throw nonFinite(name, x, bad[0], e);
            }
            return new Approximate(indices, values, selected);
        } catch (RuntimeException e) {
            indices.close();
            if (values != null) {
                values.close();
            }
            throw e;
        }
    }

    /** Benchmark baselines written with the C++ standard library (single-threaded, CPU only). */
    public enum Baseline {
        /** |x| copy + std::nth_element + one scan. */
        NTH_ELEMENT(0),
        /** std::sort of every (|x|, index) pair. */
        FULL_SORT(1);

        final int code;

        Baseline(int code) {
            this.code = code;
        }
    }

    /** The same result as {@code select(x, k)}, computed by a {@link Baseline} (for benchmarks and tests). */
    public static Result baseline(Tensor x, long k, Baseline method) {
        checkInput("x", x, k);
        Tensor indices = Tensor.allocate(DType.I64, x.device(), k);
        Tensor values = Tensor.allocate(DType.F32, x.device(), k);
        try (Arena arena = Arena.ofConfined(); Tensor.Lease a = x.acquire(); Tensor.Lease b = indices.acquire();
                Tensor.Lease c = values.acquire()) {
            TopkNative.get().topkBaseline(x.descriptor(arena), k, method.code, indices.descriptor(arena),
                    values.descriptor(arena));
            return new Result(indices, values);
        } catch (RuntimeException e) {
            indices.close();
            values.close();
            throw e;
        }
    }

    static void checkInput(String name, Tensor x, long k) {
        if (x.dtype() != DType.F32) {
            throw new IllegalArgumentException("top-k selects from F32 tensors; \"" + name + "\" is " + x.dtype());
        }
        if (k < 0 || k > x.numel()) {
            throw new IllegalArgumentException("k = " + k + " is outside 0.." + x.numel() + " (the elements of \""
                    + name + "\")");
        }
    }

    static RuntimeException nonFinite(String name, Tensor x, long index, QkernException e) {
        if (e.status() == QkernException.Status.NON_FINITE && index >= 0) {
            return new NonFiniteException(name, x.shape(), index, e);
        }
        return e;
    }
}
