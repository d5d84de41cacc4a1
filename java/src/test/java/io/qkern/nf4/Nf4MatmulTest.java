package io.qkern.nf4;

import io.qkern.CpuPaths;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Qkern;
import io.qkern.QkernException;
import io.qkern.Tensor;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import java.util.stream.Stream;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * The fused NF4 matmul (forward and input gradient) on every CPU path this machine has, against
 * a float64 reference over the dequantized weights, on fresh random inputs.
 *
 * <p>Tolerance. The kernels multiply and add in float32 in their own blocked order. Rounding
 * errors of a K-term float32 sum behave like a random walk: |err| stays below
 * 4 sqrt(K+1) u sum|x_k W_k| (u = 2^-24) with a wide margin, where one dropped, doubled or
 * mis-scaled term (about sum/K) would not. F16 / BF16 outputs add their own rounding: half an ulp,
 * |ref| 2^-11 (F16) or |ref| 2^-8 (BF16), plus 2^-25 for F16 subnormals. Inputs in F16 / BF16 are
 * exact in float32, so the reference uses the same values.
 */
class Nf4MatmulTest {
    private static final String START_PATH = Qkern.cpuPath();

    @AfterAll
    static void restorePath() {
        Qkern.setCpuPath(START_PATH);
    }

    /** W [n, k], blocksize, double quantization. K not a multiple of 64 or of the blocksize, odd K, odd N. */
    record Shape(int n, int k, int blocksize, boolean doubleQuant) {
        @Override
        public String toString() {
            return n + "x" + k + "/bs" + blocksize + (doubleQuant ? "/dq" : "");
        }
    }

    static final List<Shape> SHAPES = List.of(new Shape(64, 128, 64, false), new Shape(33, 200, 64, true),
            new Shape(17, 77, 32, false), new Shape(96, 512, 128, true), new Shape(7, 4096, 4096, false),
            new Shape(130, 320, 256, false), new Shape(1, 1, 64, false), new Shape(51, 1000, 64, false),
            new Shape(37, 8256, 128, false));
    static final int[] ROWS = {1, 3, 8, 16, 64};

    static Stream<Arguments> pathsAndShapes() {
        List<Arguments> out = new ArrayList<>();
        for (String p : CpuPaths.available()) {
            for (Shape s : SHAPES) {
                out.add(Arguments.of(p, s));
            }
        }
        return out.stream();
    }

    @ParameterizedTest(name = "{0} {1}")
    @MethodSource("pathsAndShapes")
    void forwardAndInputGradMatchFloat64(String path, Shape shape) {
        Qkern.setCpuPath(path);
        SplittableRandom rnd = new SplittableRandom(shape.hashCode() * 31L + path.hashCode());
        try (Weight w = Weight.random(shape, rnd)) {
            for (int m : ROWS) {
                for (DType in : List.of(DType.F32, DType.F16, DType.BF16)) {
                    for (DType out : in == DType.F32 ? List.of(DType.F32) : List.of(DType.F32, in)) {
                        boolean withBias = (m + in.ordinal()) % 2 == 1;
                        checkForward(w, m, in, out, withBias, rnd, path);
                        checkInputGrad(w, m, in, out, rnd, path);
                    }
                }
            }
        }
    }

    private static void checkForward(Weight w, int m, DType in, DType out, boolean withBias, SplittableRandom rnd,
            String path) {
        int n = w.shape.n, k = w.shape.k;
        float[] x = values(m * k, in, rnd);
        float[] bias = withBias ? values(n, DType.F32, rnd) : null;
        try (Tensor tx = tensor(x, in, m, k); Tensor tb = bias == null ? null : tensor(bias, DType.F32, n);
                Tensor ty = Tensor.allocate(out, Device.CPU, m, n)) {
            ty.fillBytes(0xFF);  // NaN in every float format: an unwritten element fails the check
            Nf4Matmul.forwardInto(tx, w.q, w.absmax, tb, ty);
            float[] y = ty.toFloatArray();
            for (int i = 0; i < m; i++) {
                for (int r = 0; r < n; r++) {
                    double ref = bias == null ? 0 : bias[r], mag = bias == null ? 0 : Math.abs(bias[r]);
                    for (int c = 0; c < k; c++) {
                        double p = (double) x[i * k + c] * w.dense[r * k + c];
                        ref += p;
                        mag += Math.abs(p);
                    }
                    int fi = i, fr = r;
                    expectClose(y[i * n + r], ref, mag, k + 1, out, () -> path + " forward " + w.shape + " m=" + m
                            + " " + in + "->" + out + " y[" + fi + "," + fr + "]");
                }
            }
        }
    }

    private static void checkInputGrad(Weight w, int m, DType in, DType out, SplittableRandom rnd, String path) {
        int n = w.shape.n, k = w.shape.k;
        float[] dy = values(m * n, in, rnd);
        try (Tensor tdy = tensor(dy, in, m, n); Tensor tdx = Tensor.allocate(out, Device.CPU, m, k)) {
            tdx.fillBytes(0xFF);
            Nf4Matmul.inputGradInto(tdy, w.q, w.absmax, tdx);
            float[] dx = tdx.toFloatArray();
            for (int i = 0; i < m; i++) {
                for (int c = 0; c < k; c++) {
                    double ref = 0, mag = 0;
                    for (int r = 0; r < n; r++) {
                        double p = (double) dy[i * n + r] * w.dense[r * k + c];
                        ref += p;
                        mag += Math.abs(p);
                    }
                    int fi = i, fc = c;
                    expectClose(dx[i * k + c], ref, mag, n, out, () -> path + " input_grad " + w.shape + " m=" + m
                            + " " + in + "->" + out + " dx[" + fi + "," + fc + "]");
                }
            }
        }
    }

    static void expectClose(float got, double ref, double magnitude, int terms, DType out,
            java.util.function.Supplier<String> where) {
        double tol = 4 * Math.sqrt(terms + 1.0) * 0x1p-24 * magnitude;
        if (out == DType.F16) {
            tol += Math.abs(ref) * 0x1p-11 + 0x1p-25;
        } else if (out == DType.BF16) {
            tol += Math.abs(ref) * 0x1p-8;
        }
        if (!(Math.abs(got - ref) <= tol)) {
            fail(where.get() + " = " + got + ", float64 reference " + ref + " (tolerance " + tol + ")");
        }
    }

    @Test
    void gemvAndTiledPathsAreReported() {
        String p = Qkern.cpuPath();
        assertEquals("cpu-" + p + "-gemv", Nf4Matmul.path(1, Device.CPU, false));
        assertEquals("cpu-" + p + "-gemv", Nf4Matmul.path(8, Device.CPU, false));
        assertEquals("cpu-" + p + "-tiled", Nf4Matmul.path(9, Device.CPU, false));
        assertEquals("cpu-" + p + "-tiled", Nf4Matmul.path(1, Device.CPU, true));
    }

    @Test
    void resultsDoNotDependOnTheThreadCount() {
        SplittableRandom rnd = new SplittableRandom(7);
        int threads = Qkern.info().cpuThreads();
        // 1000 rows: several bands of the few-row input gradient; m = 5 (GEMV, bands) and 40 (tiled)
        try (Weight w = Weight.random(new Shape(1000, 640, 64, false), rnd)) {
            for (int m : new int[] {5, 40}) {
                try (Tensor x = tensor(values(m * 640, DType.F32, rnd), DType.F32, m, 640);
                        Tensor dy = tensor(values(m * 1000, DType.F32, rnd), DType.F32, m, 1000)) {
                    float[] y = Nf4Matmul.forward(x, w.q, w.absmax, null, DType.F32).toFloatArray();
                    float[] dx = Nf4Matmul.inputGrad(dy, w.q, w.absmax, DType.F32).toFloatArray();
                    Qkern.setCpuThreads(1);
                    try {
                        assertTrue(java.util.Arrays.equals(y, Nf4Matmul.forward(x, w.q, w.absmax, null, DType.F32)
                                .toFloatArray()), "forward m=" + m + ": 1 thread and " + threads + " threads differ");
                        assertTrue(java.util.Arrays.equals(dx, Nf4Matmul.inputGrad(dy, w.q, w.absmax, DType.F32)
                                .toFloatArray()), "input grad m=" + m + ": 1 thread and " + threads + " threads differ");
                    } finally {
                        Qkern.setCpuThreads(threads);
                    }
                }
            }
        }
    }

    @Test
    void badArgumentsAreRefusedWithClearMessages() {
        SplittableRandom rnd = new SplittableRandom(3);
        try (Weight w = Weight.random(new Shape(8, 64, 64, false), rnd);
                Weight dq = Weight.random(new Shape(8, 64, 64, true), rnd);
                Tensor x = tensor(values(2 * 64, DType.F32, rnd), DType.F32, 2, 64);
                Tensor x63 = tensor(values(2 * 63, DType.F32, rnd), DType.F32, 2, 63);
                Tensor x1d = tensor(values(64, DType.F32, rnd), DType.F32, 64);
                Tensor y = Tensor.allocate(DType.F32, Device.CPU, 2, 8);
                Tensor y7 = Tensor.allocate(DType.F32, Device.CPU, 2, 7);
                Tensor yF16 = Tensor.allocate(DType.F16, Device.CPU, 2, 8);
                Tensor bias7 = tensor(values(7, DType.F32, rnd), DType.F32, 7)) {
            assertMessage(IllegalArgumentException.class, "has in_features 64",
                    () -> Nf4Matmul.forwardInto(x63, w.q, w.absmax, null, y));
            assertMessage(IllegalArgumentException.class, "x must be 2-D",
                    () -> Nf4Matmul.forwardInto(x1d, w.q, w.absmax, null, y));
            assertMessage(IllegalArgumentException.class, "x W^T has shape [2, 8]",
                    () -> Nf4Matmul.forwardInto(x, w.q, w.absmax, null, y7));
            assertMessage(QkernException.class, "bias must have shape [8]",
                    () -> Nf4Matmul.forwardInto(x, w.q, w.absmax, bias7, y));
            assertMessage(QkernException.class, "y must be F32 or x's dtype",
                    () -> Nf4Matmul.forwardInto(x, w.q, w.absmax, null, yF16));
            assertMessage(IllegalArgumentException.class, "double-quantized",
                    () -> Nf4Matmul.forward(x, dq.q, null, null, DType.F32));
            assertMessage(IllegalArgumentException.class, "has out_features 8",
                    () -> Nf4Matmul.inputGrad(x, w.q, w.absmax, DType.F32));
            Tensor closed = tensor(values(2 * 64, DType.F32, rnd), DType.F32, 2, 64);
            closed.close();
            assertMessage(IllegalStateException.class, "closed", () -> Nf4Matmul.forwardInto(closed, w.q, w.absmax, null, y));
            // an output over read-only memory is refused before the kernel could write into it
            assertMessage(IllegalArgumentException.class, "read-only", () -> Nf4Matmul.forwardInto(x, w.q, w.absmax,
                    null, Tensor.wrap(java.lang.foreign.Arena.global().allocate(64).asReadOnly(), DType.F32, 2, 8)));
        }
    }

    private static <T extends Throwable> void assertMessage(Class<T> type, String part, Runnable r) {
        T e = assertThrows(type, r::run);
        assertTrue(e.getMessage().contains(part), "message \"" + e.getMessage() + "\" lacks \"" + part + "\"");
    }

    // ---- helpers ---------------------------------------------------------------------------------

    /** A random NF4 weight with its float32 absmax and its dequantized values. */
    static final class Weight implements AutoCloseable {
        final Shape shape;
        final Nf4Tensor q;
        final Tensor absmax;
        final float[] dense;

        private Weight(Shape shape, Nf4Tensor q, Tensor absmax, float[] dense) {
            this.shape = shape;
            this.q = q;
            this.absmax = absmax;
            this.dense = dense;
        }

        static Weight random(Shape s, SplittableRandom rnd) {
            float[] src = new float[s.n * s.k];
            for (int i = 0; i < src.length; i++) {
                src[i] = (float) (rnd.nextGaussian() * 0.02);
            }
            try (Tensor t = Tensor.ofFloats(src, s.n, s.k)) {
                Nf4Tensor q = Nf4.quantize("w", t, new Nf4.Options(s.blocksize, s.doubleQuant));
                Tensor absmax = Nf4.absmaxOf(q);
                float[] dense = Nf4.dequantize(q, DType.F32).toFloatArray();
                return new Weight(s, q, absmax, dense);
            }
        }

        @Override
        public void close() {
            q.close();
            absmax.close();
        }
    }

    /** Random values in [-1, 1), rounded to what {@code dtype} can hold. */
    static float[] values(int count, DType dtype, SplittableRandom rnd) {
        float[] v = new float[count];
        for (int i = 0; i < count; i++) {
            v[i] = round((float) (rnd.nextDouble() * 2 - 1), dtype);
        }
        return v;
    }

    static float round(float v, DType dtype) {
        return switch (dtype) {
            case F16 -> Float.float16ToFloat(Float.floatToFloat16(v));
            case BF16 -> Float.intBitsToFloat(bf16Bits(v) << 16);
            default -> v;
        };
    }

    static int bf16Bits(float v) {
        int b = Float.floatToRawIntBits(v);
        return ((b + 0x7FFF + ((b >>> 16) & 1)) >>> 16) & 0xFFFF;  // round to nearest even (finite inputs)
    }

    /** A host tensor of {@code dtype} holding exactly {@code values} (already representable). */
    static Tensor tensor(float[] values, DType dtype, long... shape) {
        if (dtype == DType.F32) {
            return Tensor.ofFloats(values, shape);
        }
        Tensor t = Tensor.allocate(dtype, Device.CPU, shape);
        MemorySegment s = t.segment();
        for (int i = 0; i < values.length; i++) {
            short bits = dtype == DType.F16 ? Float.floatToFloat16(values[i]) : (short) bf16Bits(values[i]);
            s.setAtIndex(ValueLayout.JAVA_SHORT_UNALIGNED, i, bits);
        }
        return t;
    }
}
