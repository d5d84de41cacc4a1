package io.qkern.nf4;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Tensor;
import io.qkern.io.SafetensorsFile;
import io.qkern.io.SafetensorsWriter;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@link Nf4Linear} end to end: layers loaded by name from a bitsandbytes-layout safetensors file
 * (with and without double quantization, with a BF16 bias), and a two-layer MLP whose NF4
 * forward and backward match the dense float64 computation over the dequantized weights.
 */
class Nf4LinearTest {
    @TempDir
    Path dir;

    static final int IN = 96, HIDDEN = 200, OUT = 37, BATCH = 5;

    @Test
    void twoLayerMlpForwardAndBackwardMatchTheDenseComputation() throws Exception {
        SplittableRandom rnd = new SplittableRandom(11);
        Path file = dir.resolve("mlp.safetensors");
        float[] b1 = Nf4MatmulTest.values(HIDDEN, DType.BF16, rnd);
        float[] b2 = Nf4MatmulTest.values(OUT, DType.F32, rnd);
        List<Tensor> keep = new ArrayList<>();
        SafetensorsWriter writer = SafetensorsWriter.create(file);
        try (Nf4Tensor w1 = quantize(HIDDEN, IN, 64, true, rnd); Nf4Tensor w2 = quantize(OUT, HIDDEN, 128, false, rnd);
                Tensor tb1 = Nf4MatmulTest.tensor(b1, DType.BF16, HIDDEN); Tensor tb2 = Tensor.ofFloats(b2, OUT)) {
            keep.addAll(w1.addTo(writer, "mlp.up.weight"));
            keep.addAll(w2.addTo(writer, "mlp.down.weight"));
            writer.add("mlp.up.bias", DType.BF16, new long[] {HIDDEN}, tb1.segment());
            writer.add("mlp.down.bias", DType.F32, new long[] {OUT}, tb2.segment());
            writer.write();
        } finally {
            keep.forEach(Tensor::close);
        }

        try (SafetensorsFile f = SafetensorsFile.open(file);
                Nf4Linear up = Nf4Linear.read(f, "mlp.up", Device.CPU);
                Nf4Linear down = Nf4Linear.read(f, "mlp.down", Device.CPU)) {
            assertEquals(IN, up.inFeatures());
            assertEquals(HIDDEN, up.outFeatures());
            assertTrue(up.weight().isDoubleQuantized());
            double[] w1 = dense(up.weight()), w2 = dense(down.weight());

            float[] x = Nf4MatmulTest.values(BATCH * IN, DType.F32, rnd);
            float[] g = Nf4MatmulTest.values(BATCH * OUT, DType.F32, rnd);  // dL/dy of some loss
            // float64 reference: h = relu(x W1^T + b1), y = h W2^T + b2; dL/dh = g W2; dL/dx = (dL/dh * relu') W1
            double[] pre = matmulT(x, w1, b1, BATCH, IN, HIDDEN);
            double[] h = new double[pre.length];
            for (int i = 0; i < h.length; i++) {
                h[i] = Math.max(0, pre[i]);
            }
            double[] y = matmulT(h, w2, b2, BATCH, HIDDEN, OUT);
            double[] dh = matmul(g, w2, BATCH, OUT, HIDDEN);
            for (int i = 0; i < dh.length; i++) {
                dh[i] = pre[i] > 0 ? dh[i] : 0;
            }
            double[] dx = matmul(dh, w1, BATCH, HIDDEN, IN);

            try (Tensor tx = Tensor.ofFloats(x, BATCH, IN); Tensor tPre = up.forward(tx)) {
                float[] preQ = tPre.toFloatArray();
                float[] hQ = new float[preQ.length];
                for (int i = 0; i < hQ.length; i++) {
                    hQ[i] = Math.max(0, preQ[i]);
                }
                try (Tensor th = Tensor.ofFloats(hQ, BATCH, HIDDEN); Tensor ty = down.forward(th);
                        Tensor tg = Tensor.ofFloats(g, BATCH, OUT); Tensor tdh = down.backwardInput(tg)) {
                    assertClose(y, ty.toFloatArray(), "y");
                    float[] dhQ = tdh.toFloatArray();
                    for (int i = 0; i < dhQ.length; i++) {
                        dhQ[i] = preQ[i] > 0 ? dhQ[i] : 0;
                    }
                    try (Tensor tdhm = Tensor.ofFloats(dhQ, BATCH, HIDDEN); Tensor tdx = up.backwardInput(tdhm)) {
                        assertClose(dx, tdx.toFloatArray(), "dx");
                    }
                }
            }
        }
    }

    @Test
    void missingOrUnquantizedWeightsAreNamed() throws Exception {
        Path file = dir.resolve("plain.safetensors");
        try (Tensor t = Tensor.ofFloats(new float[] {1, 2, 3, 4}, 2, 2)) {
            SafetensorsWriter.create(file).add("lin.weight", DType.F32, new long[] {2, 2}, t.segment()).write();
        }
        try (SafetensorsFile f = SafetensorsFile.open(file)) {
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> Nf4Linear.read(f, "lin", Device.CPU));
            assertTrue(e.getMessage().contains("\"lin.weight\" (it is stored unquantized)"), e.getMessage());
            e = assertThrows(IllegalArgumentException.class, () -> Nf4Linear.read(f, "other", Device.CPU));
            assertTrue(e.getMessage().contains("no NF4 tensor \"other.weight\""), e.getMessage());
        }
    }

    @Test
    void closeIsIdempotentAndCallsAfterCloseFailCleanly() {
        SplittableRandom rnd = new SplittableRandom(5);
        Nf4Tensor w = quantize(8, 64, 64, true, rnd);
        Nf4Linear layer = Nf4Linear.of(w, null);
        layer.close();
        layer.close();
        try (Tensor x = Tensor.ofFloats(new float[64], 1, 64)) {
            assertThrows(IllegalStateException.class, () -> layer.forward(x));
        }
        w.close();
    }

    // a mixed-up layer would be caught by the MLP test only through its numbers; the relative
    // tolerance covers float32 summation over the widest reduction (HIDDEN terms) with margin
    private static void assertClose(double[] ref, float[] got, String what) {
        assertEquals(ref.length, got.length, what + " length");
        double scale = 0;
        for (double v : ref) {
            scale = Math.max(scale, Math.abs(v));
        }
        for (int i = 0; i < ref.length; i++) {
            double tol = 1e-5 * scale;
            if (Math.abs(got[i] - ref[i]) > tol) {
                throw new AssertionError(what + "[" + i + "] = " + got[i] + ", float64 reference " + ref[i]
                        + " (tolerance " + tol + ")");
            }
        }
    }

    private static Nf4Tensor quantize(int n, int k, int blocksize, boolean dq, SplittableRandom rnd) {
        float[] v = new float[n * k];
        for (int i = 0; i < v.length; i++) {
            v[i] = (float) (rnd.nextGaussian() * 0.1);
        }
        try (Tensor t = Tensor.ofFloats(v, n, k)) {
            return Nf4.quantize("w", t, new Nf4.Options(blocksize, dq));
        }
    }

    private static double[] dense(Nf4Tensor w) {
        float[] f = Nf4.dequantize(w, DType.F32).toFloatArray();
        double[] d = new double[f.length];
        for (int i = 0; i < f.length; i++) {
            d[i] = f[i];
        }
        return d;
    }

    private static double[] matmulT(float[] x, double[] w, float[] b, int m, int k, int n) {
        double[] xd = new double[x.length];
        for (int i = 0; i < x.length; i++) {
            xd[i] = x[i];
        }
        return matmulT(xd, w, b, m, k, n);
    }

    /** x [m,k] W^T with W [n,k], plus b [n]. */
    private static double[] matmulT(double[] x, double[] w, float[] b, int m, int k, int n) {
        double[] y = new double[m * n];
        for (int i = 0; i < m; i++) {
            for (int r = 0; r < n; r++) {
                double s = b[r];
                for (int c = 0; c < k; c++) {
                    s += x[i * k + c] * w[r * k + c];
                }
                y[i * n + r] = s;
            }
        }
        return y;
    }

    /** g [m,n] W with W [n,k]. */
    private static double[] matmul(float[] g, double[] w, int m, int n, int k) {
        double[] gd = new double[g.length];
        for (int i = 0; i < g.length; i++) {
            gd[i] = g[i];
        }
        return matmul(gd, w, m, n, k);
    }

    private static double[] matmul(double[] g, double[] w, int m, int n, int k) {
        double[] out = new double[m * k];
        for (int i = 0; i < m; i++) {
            for (int r = 0; r < n; r++) {
                for (int c = 0; c < k; c++) {
                    out[i * k + c] += g[i * n + r] * w[r * k + c];
                }
            }
        }
        return out;
    }
}
