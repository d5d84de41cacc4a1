package io.qkern.dist.tp;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.qkern.Device;
import io.qkern.Tensor;
import io.qkern.apmm.Apmm;
import io.qkern.apmm.ApmmFormat;
import io.qkern.apmm.ApmmLinear;
import io.qkern.apmm.ApmmMatrix;
import io.qkern.dist.RankFailureException;
import io.qkern.io.SafetensorsFile;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Path;
import java.util.List;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Tensor-parallel APMM layers (forward) over in-process ranks, the weight quantized once and saved
 * packed. Column-parallel ranks quantize the same activations and compute the same elements as
 * TP = 1, so the gathered output equals TP = 1 bit for bit. Row-parallel ranks agree on each
 * token's range, so their activation codes equal TP = 1's; each rank's partial is an exact
 * integer product scaled in float64 and rounded once to float32, then the partials are summed in
 * float32: the result is within gamma(tp + 1) * sum_k |a_k w_k| (a, w the dequantized operands)
 * of the exact product, and TP = 1 (one rounding) within u |y|.
 */
class TpApmmLayersTest {
    @TempDir
    Path dir;

    static final int M = 6, K = 512, N = 40;
    static final double U = Math.ulp(1.0f) / 2;

    record Case(ApmmLinear.Spec spec, int[] tps) {}

    static final List<Case> CASES = List.of(
            new Case(new ApmmLinear.Spec(ApmmFormat.SIGNED, 4, ApmmFormat.SIGNED, 8, 0), new int[] {1, 2, 4, 8}),
            new Case(new ApmmLinear.Spec(ApmmFormat.UNSIGNED, 3, ApmmFormat.UNSIGNED, 6, 64), new int[] {1, 2, 4, 8}),
            new Case(new ApmmLinear.Spec(ApmmFormat.BIPOLAR, 2, ApmmFormat.BIPOLAR, 4, 128), new int[] {1, 2, 4}));

    /** Dequantized [rows, k] values of a quantized matrix: scale * (code - zero point). */
    static double[] dequantized(ApmmMatrix a) {
        int rows = (int) a.rows(), k = (int) a.k();
        int[] codes;
        try (Tensor c = a.codes()) {
            codes = ints(c);
        }
        float[] scales = a.scales().toFloatArray();
        int[] zeros;
        if (a.zeroPoints() != null) {
            zeros = ints(a.zeroPoints());
        } else {
            zeros = new int[scales.length];
        }
        int cols = scales.length / rows;
        long sg = a.scaleGroup();
        double[] out = new double[rows * k];
        for (int r = 0; r < rows; r++) {
            for (int j = 0; j < k; j++) {
                int s = r * cols + (sg == 0 ? 0 : (int) (j / sg));
                out[r * k + j] = (double) scales[s] * (codes[r * k + j] - zeros[s]);
            }
        }
        return out;
    }

    static int[] ints(Tensor t) {
        byte[] b = t.toByteArray();
        int[] out = new int[b.length / 4];
        ByteBuffer.wrap(b).order(ByteOrder.LITTLE_ENDIAN).asIntBuffer().get(out);
        return out;
    }

    private Path save(String name, float[] w, int n, int k, ApmmLinear.Spec spec) throws Exception {
        Path p = dir.resolve(name + ".safetensors");
        try (Tensor t = Tensor.ofFloats(w, n, k); ApmmLinear l = ApmmLinear.quantize(t, spec)) {
            l.save(p);
        }
        return p;
    }

    @Test
    void columnAndRowParallelForwardEqualTpOne() throws Exception {
        SplittableRandom rnd = new SplittableRandom(101);
        for (Case c : CASES) {
            String what = c.spec().toString();
            Path file = save("w" + c.spec().group(), TpTestData.values(N * K, rnd), N, K, c.spec());
            float[] x = TpTestData.values(M * K, rnd);
            float[] y1;
            double[] exact, abs;
            try (ApmmLinear whole = ApmmLinear.load(file, Device.CPU); Tensor tx = Tensor.ofFloats(x, M, K);
                    Tensor y = whole.forward(tx);
                    ApmmMatrix a = Apmm.quantizeActivations(tx, c.spec().activationFormat(),
                            c.spec().activationBits(), c.spec().group())) {
                y1 = y.toFloatArray();
                double[] ad = dequantized(a), wd = dequantized(whole.weight());
                exact = TpTestData.matmulT(ad, wd, null, M, K, N);
                abs = TpTestData.absMatmulT(ad, wd, M, K, N);
            }
            for (int i = 0; i < y1.length; i++) {  // TP = 1: float64 then one rounding
                assertEquals(exact[i], y1[i], U * Math.abs(exact[i]) + 1e-12 * abs[i], what + " tp 1 y[" + i + "]");
            }
            try (SafetensorsFile f = SafetensorsFile.open(file)) {
                for (int tp : c.tps()) {
                    List<float[][]> results = TpNf4LayersTest.onRanks(tp, comm -> {
                        try (ColumnParallelLinear col = ColumnParallelLinear.readApmm(f, comm,
                                ColumnParallelLinear.Output.GATHERED);
                                RowParallelLinear row = RowParallelLinear.readApmm(f, comm, RowParallelLinear.Input.FULL);
                                Tensor tx = Tensor.ofFloats(x, M, K); Tensor yc = col.forward(tx);
                                Tensor yr = row.forward(tx)) {
                            assertEquals(K / comm.size(), row.localInFeatures());
                            return new float[][] {yc.toFloatArray(), yr.toFloatArray()};
                        }
                    });
                    for (int r = 1; r < tp; r++) {
                        assertArrayEquals(results.get(0)[1], results.get(r)[1], what + " tp " + tp + " rank " + r);
                    }
                    assertArrayEquals(y1, results.get(0)[0], what + " tp " + tp + ": column-parallel y is TP = 1's");
                    float[] yr = results.get(0)[1];
                    double g = (tp + 1) * U / (1 - (tp + 1) * U);
                    for (int i = 0; i < yr.length; i++) {
                        double bound = g * abs[i] + 1e-12 * abs[i];
                        assertEquals(exact[i], yr[i], bound, what + " tp " + tp + " row-parallel y[" + i + "]");
                        assertEquals(y1[i], yr[i], bound + U * Math.abs(exact[i]), what + " tp " + tp
                                + " row-parallel y[" + i + "] vs tp 1");
                    }
                }
            }
        }
    }

    @Test
    void swigluMlpEqualsTpOne() throws Exception {
        SplittableRandom rnd = new SplittableRandom(102);
        int h = 256, inter = 512;
        ApmmLinear.Spec spec = new ApmmLinear.Spec(ApmmFormat.SIGNED, 4, ApmmFormat.SIGNED, 8, 64);
        Path gate = save("gate", TpTestData.values(inter * h, rnd), inter, h, spec);
        Path up = save("up", TpTestData.values(inter * h, rnd), inter, h, spec);
        Path down = save("down", TpTestData.values(h * inter, rnd), h, inter, spec);
        float[] x = TpTestData.values(M * h, rnd);
        // the down projection's input, as every tp computes it (column-parallel outputs are TP = 1's)
        double[] abs;
        try (ApmmLinear g = ApmmLinear.load(gate, Device.CPU); ApmmLinear u = ApmmLinear.load(up, Device.CPU);
                ApmmLinear d = ApmmLinear.load(down, Device.CPU); Tensor tx = Tensor.ofFloats(x, M, h);
                Tensor gy = g.forward(tx); Tensor uy = u.forward(tx)) {
            float[] gv = gy.toFloatArray(), uv = uy.toFloatArray(), hv = new float[gv.length];
            for (int i = 0; i < hv.length; i++) {
                hv[i] = (float) (ParallelMlp.silu(gv[i]) * uv[i]);
            }
            try (Tensor th = Tensor.ofFloats(hv, M, inter); ApmmMatrix a = Apmm.quantizeActivations(th,
                    spec.activationFormat(), spec.activationBits(), spec.group())) {
                abs = TpTestData.absMatmulT(dequantized(a), dequantized(d.weight()), M, inter, h);
            }
        }
        float[] y1 = null;
        try (SafetensorsFile fg = SafetensorsFile.open(gate); SafetensorsFile fu = SafetensorsFile.open(up);
                SafetensorsFile fd = SafetensorsFile.open(down)) {
            for (int tp : new int[] {1, 2, 4, 8}) {
                List<float[]> ys = TpNf4LayersTest.onRanks(tp, comm -> {
                    try (ParallelMlp mlp = ParallelMlp.readApmm(fg, fu, fd, comm); Tensor tx = Tensor.ofFloats(x, M, h);
                            Tensor y = mlp.forward(tx)) {
                        return y.toFloatArray();
                    }
                });
                if (tp == 1) {
                    y1 = ys.get(0);
                    continue;
                }
                double g = (tp + 2) * U / (1 - (tp + 2) * U);
                for (int i = 0; i < y1.length; i++) {
                    assertEquals(y1[i], ys.get(0)[i], 2 * g * abs[i], "tp " + tp + " MLP y[" + i + "] vs tp 1");
                }
            }
        }
    }

    @Test
    void aRankReadsOnlyItsSliceAndOddSplitsAreRefused() throws Exception {
        SplittableRandom rnd = new SplittableRandom(103);
        ApmmLinear.Spec spec = new ApmmLinear.Spec(ApmmFormat.UNSIGNED, 3, ApmmFormat.UNSIGNED, 8, 128);
        Path file = save("slices", TpTestData.values(N * K, rnd), N, K, spec);
        try (SafetensorsFile f = SafetensorsFile.open(file); ApmmLinear whole = ApmmLinear.load(file, Device.CPU)) {
            long total = 0;
            for (String part : new String[] {"planes", "sums", "scales", "zero_points"}) {
                total += f.info(part).byteSize();
            }
            int[] codes;
            try (Tensor c = whole.weight().codes()) {
                codes = ints(c);
            }
            for (int tp : new int[] {2, 4}) {
                for (int r = 0; r < tp; r++) {
                    try (var rows = ApmmSliceReader.readRowShard(f, new TpSplit(tp, r), Device.CPU);
                            var cols = ApmmSliceReader.readColumnShard(f, new TpSplit(tp, r), Device.CPU);
                            Tensor rc = rows.weight().codes(); Tensor cc = cols.weight().codes()) {
                        assertEquals(total / tp, rows.bytesRead(), "a row shard reads 1/tp of every part");
                        // planes words, group sums / scales / zero points of its K range: 1/tp of every part
                        assertEquals(total / tp, cols.bytesRead(), "a column shard reads 1/tp of every part");
                        int nl = N / tp, kl = K / tp;
                        int[] rcv = ints(rc), ccv = ints(cc);
                        for (int i = 0; i < N; i++) {
                            for (int j = 0; j < K; j++) {
                                if (i / nl == r) {
                                    assertEquals(codes[i * K + j], rcv[(i - r * nl) * K + j]);
                                }
                                if (j / kl == r) {
                                    assertEquals(codes[i * K + j], ccv[i * kl + (j - r * kl)]);
                                }
                            }
                        }
                    }
                }
            }
            // K = 512 over 8 ranks: 64 columns, not whole scale groups of 128
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> ApmmSliceReader.readColumnShard(f, new TpSplit(8, 0), Device.CPU));
            assertTrue(e.getMessage().contains("K (in_features) = 512") && e.getMessage().contains("tp = 8")
                    && e.getMessage().contains("group 128"), e.getMessage());
            RankFailureException e2 = assertThrows(RankFailureException.class, () -> TpNf4LayersTest.onRanks(3,
                    comm -> ColumnParallelLinear.readApmm(f, comm, ColumnParallelLinear.Output.SHARDED)));
            assertTrue(e2.getMessage().contains("N (out_features) = 40") && e2.getMessage().contains("tp = 3"),
                    e2.getMessage());
        }
    }
}
