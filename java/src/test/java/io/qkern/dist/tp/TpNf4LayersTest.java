package io.qkern.dist.tp;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import io.qkern.CpuPaths;
import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Qkern;
import io.qkern.Tensor;
import io.qkern.dist.Communicator;
import io.qkern.dist.DeviceMesh;
import io.qkern.dist.RankFailureException;
import io.qkern.io.SafetensorsFile;
import io.qkern.nf4.Nf4Tensor;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Tensor-parallel NF4 layers over in-process ranks: TP = 2, 4, 8 equal TP = 1, and both equal a
 * float64 computation over the dequantized weights, within a float32 error bound.
 *
 * <p>The bound (Higham, "Accuracy and Stability of Numerical Algorithms", eq. 3.5): a dot
 * product of n float32 terms, summed in ANY order, with every product and addition rounded, is
 * off by at most gamma(n+1) * sum |x_i w_i|, gamma(n) = n u / (1 - n u), u = 2^-24. A TP rank's
 * partial is such a sum over K/tp terms, and the all-reduce adds tp-1 partials and rank 0's bias,
 * so the whole result is one sum of K + tp + 1 rounded terms: the bound is gamma(K + tp + 2) *
 * sum |x_i w_i| against the float64 value, and twice that between TP = tp and TP = 1. For the MLP
 * the same bound is carried through the SiLU gate to first order (see {@link #mlpBounds}). The
 * bounds are worst-case: they hold for every summation order a kernel or backend may choose.
 */
class TpNf4LayersTest {
    @TempDir
    Path dir;

    static final int M = 5, K = 512, N = 96, BS = 64;
    static final int[] TPS = {1, 2, 4, 8};
    static final double U = Math.ulp(1.0f) / 2;

    static double gamma(long n) {
        return n * U / (1 - n * U);
    }

    /** Runs {@code body} on tp in-process ranks and returns their results. */
    static <T> List<T> onRanks(int tp, DeviceMesh.RankBody<T> body) {
        DeviceMesh mesh = DeviceMesh.cpu(tp);
        List<Communicator> comms = mesh.inProcess(Duration.ofSeconds(60));
        try {
            return mesh.run(comms, body);
        } finally {
            comms.forEach(Communicator::close);
        }
    }

    static double[] dequantized(SafetensorsFile f, String name) throws Exception {
        try (Nf4Tensor w = Nf4Tensor.read(f, name, Device.CPU); Tensor d = w.dequantize(DType.F32)) {
            return TpTestData.widen(d.toFloatArray());
        }
    }

    /** Asserts |got - ref| <= bound elementwise. */
    static void assertWithin(double[] ref, float[] got, double[] bound, String what) {
        assertEquals(ref.length, got.length, what + ": length");
        for (int i = 0; i < ref.length; i++) {
            double err = Math.abs(got[i] - ref[i]);
            if (!(err <= bound[i])) {
                fail(what + "[" + i + "]: " + got[i] + " vs " + ref[i] + ", error " + err + " > bound " + bound[i]);
            }
        }
    }

    static double[] scaled(double[] a, double s) {
        double[] out = new double[a.length];
        for (int i = 0; i < a.length; i++) {
            out[i] = a[i] * s;
        }
        return out;
    }

    @Test
    void columnAndRowParallelLinearEqualTpOneAndTheFloat64Reference() throws Exception {
        for (String path : CpuPaths.available()) {
            String before = Qkern.cpuPath();
            Qkern.setCpuPath(path);
            try {
                for (boolean dq : new boolean[] {false, true}) {
                    linearLayers(path + (dq ? " double-quant" : ""), dq, new SplittableRandom(path.hashCode() + (dq ? 1 : 0)));
                }
            } finally {
                Qkern.setCpuPath(before);
            }
        }
    }

    private void linearLayers(String what, boolean dq, SplittableRandom rnd) throws Exception {
        float[] wc = TpTestData.values(N * K, rnd), bc = TpTestData.values(N, rnd);  // column-parallel [N, K]
        float[] wr = TpTestData.values(N * K, rnd), br = TpTestData.values(N, rnd);  // row-parallel [N, K]
        Path file = dir.resolve("lin-" + dq + ".safetensors");
        TpTestData.write(file, (w, keep) -> {
            TpTestData.addNf4(w, "col.weight", wc, N, K, BS, dq, keep);
            TpTestData.addF32(w, "col.bias", bc, keep, N);
            TpTestData.addNf4(w, "row.weight", wr, N, K, BS, dq, keep);
            TpTestData.addF32(w, "row.bias", br, keep, N);
        });
        float[] x = TpTestData.values(M * K, rnd), dy = TpTestData.values(M * N, rnd);
        double[] xd = TpTestData.widen(x), dyd = TpTestData.widen(dy);
        try (SafetensorsFile f = SafetensorsFile.open(file)) {
            double[] colW = dequantized(f, "col.weight"), rowW = dequantized(f, "row.weight");
            double[] yRefC = TpTestData.matmulT(xd, colW, TpTestData.widen(bc), M, K, N);
            double[] yRefR = TpTestData.matmulT(xd, rowW, TpTestData.widen(br), M, K, N);
            double[] dxRefC = TpTestData.matmul(dyd, colW, M, N, K);
            double[] dxRefR = TpTestData.matmul(dyd, rowW, M, N, K);
            double[] absYC = TpTestData.absMatmulT(xd, colW, M, K, N);
            double[] absYR = TpTestData.absMatmulT(xd, rowW, M, K, N);
            double[] absDxC = TpTestData.absMatmulT(dyd, transpose(colW, N, K), M, N, K);
            double[] absDxR = TpTestData.absMatmulT(dyd, transpose(rowW, N, K), M, N, K);
            for (int i = 0; i < N * M; i++) {  // the bias is one more term of the sum
                absYC[i] += Math.abs(bc[i % N]);
                absYR[i] += Math.abs(br[i % N]);
            }
            float[][] tp1 = null;
            for (int tp : TPS) {
                String at = what + " tp " + tp;
                List<float[][]> results = onRanks(tp, comm -> {
                    try (ColumnParallelLinear colG = ColumnParallelLinear.readNf4(f, "col", comm,
                            ColumnParallelLinear.Output.GATHERED);
                            ColumnParallelLinear colS = ColumnParallelLinear.readNf4(f, "col", comm,
                                    ColumnParallelLinear.Output.SHARDED);
                            RowParallelLinear rowF = RowParallelLinear.readNf4(f, "row", comm,
                                    RowParallelLinear.Input.FULL);
                            RowParallelLinear rowS = RowParallelLinear.readNf4(f, "row", comm,
                                    RowParallelLinear.Input.SHARDED);
                            Tensor tx = Tensor.ofFloats(x, M, K); Tensor tdy = Tensor.ofFloats(dy, M, N);
                            Tensor yCG = colG.forward(tx); Tensor yCS = colS.forward(tx);
                            Tensor dxCG = colG.backwardInput(tdy);
                            Tensor dyShard = Layout.columns(tdy, colS.outBegin(), colS.outBegin() + colS.localOutFeatures());
                            Tensor dxCS = colS.backwardInput(dyShard);
                            Tensor yRF = rowF.forward(tx);
                            Tensor xShard = Layout.columns(tx, rowS.inBegin(), rowS.inBegin() + rowS.localInFeatures());
                            Tensor yRS = rowS.forward(xShard);
                            Tensor dxRF = rowF.backwardInput(tdy); Tensor dxRS = rowS.backwardInput(tdy)) {
                        assertArrayEquals(new long[] {M, N / comm.size()}, yCS.shape());
                        assertArrayEquals(new long[] {M, K / comm.size()}, dxRS.shape());
                        return new float[][] {yCG.toFloatArray(), yCS.toFloatArray(), dxCG.toFloatArray(),
                                dxCS.toFloatArray(), yRF.toFloatArray(), yRS.toFloatArray(), dxRF.toFloatArray(),
                                dxRS.toFloatArray()};
                    }
                });
                float[][] r0 = results.get(0);
                for (int r = 0; r < tp; r++) {
                    float[][] mine = results.get(r);
                    // replicated outputs are bit-identical on every rank (the Communicator contract)
                    for (int o : new int[] {0, 2, 3, 4, 5, 6}) {
                        assertArrayEquals(r0[o], mine[o], at + ": output " + o + " differs between rank 0 and " + r);
                    }
                    // a gather is exact: the gathered y holds every rank's sharded columns bit for bit, as dx does
                    int nl = N / tp, kl = K / tp;
                    for (int i = 0; i < M; i++) {
                        for (int j = 0; j < nl; j++) {
                            assertEquals(Float.floatToRawIntBits(r0[0][i * N + r * nl + j]),
                                    Float.floatToRawIntBits(mine[1][i * nl + j]), at + ": gathered y vs rank " + r);
                        }
                        for (int j = 0; j < kl; j++) {
                            assertEquals(Float.floatToRawIntBits(r0[6][i * K + r * kl + j]),
                                    Float.floatToRawIntBits(mine[7][i * kl + j]), at + ": gathered dx vs rank " + r);
                        }
                    }
                }
                double[] bY = scaled(absYC, gamma(K + tp + 2)), bYR = scaled(absYR, gamma(K + tp + 2));
                double[] bDx = scaled(absDxC, gamma(N + tp + 1)), bDxR = scaled(absDxR, gamma(N + tp + 1));
                assertWithin(yRefC, r0[0], bY, at + " column-parallel y");
                assertWithin(dxRefC, r0[2], bDx, at + " column-parallel dx (gathered dy)");
                assertWithin(dxRefC, r0[3], bDx, at + " column-parallel dx (sharded dy)");
                assertWithin(yRefR, r0[4], bYR, at + " row-parallel y (full x)");
                assertWithin(yRefR, r0[5], bYR, at + " row-parallel y (sharded x)");
                assertWithin(dxRefR, r0[6], bDxR, at + " row-parallel dx");
                if (tp == 1) {
                    tp1 = r0;
                } else {
                    double[] t1;
                    assertWithin(TpTestData.widen(tp1[0]), r0[0], scaled(bY, 2), at + " column y vs tp 1");
                    assertWithin(TpTestData.widen(tp1[2]), r0[2], scaled(bDx, 2), at + " column dx vs tp 1");
                    assertWithin(TpTestData.widen(tp1[4]), r0[4], scaled(bYR, 2), at + " row y vs tp 1");
                    t1 = TpTestData.widen(tp1[6]);
                    assertWithin(t1, r0[6], scaled(bDxR, 2), at + " row dx vs tp 1");
                    // splitting N changes no sum: each column's dot product is the same kernel work
                    assertArrayEquals(tp1[0], r0[0], at + ": column-parallel y should equal tp 1 bit for bit");
                }
            }
        }
    }

    static double[] transpose(double[] a, int rows, int cols) {
        double[] t = new double[a.length];
        for (int i = 0; i < rows; i++) {
            for (int j = 0; j < cols; j++) {
                t[j * rows + i] = a[i * cols + j];
            }
        }
        return t;
    }

    static final int H = 256, I = 512;

    @Test
    void swigluMlpForwardAndBackwardEqualTpOneAndTheFloat64Reference() throws Exception {
        SplittableRandom rnd = new SplittableRandom(91);
        float[] wg = TpTestData.values(I * H, rnd), wu = TpTestData.values(I * H, rnd), wd = TpTestData.values(H * I, rnd);
        for (int i = 0; i < wg.length; i++) {  // keep pre-activations O(1) so the gate is not saturated
            wg[i] *= 0.1f;
            wu[i] *= 0.1f;
            wd[i] *= 0.1f;
        }
        Path file = dir.resolve("mlp.safetensors");
        TpTestData.write(file, (w, keep) -> {
            TpTestData.addNf4(w, "mlp.gate_proj.weight", wg, I, H, BS, true, keep);
            TpTestData.addNf4(w, "mlp.up_proj.weight", wu, I, H, BS, false, keep);
            TpTestData.addNf4(w, "mlp.down_proj.weight", wd, H, I, BS, true, keep);
        });
        float[] x = TpTestData.values(M * H, rnd), dy = TpTestData.values(M * H, rnd);
        try (SafetensorsFile f = SafetensorsFile.open(file)) {
            double[] g = dequantized(f, "mlp.gate_proj.weight"), u = dequantized(f, "mlp.up_proj.weight"),
                    d = dequantized(f, "mlp.down_proj.weight");
            double[][] ref = mlpReference(TpTestData.widen(x), TpTestData.widen(dy), g, u, d);
            float[][] tp1 = null;
            for (int tp : TPS) {
                List<float[][]> results = onRanks(tp, comm -> {
                    try (ParallelMlp mlp = ParallelMlp.readNf4(f, "mlp", comm); Tensor tx = Tensor.ofFloats(x, M, H);
                            Tensor tdy = Tensor.ofFloats(dy, M, H); ParallelMlp.Saved s = mlp.forwardForBackward(tx);
                            Tensor dx = mlp.backwardInput(s, tdy); Tensor y2 = mlp.forward(tx)) {
                        assertEquals(I, mlp.intermediateFeatures());
                        assertArrayEquals(s.output().toFloatArray(), y2.toFloatArray(), "forward is deterministic");
                        return new float[][] {s.output().toFloatArray(), dx.toFloatArray()};
                    }
                });
                for (int r = 1; r < tp; r++) {
                    assertArrayEquals(results.get(0)[0], results.get(r)[0], "tp " + tp + ": y on rank " + r);
                    assertArrayEquals(results.get(0)[1], results.get(r)[1], "tp " + tp + ": dx on rank " + r);
                }
                float[][] got = results.get(0);
                double[][] bounds = mlpBounds(ref, tp);
                assertWithin(ref[0], got[0], bounds[0], "tp " + tp + " MLP y");
                assertWithin(ref[1], got[1], bounds[1], "tp " + tp + " MLP dx");
                if (tp == 1) {
                    tp1 = got;
                } else {
                    assertWithin(TpTestData.widen(tp1[0]), got[0], scaled(bounds[0], 2), "tp " + tp + " MLP y vs tp 1");
                    assertWithin(TpTestData.widen(tp1[1]), got[1], scaled(bounds[1], 2), "tp " + tp + " MLP dx vs tp 1");
                }
            }
        }
    }

    /**
     * float64 SwiGLU MLP: {y, dx, then the magnitudes the bound needs}: |x||Wg|, |x||Wu|, the
     * pre-activations g and u, |dy||Wd|, dh, and the weights.
     */
    private static double[][] mlpReference(double[] x, double[] dy, double[] wg, double[] wu, double[] wd) {
        double[] g = TpTestData.matmulT(x, wg, null, M, H, I), u = TpTestData.matmulT(x, wu, null, M, H, I);
        double[] h = new double[M * I];
        for (int i = 0; i < h.length; i++) {
            h[i] = ParallelMlp.silu(g[i]) * u[i];
        }
        double[] y = TpTestData.matmulT(h, wd, null, M, I, H);
        double[] dh = TpTestData.matmul(dy, wd, M, H, I);
        double[] dg = new double[M * I], du = new double[M * I];
        for (int i = 0; i < dh.length; i++) {
            double s = 1 / (1 + Math.exp(-g[i]));
            dg[i] = dh[i] * u[i] * s * (1 + g[i] * (1 - s));
            du[i] = dh[i] * g[i] * s;
        }
        double[] dx = TpTestData.matmul(dg, wg, M, I, H);
        double[] dxu = TpTestData.matmul(du, wu, M, I, H);
        for (int i = 0; i < dx.length; i++) {
            dx[i] += dxu[i];
        }
        return new double[][] {y, dx, x, dy, wg, wu, wd, g, u, h, dh, dg, du};
    }

    /**
     * First-order float32 error bounds for the MLP, per output: every matmul's own rounding
     * (gamma(n) * sum |a b|, n its length plus tp for the reduction), plus the rounding of each
     * element-wise result (u |v|), plus the upstream errors carried through the derivatives, using
     * |silu'| <= 1.1 and |d/dg (silu'(g))| <= 0.5 everywhere. Second-order terms are below u^2.
     */
    private static double[][] mlpBounds(double[][] ref, int tp) {
        double[] x = ref[2], dy = ref[3], wg = ref[4], wu = ref[5], wd = ref[6], g = ref[7], u = ref[8], h = ref[9],
                dh = ref[10], dg = ref[11], du = ref[12];
        double gH = gamma(H + 2), gI = gamma(I + tp + 2);
        double[] eg = scaled(TpTestData.absMatmulT(x, wg, M, H, I), gH);
        double[] eu = scaled(TpTestData.absMatmulT(x, wu, M, H, I), gH);
        double[] eh = new double[M * I], absH = new double[M * I];
        for (int i = 0; i < eh.length; i++) {
            double s = 1 / (1 + Math.exp(-g[i]));
            eh[i] = 1.1 * Math.abs(u[i]) * eg[i] + Math.abs(g[i] * s) * eu[i] + 2 * U * Math.abs(h[i]);
            absH[i] = Math.abs(h[i]);
        }
        double[] absWd = abs(wd);
        double[] ey = add(scaled(TpTestData.absMatmulT(absH, absWd, M, I, H), gI),
                TpTestData.absMatmulT(eh, absWd, M, I, H));
        // backward: dh = dy Wd (local, n = H), then the gate's derivative, then dx = dgu Wgu (n = 2I + tp)
        double[] edh = scaled(TpTestData.absMatmulT(dy, transpose(absWd, H, I), M, H, I), gamma(H + 1));
        double[] edg = new double[M * I], edu = new double[M * I], absDg = new double[M * I], absDu = new double[M * I];
        for (int i = 0; i < edg.length; i++) {
            double s = 1 / (1 + Math.exp(-g[i]));
            double dsilu = s * (1 + g[i] * (1 - s));
            edg[i] = Math.abs(u[i] * dsilu) * edh[i] + Math.abs(dh[i]) * (0.5 * Math.abs(u[i]) * eg[i] + 1.1 * eu[i])
                    + 2 * U * Math.abs(dg[i]);
            edu[i] = Math.abs(g[i] * s) * edh[i] + Math.abs(dh[i]) * 1.1 * eg[i] + 2 * U * Math.abs(du[i]);
            absDg[i] = Math.abs(dg[i]);
            absDu[i] = Math.abs(du[i]);
        }
        double gDx = gamma(2L * I + tp + 2);
        double[] absWgT = transpose(abs(wg), I, H), absWuT = transpose(abs(wu), I, H);
        double[] edx = add(add(scaled(add(TpTestData.absMatmulT(absDg, absWgT, M, I, H),
                TpTestData.absMatmulT(absDu, absWuT, M, I, H)), gDx), TpTestData.absMatmulT(edg, absWgT, M, I, H)),
                TpTestData.absMatmulT(edu, absWuT, M, I, H));
        return new double[][] {ey, edx};
    }

    private static double[] abs(double[] a) {
        double[] out = new double[a.length];
        for (int i = 0; i < a.length; i++) {
            out[i] = Math.abs(a[i]);
        }
        return out;
    }

    private static double[] add(double[] a, double[] b) {
        double[] out = new double[a.length];
        for (int i = 0; i < a.length; i++) {
            out[i] = a[i] + b[i];
        }
        return out;
    }

    @Test
    void splitsThatDoNotDivideFailOnEveryRankWithTheReason() throws Exception {
        SplittableRandom rnd = new SplittableRandom(92);
        float[] w = TpTestData.values(24 * 192, rnd);
        Path file = dir.resolve("odd.safetensors");
        TpTestData.write(file, (wr, keep) -> TpTestData.addNf4(wr, "odd.weight", w, 24, 192, 64, false, keep));
        try (SafetensorsFile f = SafetensorsFile.open(file)) {
            // K = 192 over 4 ranks: 48 columns each, not whole blocks of 64
            RankFailureException e = assertThrows(RankFailureException.class, () -> onRanks(4,
                    comm -> RowParallelLinear.readNf4(f, "odd", comm, RowParallelLinear.Input.SHARDED)));
            assertTrue(e.getMessage().contains("K (in_features) = 192") && e.getMessage().contains("tp = 4")
                    && e.getMessage().contains("blocksize 64"), e.getMessage());
            // N = 24 over 16 ranks does not divide
            RankFailureException e2 = assertThrows(RankFailureException.class, () -> onRanks(16,
                    comm -> ColumnParallelLinear.readNf4(f, "odd", comm, ColumnParallelLinear.Output.SHARDED)));
            assertTrue(e2.getMessage().contains("N (out_features) = 24") && e2.getMessage().contains("tp = 16"),
                    e2.getMessage());
        }
    }

    @Test
    void fullInputsOfTheWrongWidthFailWithTheShape() throws Exception {
        SplittableRandom rnd = new SplittableRandom(93);
        float[] w = TpTestData.values(24 * 128, rnd);
        Path file = dir.resolve("shape.safetensors");
        TpTestData.write(file, (wr, keep) -> TpTestData.addNf4(wr, "l.weight", w, 24, 128, 64, false, keep));
        try (SafetensorsFile f = SafetensorsFile.open(file)) {
            RankFailureException e = assertThrows(RankFailureException.class, () -> onRanks(2, comm -> {
                try (RowParallelLinear row = RowParallelLinear.readNf4(f, "l", comm, RowParallelLinear.Input.FULL);
                        Tensor x = Tensor.allocate(DType.F32, Device.CPU, 3, 127)) {
                    return row.forward(x);
                }
            }));
            assertTrue(e.getMessage().contains("x has shape [3, 127], expected [M, 128] (the whole input)"),
                    e.getMessage());
            RankFailureException e2 = assertThrows(RankFailureException.class, () -> onRanks(2, comm -> {
                try (ColumnParallelLinear col = ColumnParallelLinear.readNf4(f, "l", comm,
                        ColumnParallelLinear.Output.GATHERED); Tensor dy = Tensor.allocate(DType.F32, Device.CPU, 3, 12)) {
                    return col.backwardInput(dy);
                }
            }));
            assertTrue(e2.getMessage().contains("dy has shape [3, 12], expected [M, 24]"), e2.getMessage());
        }
    }
}
