package io.qkern.dist.tp;

import io.qkern.DType;
import io.qkern.Tensor;
import io.qkern.io.SafetensorsWriter;
import io.qkern.nf4.Nf4;
import io.qkern.nf4.Nf4Tensor;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;

/** Random weights written to safetensors files, and float64 references, for the TP tests. */
final class TpTestData {
    private TpTestData() {}

    /** Normal-ish values (sum of uniforms) with a few larger outliers, like trained weights. */
    static float[] values(int n, SplittableRandom rnd) {
        float[] v = new float[n];
        for (int i = 0; i < n; i++) {
            double x = rnd.nextDouble() + rnd.nextDouble() + rnd.nextDouble() - 1.5;
            v[i] = (float) (rnd.nextInt(50) == 0 ? 4 * x : x);
        }
        return v;
    }

    /** A dense row-major [rows, cols] sub-matrix. */
    static float[] slice(float[] m, int cols, int r0, int r1, int c0, int c1) {
        float[] out = new float[(r1 - r0) * (c1 - c0)];
        for (int r = r0; r < r1; r++) {
            System.arraycopy(m, r * cols + c0, out, (r - r0) * (c1 - c0), c1 - c0);
        }
        return out;
    }

    /**
     * Quantizes W [n, k] to NF4 and adds it (with its companions) to {@code writer}; what must stay
     * open until the writer has written goes into {@code keep}.
     */
    static void addNf4(SafetensorsWriter writer, String name, float[] w, int n, int k, int blocksize,
            boolean doubleQuant, List<AutoCloseable> keep) {
        try (Tensor dense = Tensor.ofFloats(w, n, k)) {
            Nf4Tensor q = Nf4.quantize(name, dense, new Nf4.Options(blocksize, doubleQuant));
            keep.add(q);
            keep.addAll(q.addTo(writer, name));
        }
    }

    static void addF32(SafetensorsWriter writer, String name, float[] v, List<AutoCloseable> keep, long... shape) {
        Tensor t = Tensor.ofFloats(v, shape);
        keep.add(t);
        writer.add(name, DType.F32, shape, t.segment());
    }

    /** Builds a file with {@code adds}, then closes what they kept open. */
    static void write(Path file, Adds adds) throws Exception {
        List<AutoCloseable> keep = new ArrayList<>();
        try {
            SafetensorsWriter w = SafetensorsWriter.create(file);
            adds.add(w, keep);
            w.write();
        } finally {
            for (AutoCloseable c : keep.reversed()) {
                c.close();
            }
        }
    }

    interface Adds {
        void add(SafetensorsWriter writer, List<AutoCloseable> keep);
    }

    /** y[m, n] = sum_k x[m, k] w[n, k] (+ b[n]) in float64. */
    static double[] matmulT(double[] x, double[] w, double[] b, int m, int k, int n) {
        double[] y = new double[m * n];
        for (int i = 0; i < m; i++) {
            for (int j = 0; j < n; j++) {
                double s = b == null ? 0 : b[j];
                for (int t = 0; t < k; t++) {
                    s += x[i * k + t] * w[j * k + t];
                }
                y[i * n + j] = s;
            }
        }
        return y;
    }

    /** dx[m, k] = sum_n dy[m, n] w[n, k] in float64. */
    static double[] matmul(double[] dy, double[] w, int m, int n, int k) {
        double[] dx = new double[m * k];
        for (int i = 0; i < m; i++) {
            for (int j = 0; j < n; j++) {
                double g = dy[i * n + j];
                for (int t = 0; t < k; t++) {
                    dx[i * k + t] += g * w[j * k + t];
                }
            }
        }
        return dx;
    }

    static double[] widen(float[] v) {
        double[] d = new double[v.length];
        for (int i = 0; i < v.length; i++) {
            d[i] = v[i];
        }
        return d;
    }

    /** sum_k |a[m, k]| |w[n, k]| per output: the scale of a dot product's float32 rounding error. */
    static double[] absMatmulT(double[] x, double[] w, int m, int k, int n) {
        double[] y = new double[m * n];
        for (int i = 0; i < m; i++) {
            for (int j = 0; j < n; j++) {
                double s = 0;
                for (int t = 0; t < k; t++) {
                    s += Math.abs(x[i * k + t] * w[j * k + t]);
                }
                y[i * n + j] = s;
            }
        }
        return y;
    }
}
