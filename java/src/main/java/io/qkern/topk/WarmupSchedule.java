package io.qkern.topk;

import java.util.Arrays;

/**
 * The density (fraction of elements sent) per epoch during DGC's warm-up, before the final
 * ratio applies. Two forms: an explicit list, and the exponential formula of the DGC reference
 * code.
 */
public interface WarmupSchedule {
    /** The density to use in {@code epoch} (0-based) when the target density is {@code finalRatio}. */
    double ratio(int epoch, double finalRatio);

    /** No warm-up: always the final ratio. */
    static WarmupSchedule none() {
        return (epoch, finalRatio) -> finalRatio;
    }

    /**
     * The paper's schedule: sparsity 75%, 93.75%, 98.4375%, 99.6%, 99.9% over the first five
     * epochs (densities 0.25, 0.0625, 0.015625, 0.004, 0.001), then the final ratio.
     */
    static WarmupSchedule paper() {
        return ofSparsities(0.75, 0.9375, 0.984375, 0.996, 0.999);
    }

    /** Epoch e < n uses density 1 - sparsities[e]; later epochs the final ratio. */
    static WarmupSchedule ofSparsities(double... sparsities) {
        double[] s = sparsities.clone();
        for (double v : s) {
            if (!(v >= 0 && v < 1)) {
                throw new IllegalArgumentException("sparsity " + v + " is outside [0, 1) in " + Arrays.toString(s));
            }
        }
        return (epoch, finalRatio) -> epoch >= 0 && epoch < s.length ? 1.0 - s[epoch] : finalRatio;
    }

    /**
     * The reference code's formula: with W warm-up epochs, coeff = finalRatio^(1/(W+1)) and epoch
     * e < W uses max(coeff^(e+1), finalRatio); later epochs finalRatio. The density falls
     * geometrically from coeff to the final ratio.
     */
    static WarmupSchedule exponential(int warmupEpochs) {
        if (warmupEpochs < 0) {
            throw new IllegalArgumentException("warmupEpochs " + warmupEpochs + " is negative");
        }
        return (epoch, finalRatio) -> {
            if (epoch < 0 || epoch >= warmupEpochs) {
                return finalRatio;
            }
            double coeff = Math.pow(finalRatio, 1.0 / (warmupEpochs + 1));
            return Math.max(Math.pow(coeff, epoch + 1), finalRatio);
        };
    }
}
