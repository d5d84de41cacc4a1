package io.qkern.topk;

import io.qkern.CpuPaths;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Qkern;
import io.qkern.Tensor;
import io.qkern.nf4.NonFiniteException;
import java.lang.foreign.ValueLayout;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The DGC step, decompression, warm-up schedules and the GradientCompressor. */
class DgcTest {
    private final Random rnd = new Random();
    private final String pathBefore = Qkern.cpuPath();

    @TempDir
    Path dir;

    @AfterEach
    void restorePath() {
        Qkern.setCpuPath(pathBefore);
    }

    private float[] gaussian(int n, double scale) {
        float[] x = new float[n];
        for (int i = 0; i < n; i++) {
            x[i] = (float) (rnd.nextGaussian() * scale);
        }
        return x;
    }

    /** sent + residual == accumulated v, bit for bit, against the update done here in Java floats. */
    @Test
    void sentPlusResidualIsExactlyWhatWentIn() {
        int n = 300000;
        for (String path : CpuPaths.available()) {
            Qkern.setCpuPath(path);
            for (Dgc.Feedback fb : Dgc.Feedback.values()) {
                for (boolean nesterov : fb == Dgc.Feedback.MOMENTUM ? new boolean[] {false, true} : new boolean[] {false}) {
                    for (DType vt : List.of(DType.F32, DType.F16)) {
                        float[] g = gaussian(n, 1), u0 = gaussian(n, 0.1), v0 = gaussian(n, 0.5);
                        float m = 0.9f;
                        float[] eu = u0.clone(), ev = v0.clone();
                        for (int i = 0; i < n; i++) {
                            switch (fb) {
                                case NONE -> ev[i] = g[i];
                                case RESIDUAL -> ev[i] = ev[i] + g[i];
                                case MOMENTUM -> {
                                    if (!nesterov) {
                                        eu[i] = m * eu[i] + g[i];
                                        ev[i] = ev[i] + eu[i];
                                    } else {
                                        eu[i] = (eu[i] + g[i]) * m;
                                        ev[i] = (ev[i] + eu[i]) + g[i];
                                    }
                                }
                            }
                        }
                        int k = 300;
                        Dgc.Options o = Dgc.Options.DEFAULT.withFeedback(fb).withMomentum(m, nesterov).withValueType(vt);
                        try (Tensor tg = Tensor.ofFloats(g, 500, 600); Tensor tu = Tensor.ofFloats(u0, n);
                                Tensor tv = Tensor.ofFloats(v0, n); Tensor idx = Tensor.allocate(DType.I32, Device.CPU, k);
                                Tensor val = Tensor.allocate(vt, Device.CPU, k)) {
                            idx.fillBytes(0xff);
                            val.fillBytes(0x7f);
                            assertEquals(k, Dgc.step("w", tg, tu, tv, o, idx, val));
                            int[] ii = idx.segment().toArray(ValueLayout.JAVA_INT);
                            float[] sent = val.toFloatArray();
                            float[] v = tv.toFloatArray(), u = tu.toFloatArray();
                            long[] want = TopkTest.reference(ev, k, TopK.Order.MAGNITUDE);
                            Arrays.sort(want);
                            assertArrayEquals(want, Arrays.stream(ii).asLongStream().toArray(), fb + " " + path);
                            float[] total = v.clone();
                            boolean[] hit = new boolean[n];
                            for (int j = 0; j < k; j++) {
                                total[ii[j]] = sent[j] + v[ii[j]];
                                hit[ii[j]] = true;
                            }
                            for (int i = 0; i < n; i++) {
                                assertEquals(ev[i], total[i], 0f, "sent + residual at " + i);
                                if (fb == Dgc.Feedback.MOMENTUM) {
                                    assertEquals(hit[i] ? 0f : eu[i], u[i], 0f, "masked momentum at " + i);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /**
     * A tensor of at least 2^18 elements takes the sampled bound: the update collects the
     * candidates above a sampled threshold on |v| (the sample gathered during the finite check,
     * or on its own without it). Same exact selection and invariant as on small tensors.
     */
    @Test
    void largeTensorsSelectExactlyThroughTheBound() {
        int n = (1 << 18) + 7, k = 1000;
        float m = 0.9f;
        for (String path : CpuPaths.available()) {
            Qkern.setCpuPath(path);
            for (boolean check : new boolean[] {true, false}) {
                float[] g = gaussian(n, 1), u0 = gaussian(n, 0.1), v0 = gaussian(n, 0.5);
                float[] eu = u0.clone(), ev = v0.clone();
                for (int i = 0; i < n; i++) {
                    eu[i] = m * eu[i] + g[i];
                    ev[i] = ev[i] + eu[i];
                }
                Dgc.Options o = Dgc.Options.DEFAULT.withMomentum(m, false).withCheckFinite(check);
                try (Tensor tg = Tensor.ofFloats(g, n); Tensor tu = Tensor.ofFloats(u0, n); Tensor tv = Tensor.ofFloats(v0, n);
                        Tensor idx = Tensor.allocate(DType.I64, Device.CPU, k); Tensor val = Tensor.allocate(DType.F32, Device.CPU, k)) {
                    idx.fillBytes(0xff);
                    val.fillBytes(0x7f);
                    assertEquals(k, Dgc.step("w", tg, tu, tv, o, idx, val));
                    long[] ii = idx.segment().toArray(ValueLayout.JAVA_LONG);
                    float[] sent = val.toFloatArray();
                    float[] v = tv.toFloatArray(), u = tu.toFloatArray();
                    assertArrayEquals(TopkTest.referenceAscending(ev, k, TopK.Order.MAGNITUDE), ii, path + " check=" + check);
                    boolean[] hit = new boolean[n];
                    for (int j = 0; j < k; j++) {
                        int i = (int) ii[j];
                        assertEquals(ev[i], sent[j] + v[i], 0f, "sent + residual at " + i);
                        hit[i] = true;
                    }
                    for (int i = 0; i < n; i++) {
                        if (!hit[i]) {
                            assertEquals(ev[i], v[i], 0f, "residual at " + i);
                        }
                        assertEquals(hit[i] ? 0f : eu[i], u[i], 0f, "masked momentum at " + i);
                    }
                }
            }
        }
    }

    @Test
    void nonFiniteGradientNamesTensorAndIndexAndLeavesStateAlone() {
        int n = 40000;
        float[] g = gaussian(n, 1);
        g[31337] = Float.NEGATIVE_INFINITY;
        try (Tensor tg = Tensor.ofFloats(g, 200, 200); Tensor tu = Tensor.ofFloats(new float[n], n);
                Tensor tv = Tensor.ofFloats(gaussian(n, 1), n); Tensor idx = Tensor.allocate(DType.I32, Device.CPU, 40);
                Tensor val = Tensor.allocate(DType.F32, Device.CPU, 40)) {
            float[] before = tv.toFloatArray();
            NonFiniteException e = assertThrows(NonFiniteException.class,
                    () -> Dgc.step("encoder.layer3.weight", tg, tu, tv, Dgc.Options.DEFAULT, idx, val));
            assertEquals("encoder.layer3.weight", e.tensorName());
            assertEquals(31337, e.flatIndex());
            assertArrayEquals(new long[] {156, 137}, e.index());
            assertTrue(e.getMessage().contains("-Inf"), e.getMessage());
            assertArrayEquals(before, tv.toFloatArray(), "v unchanged");
        }
    }

    @Test
    void decompressionAveragesTheRanksPairs() {
        try (Tensor idx = Tensor.allocate(DType.I64, Device.CPU, 6); Tensor val = Tensor.ofFloats(
                new float[] {1, 2, 0, 3, -4, 0.5f}, 6); Tensor out = Tensor.allocate(DType.F32, Device.CPU, 10)) {
            idx.segment().copyFrom(java.lang.foreign.MemorySegment.ofArray(new long[] {5, 1, -1, 1, 9, 0}));
            out.fillBytes(0x7f);
            Dgc.decompress(idx, val, 2, out);
            assertArrayEquals(new float[] {0.25f, 2.5f, 0, 0, 0, 0.5f, 0, 0, 0, -2f}, out.toFloatArray());
        }
    }

    @Test
    void momentumPassBaselineIsThePlainUpdate() {
        int n = 100003;
        float[] g = gaussian(n, 1), u = gaussian(n, 1), v = gaussian(n, 1);
        try (Tensor tg = Tensor.ofFloats(g, n); Tensor tu = Tensor.ofFloats(u, n); Tensor tv = Tensor.ofFloats(v, n)) {
            Dgc.momentumPassBaseline(tg, tu, tv, 0.9f);
            float[] u2 = tu.toFloatArray(), v2 = tv.toFloatArray();
            for (int i = 0; i < n; i++) {
                float eu = 0.9f * u[i] + g[i];
                assertEquals(eu, u2[i], 0f);
                assertEquals(v[i] + eu, v2[i], 0f);
            }
        }
    }

    @Test
    void warmupSchedules() {
        WarmupSchedule paper = WarmupSchedule.paper();
        assertEquals(0.25, paper.ratio(0, 0.001), 1e-12);
        assertEquals(0.0625, paper.ratio(1, 0.001), 1e-12);
        assertEquals(0.015625, paper.ratio(2, 0.001), 1e-12);
        assertEquals(0.004, paper.ratio(3, 0.001), 1e-12);
        assertEquals(0.001, paper.ratio(4, 0.001), 1e-12);
        assertEquals(0.001, paper.ratio(9, 0.001), 1e-12);
        WarmupSchedule exp = WarmupSchedule.exponential(4);  // coeff = 0.001^(1/5)
        double c = Math.pow(0.001, 0.2);
        for (int e = 0; e < 4; e++) {
            assertEquals(Math.pow(c, e + 1), exp.ratio(e, 0.001), 1e-12);
        }
        assertEquals(0.001, exp.ratio(4, 0.001), 1e-12);
        assertEquals(0.01, WarmupSchedule.none().ratio(0, 0.01));
    }

    /**
     * SGD on a least-squares problem (W [256, 64], 512 samples) split over 4 simulated ranks: DGC
     * at 99% sparsity (momentum correction, the reference code's warm-up, exchange through
     * GradientCompressor) reaches the loss of dense SGD with momentum after the same 400 steps at
     * the same learning rate. The stated margin: dgc <= 1.25 * dense (both end near the noise floor,
     * ~0.28; seen here: dense 0.278, DGC 0.300). The learning rate (0.005) is what 99% sparsity
     * tolerates: an element sent every ~25 steps arrives as ~25 accumulated momentum steps at once,
     * and lr 0.02 already makes that overshoot.
     */
    @Test
    void dgcAtNinetyNinePercentSparsityTrainsLikeDense() {
        int din = 64, dout = 256, samples = 512, ranks = 4, steps = SGD_STEPS;
        float lr = SGD_LR, m = 0.9f;
        float[][] x = new float[samples][];
        float[][] y = new float[samples][dout];
        float[] wStar = gaussian(dout * din, 1.0 / Math.sqrt(din));
        for (int s = 0; s < samples; s++) {
            x[s] = gaussian(din, 1);
            for (int o = 0; o < dout; o++) {
                double acc = 0;
                for (int i = 0; i < din; i++) {
                    acc += wStar[o * din + i] * x[s][i];
                }
                y[s][o] = (float) (acc + 0.05 * rnd.nextGaussian());
            }
        }
        double initial = loss(new float[dout * din], x, y, 0, samples);
        float[] w = new float[dout * din], mom = new float[dout * din];
        for (int t = 0; t < steps; t++) {
            float[] g = gradient(w, x, y, 0, samples);
            for (int i = 0; i < w.length; i++) {
                mom[i] = m * mom[i] + g[i];
                w[i] -= lr * mom[i];
            }
        }
        double dense = loss(w, x, y, 0, samples);
        float[] wd = new float[dout * din];
        List<GradientCompressor> cs = new ArrayList<>();
        Map<String, long[]> shapes = Map.of("w", new long[] {dout, din});
        Dgc.Options o = Dgc.Options.DEFAULT.withMomentum(m, false);
        for (int r = 0; r < ranks; r++) {
            cs.add(new GradientCompressor(shapes, GradientCompressor.RatioPolicy.uniform(0.01),
                    WarmupSchedule.exponential(4), o, Device.CPU));
        }
        try {
            assertFalse(cs.get(0).isDense("w"));
            int per = samples / ranks;
            for (int t = 0; t < steps; t++) {
                int epoch = t / 10;
                List<GradientCompressor.Compressed> sent = new ArrayList<>();
                try {
                    for (int r = 0; r < ranks; r++) {
                        float[] g = gradient(wd, x, y, r * per, (r + 1) * per);
                        try (Tensor tg = Tensor.ofFloats(g, dout, din)) {
                            sent.add(cs.get(r).compress(Map.of("w", tg), epoch).get("w"));
                        }
                    }
                    try (Tensor avg = cs.get(0).decompress("w", sent)) {
                        float[] ga = avg.toFloatArray();
                        for (int i = 0; i < wd.length; i++) {
                            wd[i] -= lr * ga[i];
                        }
                    }
                } finally {
                    sent.forEach(GradientCompressor.Compressed::close);
                }
            }
        } finally {
            cs.forEach(GradientCompressor::close);
        }
        double dgc = loss(wd, x, y, 0, samples);
        System.out.printf("least squares: initial %.4f, dense SGD %.6f, DGC 99%% %.6f%n", initial, dense, dgc);
        assertTrue(dense < initial * 0.01, "dense SGD converged: " + dense + " from " + initial);
        assertTrue(dgc <= dense * 1.25, "DGC loss " + dgc + " vs dense " + dense + " (initial " + initial + ")");
    }

    static final int SGD_STEPS = Integer.getInteger("sgd.steps", 400);
    static final float SGD_LR = Float.parseFloat(System.getProperty("sgd.lr", "0.005"));

    private static double loss(float[] w, float[][] x, float[][] y, int from, int to) {
        int din = x[0].length, dout = y[0].length;
        double l = 0;
        for (int s = from; s < to; s++) {
            for (int o = 0; o < dout; o++) {
                double p = 0;
                for (int i = 0; i < din; i++) {
                    p += w[o * din + i] * x[s][i];
                }
                l += (p - y[s][o]) * (p - y[s][o]);
            }
        }
        return l / (2.0 * (to - from));
    }

    private static float[] gradient(float[] w, float[][] x, float[][] y, int from, int to) {
        int din = x[0].length, dout = y[0].length;
        float[] g = new float[dout * din];
        float[] r = new float[dout];
        for (int s = from; s < to; s++) {
            for (int o = 0; o < dout; o++) {
                float p = 0;
                for (int i = 0; i < din; i++) {
                    p += w[o * din + i] * x[s][i];
                }
                r[o] = p - y[s][o];
            }
            for (int o = 0; o < dout; o++) {
                for (int i = 0; i < din; i++) {
                    g[o * din + i] += r[o] * x[s][i];
                }
            }
        }
        float inv = 1f / (to - from);
        for (int i = 0; i < g.length; i++) {
            g[i] *= inv;
        }
        return g;
    }

    @Test
    void compressorSendsSmallAndOneDimensionalTensorsDenseAndCheckpointsItsState() throws Exception {
        Map<String, long[]> shapes = new LinkedHashMap<>();
        shapes.put("fc.weight", new long[] {256, 128});
        shapes.put("fc.bias", new long[] {40000});
        shapes.put("tiny", new long[] {10, 10});
        Map<String, float[]> grads = new LinkedHashMap<>();
        shapes.forEach((k, s) -> grads.put(k, gaussian((int) Arrays.stream(s).reduce(1, Math::multiplyExact), 1)));
        GradientCompressor.RatioPolicy layerwise = (name, shape) -> name.startsWith("fc") ? 0.001 : 0.5;
        Path state = dir.resolve("dgc-state.safetensors");
        try (GradientCompressor a = new GradientCompressor(shapes, layerwise, WarmupSchedule.paper(),
                Dgc.Options.DEFAULT, Device.CPU)) {
            assertTrue(a.isDense("fc.bias"));
            assertTrue(a.isDense("tiny"));
            assertEquals(List.of("fc.weight", "fc.bias", "tiny"), a.names());
            assertEquals((long) Math.ceil(32768 * 0.25), a.k("fc.weight", 0));
            assertEquals(33, a.k("fc.weight", 7));
            step(a, grads, 7).values().forEach(GradientCompressor.Compressed::close);
            a.save(state);
            try (GradientCompressor b = new GradientCompressor(shapes, layerwise, WarmupSchedule.paper(),
                    Dgc.Options.DEFAULT, Device.CPU)) {
                b.restore(state);
                assertArrayEquals(a.residual("fc.weight").toFloatArray(), b.residual("fc.weight").toFloatArray());
                // the same next step from the saved and the restored state
                Map<String, GradientCompressor.Compressed> ra = step(a, grads, 8), rb = step(b, grads, 8);
                for (String name : shapes.keySet()) {
                    assertArrayEquals(ra.get(name).values().toFloatArray(), rb.get(name).values().toFloatArray(), name);
                    assertEquals(ra.get(name).dense(), name.equals("fc.bias") || name.equals("tiny"));
                }
                ra.values().forEach(GradientCompressor.Compressed::close);
                rb.values().forEach(GradientCompressor.Compressed::close);
            }
            try (GradientCompressor c = new GradientCompressor(shapes, layerwise, WarmupSchedule.paper(),
                    Dgc.Options.DEFAULT.withFeedback(Dgc.Feedback.RESIDUAL), Device.CPU)) {
                assertTrue(assertThrows(IllegalArgumentException.class, () -> c.restore(state)).getMessage()
                        .contains("feedback MOMENTUM"));
            }
        }
    }

    private Map<String, GradientCompressor.Compressed> step(GradientCompressor c, Map<String, float[]> grads, int epoch) {
        Map<String, Tensor> ts = new LinkedHashMap<>();
        try {
            grads.forEach((k, v) -> ts.put(k, Tensor.ofFloats(v, shapeOf(k))));
            return c.compress(ts, epoch);
        } finally {
            ts.values().forEach(Tensor::close);
        }
    }

    private static long[] shapeOf(String name) {
        return switch (name) {
            case "fc.weight" -> new long[] {256, 128};
            case "fc.bias" -> new long[] {40000};
            default -> new long[] {10, 10};
        };
    }
}
