package io.qkern.attention;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Tensor;
import java.util.Arrays;
import java.util.SplittableRandom;

/** Shared test helpers: CPU paths, random KV written into a pool, and the float64 dense reference. */
final class AttentionFixtures {
    private AttentionFixtures() {}

    /** A one-layer CPU pool whose every slot is NaN until written. */
    static PagedKvCache poisonedCache(int numBlocks, int blockSize, int kvHeads, int headDim, DType dtype) {
        PagedKvCache c = PagedKvCache.allocate(Device.CPU,
                new PagedKvCache.Spec(1, numBlocks, blockSize, kvHeads, headDim, dtype));
        c.fillBytes(0xFF);
        return c;
    }

    static float[] gaussian(SplittableRandom rng, int n) {
        float[] v = new float[n];
        for (int i = 0; i < n; i++) {
            v[i] = (float) (rng.nextGaussian());
        }
        return v;
    }

    /** Writes random K/V into every slot of the listed blocks up to {@code tokens} tokens (the sequence order). */
    static void writeTokens(PagedKvCache cache, int[] blocks, int tokens, SplittableRandom rng) {
        PagedKvCache.Spec s = cache.spec();
        if (tokens == 0) {
            return;
        }
        long[] slots = new long[tokens];
        for (int t = 0; t < tokens; t++) {
            slots[t] = (long) blocks[t / s.blockSize()] * s.blockSize() + t % s.blockSize();
        }
        int row = s.numKvHeads() * s.headDim();
        try (Tensor k = Tensor.ofFloats(gaussian(rng, tokens * row), tokens, s.numKvHeads(), s.headDim());
                Tensor v = Tensor.ofFloats(gaussian(rng, tokens * row), tokens, s.numKvHeads(), s.headDim())) {
            cache.write(0, k, v, slots);
        }
    }

    /** Dense float64 attention of one sequence: {out[Hq*D], lse[Hq]} over the cache contents (exactly widened). */
    static double[][] reference(float[] kAll, float[] vAll, PagedKvCache.Spec s, int[] pages, int len, float[] q,
            int hq, double scale) {
        int d = s.headDim();
        int hkv = s.numKvHeads();
        int group = hq / hkv;
        double[] out = new double[hq * d];
        double[] lse = new double[hq];
        for (int h = 0; h < hq; h++) {
            int kvh = h / group;
            double[] sc = new double[len];
            double m = Double.NEGATIVE_INFINITY;
            for (int t = 0; t < len; t++) {
                long base = (((long) pages[t / s.blockSize()] * s.blockSize() + t % s.blockSize()) * hkv + kvh) * d;
                double dot = 0;
                for (int i = 0; i < d; i++) {
                    dot += (double) q[h * d + i] * kAll[(int) (base + i)];
                }
                sc[t] = dot * scale;
                m = Math.max(m, sc[t]);
            }
            if (len == 0) {
                lse[h] = Double.NEGATIVE_INFINITY;
                continue;
            }
            double sum = 0;
            for (int t = 0; t < len; t++) {
                sum += Math.exp(sc[t] - m);
            }
            for (int t = 0; t < len; t++) {
                long base = (((long) pages[t / s.blockSize()] * s.blockSize() + t % s.blockSize()) * hkv + kvh) * d;
                double p = Math.exp(sc[t] - m) / sum;
                for (int i = 0; i < d; i++) {
                    out[h * d + i] += p * vAll[(int) (base + i)];
                }
            }
            lse[h] = m + Math.log(sum);
        }
        return new double[][] {out, lse};
    }

    /** Asserts |got - want| <= tol * (1 + |want|) everywhere, naming the first bad index. */
    static void assertClose(String what, double[] want, float[] got, double tol) {
        if (want.length != got.length) {
            throw new AssertionError(what + ": length " + got.length + " != " + want.length);
        }
        for (int i = 0; i < want.length; i++) {
            if (Double.isInfinite(want[i]) && got[i] == want[i]) {
                continue;
            }
            if (!(Math.abs(got[i] - want[i]) <= tol * (1 + Math.abs(want[i])))) {
                throw new AssertionError(what + ": element " + i + " is " + got[i] + ", expected " + want[i]
                        + " (tolerance " + tol + ")");
            }
        }
    }

    static double[] slice(double[] a, int from, int len) {
        return Arrays.copyOfRange(a, from, from + len);
    }
}
