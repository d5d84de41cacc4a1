package io.qkern.dist;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.qkern.Device;
import io.qkern.Tensor;
import io.qkern.topk.Dgc;
import io.qkern.topk.GradientCompressor;
import io.qkern.topk.WarmupSchedule;
import java.time.Duration;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * Distributed DGC against an independent reference: what every rank sent (its pairs) is densified
 * and averaged in float64 by the test; the exchanged result must match on every rank, bit-identically
 * across ranks, and the sparse and dense routes must agree.
 */
class DistributedDgcTest {
    private static final Map<String, long[]> SHAPES = new LinkedHashMap<>();

    static {
        SHAPES.put("layer1.weight", new long[] {64, 512});
        SHAPES.put("layer2.weight", new long[] {200, 100});
        SHAPES.put("layer2.bias", new long[] {100});
    }

    /** Per rank, per step: rank r's gradients of step s. */
    private static List<float[]> stepsOf(int rank, String name, long numel, int steps) {
        Random rnd = new Random(rank * 7919L + name.hashCode());
        List<float[]> out = new ArrayList<>();
        for (int s = 0; s < steps; s++) {
            float[] g = new float[(int) numel];
            for (int i = 0; i < g.length; i++) {
                g[i] = (float) (rnd.nextGaussian() * (1 + (i % 97 == 0 ? 10 : 0)));
            }
            out.add(g);
        }
        return out;
    }

    record RankSteps(List<Map<String, float[]>> averaged, List<Map<String, float[][]>> sentPairs,
            List<List<DistributedDgc.TensorStats>> stats) {
    }

    private static List<RankSteps> train(int ranks, double ratio, DistributedDgc.Exchange exchange, int steps) {
        DeviceMesh mesh = DeviceMesh.cpu(ranks);
        List<Communicator> comms = mesh.inProcess(Duration.ofSeconds(30));
        try {
            return mesh.run(comms, c -> {
                try (GradientCompressor gc = new GradientCompressor(SHAPES, GradientCompressor.RatioPolicy.uniform(ratio),
                        WarmupSchedule.none(), Dgc.Options.DEFAULT, Device.CPU)) {
                    DistributedDgc dgc = new DistributedDgc(c, gc, exchange);
                    Map<String, List<float[]>> grads = new LinkedHashMap<>();
                    SHAPES.forEach((n, s) -> grads.put(n, stepsOf(c.rank(), n, s[0] * (s.length > 1 ? s[1] : 1), steps)));
                    RankSteps out = new RankSteps(new ArrayList<>(), new ArrayList<>(), new ArrayList<>());
                    for (int step = 0; step < steps; step++) {
                        Map<String, Tensor> g = new LinkedHashMap<>();
                        for (var e : SHAPES.entrySet()) {
                            g.put(e.getKey(), Tensor.ofFloats(grads.get(e.getKey()).get(step), e.getValue()));
                        }
                        try (DistributedDgc.Step st = dgc.step(g, 0)) {
                            Map<String, float[]> avg = new LinkedHashMap<>();
                            st.averaged().forEach((n, t) -> avg.put(n, t.toFloatArray()));
                            Map<String, float[][]> pairs = new LinkedHashMap<>();
                            st.sent().forEach((n, cmp) -> pairs.put(n, cmp.dense() ? new float[][] {null,
                                    cmp.values().toFloatArray()} : new float[][] {toFloat(cmp.indices()),
                                            cmp.values().toFloatArray()}));
                            out.averaged().add(avg);
                            out.sentPairs().add(pairs);
                            out.stats().add(st.stats());
                        } finally {
                            g.values().forEach(Tensor::close);
                        }
                    }
                    return out;
                }
            });
        } finally {
            comms.forEach(Communicator::close);
        }
    }

    private static float[] toFloat(Tensor i32) {
        var s = i32.segment();
        float[] f = new float[(int) i32.numel()];
        for (int i = 0; i < f.length; i++) {
            f[i] = s.get(java.lang.foreign.ValueLayout.JAVA_INT, 4L * i);
        }
        return f;
    }

    @ParameterizedTest
    @ValueSource(ints = {1, 2, 4})
    void resultIsTheAverageOfWhatEveryRankSentOnEveryRank(int ranks) {
        int steps = 3;
        List<RankSteps> got = train(ranks, 0.01, DistributedDgc.Exchange.AUTO, steps);
        for (int step = 0; step < steps; step++) {
            for (var e : SHAPES.entrySet()) {
                String name = e.getKey();
                int n = (int) (e.getValue()[0] * (e.getValue().length > 1 ? e.getValue()[1] : 1));
                double[] sum = new double[n];
                double[] abs = new double[n];
                for (RankSteps r : got) {
                    float[][] pairs = r.sentPairs().get(step).get(name);
                    for (int j = 0; j < pairs[1].length; j++) {
                        int i = pairs[0] == null ? j : (int) pairs[0][j];
                        if (i >= 0) {
                            sum[i] += pairs[1][j];
                            abs[i] += Math.abs(pairs[1][j]);
                        }
                    }
                }
                float[] first = got.get(0).averaged().get(step).get(name);
                for (int r = 1; r < ranks; r++) {
                    assertArrayEquals(first, got.get(r).averaged().get(step).get(name), name + " differs on rank " + r);
                }
                for (int i = 0; i < n; i++) {
                    double tol = ranks * Math.ulp((float) abs[i]) + 1e-30;
                    assertEquals(sum[i] / ranks, first[i], tol, name + " step " + step + " element " + i);
                }
            }
            for (RankSteps r : got) {
                for (DistributedDgc.TensorStats s : r.stats().get(step)) {
                    if (s.name().equals("layer2.bias")) {
                        assertFalse(s.sparseRoute(), "1-D tensors go dense");
                    } else if (ranks > 1) {
                        assertTrue(s.sparseRoute(), "1% density: sparse is cheaper for " + s);
                        assertTrue(s.wireBytesPerRank() < DistributedDgc.denseBytes(ranks, s.numel()));
                    }
                }
            }
        }
    }

    @ParameterizedTest
    @ValueSource(ints = {2, 3})
    void sparseAndDenseRoutesGiveTheSameGradientAndAutoPicksTheCheaper(int ranks) {
        List<RankSteps> sparse = train(ranks, 0.3, DistributedDgc.Exchange.SPARSE, 2);
        List<RankSteps> dense = train(ranks, 0.3, DistributedDgc.Exchange.DENSE, 2);
        List<RankSteps> auto = train(ranks, 0.6, DistributedDgc.Exchange.AUTO, 1);
        for (int step = 0; step < 2; step++) {
            for (String name : SHAPES.keySet()) {
                float[] a = sparse.get(0).averaged().get(step).get(name);
                float[] b = dense.get(0).averaged().get(step).get(name);
                for (int i = 0; i < a.length; i++) {
                    assertTrue(a[i] == b[i], name + " element " + i + ": sparse " + a[i] + " dense " + b[i]);
                }
            }
        }
        for (DistributedDgc.TensorStats s : auto.get(0).stats().get(0)) {
            if (!s.name().endsWith("bias")) {
                // 60% density: (P-1) k 8 bytes > 2 (P-1)/P n 4 bytes for every P >= 2, so the ring all-reduce wins
                assertFalse(s.sparseRoute(), s.toString());
                assertTrue(DistributedDgc.sparseBytes(ranks, s.k(), io.qkern.DType.F32) > s.wireBytesPerRank());
            }
        }
    }
}
