package io.qkern.topk;

import io.qkern.DType;
import io.qkern.QkernException;
import io.qkern.Tensor;
import io.qkern.internal.TopkNative;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.Arrays;
import java.util.Objects;

/**
 * Deep Gradient Compression for one tensor: the fused step (momentum correction, accumulation,
 * optional local clipping, top-k selection, packing, momentum factor masking, residual update)
 * and the decompression of the pairs every rank sent. {@link GradientCompressor} applies these
 * to a whole model's gradients.
 */
public final class Dgc {
    private Dgc() {}

    /** What happens to the part of a gradient that is not sent. */
    public enum Feedback {
        /** Dropped (plain top-k sparsification). */
        NONE(0),
        /** Kept in a residual v and added to the next gradient (error feedback). */
        RESIDUAL(1),
        /** DGC momentum correction: u = m*u + g (Nesterov: u = (u+g)*m), v accumulates u. */
        MOMENTUM(2);

        final int code;

        Feedback(int code) {
            this.code = code;
        }
    }

    /**
     * Step settings. {@code clipNorm} > 0 clips the gradient to that L2 norm before accumulation
     * (0 = off); {@code sampled} selects with DGC's sampled threshold (approximate, see
     * {@link TopK#selectApproximate}) instead of the exact top-k; {@code checkFinite} scans the
     * gradient for NaN/Inf first so a bad gradient leaves u and v untouched (off: one read pass
     * less; a bad gradient is still reported, but after u and v were updated).
     * {@code valueType}: F32, or F16 (saturating at +-65504; the rounding error stays in v).
     */
    public record Options(Feedback feedback, float momentum, boolean nesterov, float clipNorm, boolean sampled,
            double sampleRatio, long seed, boolean checkFinite, DType valueType) {
        public static final Options DEFAULT = new Options(Feedback.MOMENTUM, 0.9f, false, 0f, false, 0.01, 0, true,
                DType.F32);

        public Options {
            Objects.requireNonNull(feedback, "feedback");
            Objects.requireNonNull(valueType, "valueType");
            if (!Float.isFinite(momentum)) {
                throw new IllegalArgumentException("momentum " + momentum + " is not finite");
            }
            if (!(clipNorm >= 0) || !Float.isFinite(clipNorm)) {
                throw new IllegalArgumentException("clipNorm " + clipNorm + " must be finite and >= 0 (0 = off)");
            }
            if (sampled && !(sampleRatio > 0 && sampleRatio <= 1)) {
                throw new IllegalArgumentException("sampleRatio " + sampleRatio + " is outside (0, 1]");
            }
            if (nesterov && feedback != Feedback.MOMENTUM) {
                throw new IllegalArgumentException("nesterov needs feedback MOMENTUM, not " + feedback);
            }
            if (valueType != DType.F32 && valueType != DType.F16) {
                throw new IllegalArgumentException("values are sent as F32 or F16, not " + valueType);
            }
        }

        public Options withFeedback(Feedback f) {
            return new Options(f, momentum, nesterov && f == Feedback.MOMENTUM, clipNorm, sampled, sampleRatio, seed,
                    checkFinite, valueType);
        }

        public Options withMomentum(float m, boolean nest) {
            return new Options(feedback, m, nest, clipNorm, sampled, sampleRatio, seed, checkFinite, valueType);
        }

        public Options withClipNorm(float c) {
            return new Options(feedback, momentum, nesterov, c, sampled, sampleRatio, seed, checkFinite, valueType);
        }

        public Options withSampling(boolean on, double ratio, long s) {
            return new Options(feedback, momentum, nesterov, clipNorm, on, ratio, s, checkFinite, valueType);
        }

        public Options withCheckFinite(boolean on) {
            return new Options(feedback, momentum, nesterov, clipNorm, sampled, sampleRatio, seed, on, valueType);
        }

        public Options withValueType(DType t) {
            return new Options(feedback, momentum, nesterov, clipNorm, sampled, sampleRatio, seed, checkFinite, t);
        }
    }

    /**
     * One DGC step on {@code grad} (F32, any shape), updating {@code u} (MOMENTUM only; may be null
     * otherwise) and {@code v} in place and writing k = indices.numel() pairs into
     * {@code indices} (I32 or I64 [k], ascending) and {@code values} (F32/F16 [k]). Returns the
     * number of real pairs (k, or fewer with sampling; empty slots hold index -1, value 0).
     * Exactly, element by element: sent + v after == v accumulated. NaN/Inf in the gradient
     * throws a {@link io.qkern.nf4.NonFiniteException} naming {@code name} and the element.
     */
    public static long step(String name, Tensor grad, Tensor u, Tensor v, Options o, Tensor indices, Tensor values) {
        long n = grad.numel();
        requireF32(name + " gradient", grad);
        requireSame(name, "v", grad, v);
        boolean withU = o.feedback() == Feedback.MOMENTUM;
        if (withU) {
            requireSame(name, "u", grad, Objects.requireNonNull(u, "u (needed for MOMENTUM feedback)"));
        }
        if (indices.dtype() != DType.I32 && indices.dtype() != DType.I64) {
            throw new IllegalArgumentException("indices must be I32 or I64, not " + indices.dtype());
        }
        if (values.dtype() != o.valueType() || values.numel() != indices.numel()) {
            throw new IllegalArgumentException("values must be " + o.valueType() + " [" + indices.numel() + "], not "
                    + values.dtype() + " " + Arrays.toString(values.shape()));
        }
        long k = indices.numel();
        if (k > n) {
            throw new IllegalArgumentException("k = " + k + " exceeds the " + n + " elements of \"" + name + "\"");
        }
        int flags = (o.nesterov() ? 1 : 0) | (o.sampled() ? 2 : 0) | (o.checkFinite() ? 0 : 4);
        long[] bad = {-1};
        try (Arena arena = Arena.ofConfined(); Tensor.Lease a = grad.acquire(); Tensor.Lease b = v.acquire();
                Tensor.Lease c = withU ? u.acquire() : null; Tensor.Lease d = indices.acquire();
                Tensor.Lease e = values.acquire()) {
            return TopkNative.get().dgcStep(grad.descriptor(arena), withU ? u.descriptor(arena) : MemorySegment.NULL,
                    v.descriptor(arena), k, o.feedback().code, o.momentum(), o.clipNorm(), flags, o.sampleRatio(),
                    o.seed(), indices.descriptor(arena), values.descriptor(arena), bad, MemorySegment.NULL);
        } catch (QkernException ex) {
            throw TopK.nonFinite(name, grad, bad[0], ex);
        }
    }

    /**
     * Scatter-adds the m = P*k pairs received from {@code worldSize} ranks into {@code out} (F32,
     * overwritten) and divides by {@code worldSize}: out[i] = (sum of the values sent for i, added
     * in pair order) / P. Index -1 marks an empty slot.
     */
    public static void decompress(Tensor indices, Tensor values, long worldSize, Tensor out) {
        if (worldSize < 1) {
            throw new IllegalArgumentException("worldSize " + worldSize + " must be >= 1");
        }
        requireF32("out", out);
        try (Arena arena = Arena.ofConfined(); Tensor.Lease a = indices.acquire(); Tensor.Lease b = values.acquire();
                Tensor.Lease c = out.acquire()) {
            TopkNative.get().dgcDecompress(indices.descriptor(arena), values.descriptor(arena), worldSize,
                    out.descriptor(arena), MemorySegment.NULL);
        }
    }

    /**
     * Benchmark baseline: the momentum pass alone (u = m*u + g, v = v + u over all elements, CPU,
     * all threads, the same SIMD path), what a whole {@link #step} is compared against.
     */
    public static void momentumPassBaseline(Tensor grad, Tensor u, Tensor v, float momentum) {
        try (Arena arena = Arena.ofConfined(); Tensor.Lease a = grad.acquire(); Tensor.Lease b = u.acquire();
                Tensor.Lease c = v.acquire()) {
            TopkNative.get().dgcMomentumBaseline(grad.descriptor(arena), u.descriptor(arena), v.descriptor(arena),
                    momentum);
        }
    }

    private static void requireF32(String what, Tensor t) {
        if (t.dtype() != DType.F32) {
            throw new IllegalArgumentException(what + " must be F32, not " + t.dtype());
        }
    }

    private static void requireSame(String name, String what, Tensor grad, Tensor t) {
        requireF32(name + " " + what, t);
        if (t.numel() != grad.numel()) {
            throw new IllegalArgumentException(name + ": " + what + " has " + t.numel() + " elements, the gradient "
                    + grad.numel());
        }
        if (t.isReadOnly()) {
            throw new IllegalArgumentException(name + ": " + what + " wraps read-only memory");
        }
    }
}
