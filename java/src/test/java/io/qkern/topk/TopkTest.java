package io.qkern.topk;

import io.qkern.CpuPaths;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Qkern;
import io.qkern.Tensor;
import io.qkern.nf4.NonFiniteException;
import java.lang.foreign.ValueLayout;
import java.util.Arrays;
import java.util.Comparator;
import java.util.Random;
import java.util.stream.IntStream;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;

/** Exact top-k against a sort-based float64 reference, on every CPU path this machine has. */
class TopkTest {
    private final Random rnd = new Random();
    private final String pathBefore = Qkern.cpuPath();

    @AfterEach
    void restorePath() {
        Qkern.setCpuPath(pathBefore);
    }

    /** Indices by descending key (|x|, x or -x as double), ties by ascending index. */
    static long[] reference(float[] x, long k, TopK.Order order) {
        Comparator<Integer> byKey = Comparator.comparingDouble(i -> switch (order) {
            // "+ 0.0" turns -0.0 into +0.0: the values compare as IEEE floats (Double.compare would not)
            case MAGNITUDE -> -Math.abs((double) x[i]) + 0.0;
            case LARGEST -> -(double) x[i] + 0.0;
            case SMALLEST -> (double) x[i] + 0.0;
        });
        return IntStream.range(0, x.length).boxed().sorted(byKey.thenComparingInt(i -> i)).limit(k)
                .mapToLong(Integer::longValue).toArray();
    }

    void check(String what, float[] x, long k) {
        for (String path : CpuPaths.available()) {
            Qkern.setCpuPath(path);
            for (TopK.Order order : TopK.Order.values()) {
                long[] want = reference(x, k, order);
                long[] ascending = want.clone();
                Arrays.sort(ascending);
                try (Tensor t = Tensor.ofFloats(x, x.length)) {
                    for (boolean sorted : new boolean[] {false, true}) {
                        try (TopK.Result r = TopK.select("x", t, k, order, sorted)) {
                            long[] got = r.indices().segment().toArray(ValueLayout.JAVA_LONG);
                            assertArrayEquals(sorted ? want : ascending, got,
                                    what + " " + path + " " + order + " sorted=" + sorted + " k=" + k);
                            float[] vals = r.values().toFloatArray();
                            for (int j = 0; j < k; j++) {
                                assertEquals(Float.floatToRawIntBits(x[(int) got[j]]), Float.floatToRawIntBits(vals[j]));
                            }
                        }
                    }
                }
            }
        }
    }

    /**
     * The same set as {@link #reference} in ascending index order, for large n: the k-th largest
     * key T from a primitive sort of the keys (as doubles), then every index with key > T and the
     * first (k - #greater) with key == T.
     */
    static long[] referenceAscending(float[] x, int k, TopK.Order order) {
        double[] key = new double[x.length];
        for (int i = 0; i < x.length; i++) {
            key[i] = switch (order) {
                case MAGNITUDE -> Math.abs((double) x[i]) + 0.0;
                case LARGEST -> (double) x[i] + 0.0;
                case SMALLEST -> -(double) x[i] + 0.0;
            };
        }
        double[] sorted = key.clone();
        Arrays.sort(sorted);
        double t = sorted[x.length - k];
        int greater = 0;
        for (double d : key) {
            greater += d > t ? 1 : 0;
        }
        int ties = k - greater;
        long[] out = new long[k];
        int w = 0;
        for (int i = 0; i < x.length; i++) {
            if (key[i] > t || (key[i] == t && ties-- > 0)) {
                out[w++] = i;
            }
        }
        assertEquals(k, w);
        return out;
    }

    /**
     * Inputs of at least 2^18 elements with k <= n/64 take the sampled bound (one compare pass
     * collects candidates above a sampled threshold; radix select among them; full radix passes
     * when the bound misleads): the same exact sets, with a cluster of large ties, and all-equal
     * input (every element a candidate: the fallback).
     */
    @Test
    void largeInputsMatchTheReference() {
        int n = (1 << 18) + 5;
        float[] x = new float[n];
        for (int i = 0; i < n; i++) {
            x[i] = (float) rnd.nextGaussian() * (i % 3 == 0 ? 1e-3f : 1f);
        }
        for (int i = 200_003; i < 200_003 + 1500; i++) {
            x[i] = (i % 2 == 0 ? 7f : -7f);  // ties at the top, both signs
        }
        float[] eq = new float[n];
        Arrays.fill(eq, 0.75f);
        for (String path : CpuPaths.available()) {
            Qkern.setCpuPath(path);
            try (Tensor t = Tensor.ofFloats(x, n); Tensor te = Tensor.ofFloats(eq, n)) {
                for (TopK.Order order : TopK.Order.values()) {
                    for (int k : new int[] {1, 1000, n / 1000, n / 64}) {
                        try (TopK.Result r = TopK.select("x", t, k, order, false)) {
                            assertArrayEquals(referenceAscending(x, k, order),
                                    r.indices().segment().toArray(ValueLayout.JAVA_LONG),
                                    path + " " + order + " k=" + k);
                        }
                    }
                    try (TopK.Result r = TopK.select("eq", te, 3000, order, false)) {
                        assertArrayEquals(referenceAscending(eq, 3000, order),
                                r.indices().segment().toArray(ValueLayout.JAVA_LONG), path + " all-equal " + order);
                    }
                }
            }
        }
    }

    @Test
    void randomInputsMatchTheSortReference() {
        for (int n : new int[] {1, 5, 333, 20000, 300000}) {
            float[] x = new float[n];
            for (int i = 0; i < n; i++) {
                x[i] = (float) rnd.nextGaussian() * (rnd.nextBoolean() ? 1 : 1e-3f);
            }
            for (long k : new long[] {1, Math.max(1, n / 1000), n / 10, n}) {
                check("random n=" + n, x, k);
            }
        }
    }

    @Test
    void allEqualNarrowSignedZeroAndDenormalInputs() {
        float[] eq = new float[50000];
        Arrays.fill(eq, -2.5f);
        check("all-equal", eq, 777);
        float[] narrow = new float[100000];
        for (int i = 0; i < narrow.length; i++) {
            narrow[i] = Math.nextUp(1.0f) + rnd.nextInt(8) * Math.ulp(1.0f) * (rnd.nextBoolean() ? 1 : -1);
        }
        check("narrow", narrow, 1000);
        float[] zeros = new float[4000];
        for (int i = 0; i < zeros.length; i++) {
            zeros[i] = rnd.nextBoolean() ? -0.0f : 0.0f;
        }
        zeros[100] = 1e-30f;
        zeros[200] = -1e-30f;
        check("signed zeros", zeros, 50);
        float[] denormal = new float[60000];
        for (int i = 0; i < denormal.length; i++) {
            denormal[i] = Float.intBitsToFloat(rnd.nextInt(0x800000) | (rnd.nextBoolean() ? 0x80000000 : 0));
        }
        check("denormals", denormal, 600);
    }

    @Test
    void kZeroKEqualsNAndEmptyInput() {
        float[] x = {3, -1, 2, -3};
        check("k=0", x, 0);
        check("k=n", x, 4);
        check("n=0", new float[0], 0);
        try (Tensor t = Tensor.ofFloats(x, 4)) {
            assertTrue(assertThrows(IllegalArgumentException.class, () -> TopK.select(t, 5)).getMessage()
                    .contains("k = 5 is outside 0..4"));
        }
    }

    @Test
    void nanIsAnErrorNamingTensorAndIndex() {
        float[] x = new float[70000];
        Arrays.fill(x, 1f);
        x[65536 + 7] = Float.NaN;
        try (Tensor t = Tensor.ofFloats(x, 280, 250)) {
            NonFiniteException e = assertThrows(NonFiniteException.class,
                    () -> TopK.select("layer1.grad", t, 10, TopK.Order.MAGNITUDE, false));
            assertEquals("layer1.grad", e.tensorName());
            assertEquals(65543, e.flatIndex());
            assertTrue(e.getMessage().contains("layer1.grad") && e.getMessage().contains("NaN"), e.getMessage());
        }
    }

    @Test
    void approximateSelectionKeepsItsContract() {
        int n = 1 << 20;
        int k = n / 1000;
        float[] x = new float[n];
        for (int i = 0; i < n; i++) {
            x[i] = (float) rnd.nextGaussian();
        }
        long[] exact = reference(x, k, TopK.Order.MAGNITUDE);
        Arrays.sort(exact);
        try (Tensor t = Tensor.ofFloats(x, n);
                TopK.Approximate a = TopK.selectApproximate("x", t, k, 0.01, rnd.nextLong())) {
            long[] idx = a.indices().segment().toArray(ValueLayout.JAVA_LONG);
            float[] val = a.values().toFloatArray();
            assertTrue(a.selected() >= Math.ceil(0.8 * k) && a.selected() <= k, "selected " + a.selected());
            for (int j = 0; j < k; j++) {
                if (j < a.selected()) {
                    assertEquals(x[(int) idx[j]], val[j]);
                    assertTrue(j == 0 || idx[j] > idx[j - 1]);
                } else {
                    assertEquals(-1, idx[j]);
                    assertEquals(0f, val[j]);
                }
            }
            if (a.selected() == k) {
                assertArrayEquals(exact, idx, "a full sampled selection is the exact top-k");
            }
        }
    }

    @Test
    void baselinesAgreeWithTheRadixSelect() {
        float[] x = new float[200000];
        for (int i = 0; i < x.length; i++) {
            x[i] = (float) rnd.nextGaussian();
        }
        x[5] = x[6] = x[7] = 9f;  // ties at the top
        try (Tensor t = Tensor.ofFloats(x, x.length); TopK.Result r = TopK.select(t, 200)) {
            long[] want = r.indices().segment().toArray(ValueLayout.JAVA_LONG);
            for (TopK.Baseline b : TopK.Baseline.values()) {
                try (TopK.Result q = TopK.baseline(t, 200, b)) {
                    assertArrayEquals(want, q.indices().segment().toArray(ValueLayout.JAVA_LONG), b.name());
                }
            }
        }
    }

    @Test
    void wrongDtypeIsRefused() {
        try (Tensor t = Tensor.allocate(DType.F16, Device.CPU, 10)) {
            assertTrue(assertThrows(IllegalArgumentException.class, () -> TopK.select(t, 1)).getMessage()
                    .contains("F16"));
        }
    }
}
