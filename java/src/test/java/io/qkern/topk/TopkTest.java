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
