package io.qkern.apmm;

import io.qkern.CpuPaths;
import static java.lang.foreign.ValueLayout.JAVA_FLOAT;
import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_SHORT;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Qkern;
import io.qkern.QkernException;
import io.qkern.Tensor;
import java.nio.file.Path;
import java.util.List;
import java.util.SplittableRandom;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * APMM from Java on every CPU path this machine has and both kernel families: integer results
 * bit-exact against an int64 reference over the full 8 x 8 (p, q) grid, the quantized linear
 * layer against a float64 reference, safetensors round trips, and bad input.
 */
class ApmmTest {
    private static final long SEED = System.nanoTime();
    private final String pathBefore = Qkern.cpuPath();

    @AfterEach
    void restore() {
        Qkern.setCpuPath(pathBefore);
    }

    static int[] randomCodes(SplittableRandom rng, ApmmFormat f, int bits, int n) {
        int[] c = new int[n];
        for (int i = 0; i < n; i++) {
            int x = rng.nextInt(f.min(bits), f.max(bits) + 1);
            if (f == ApmmFormat.BIPOLAR && (x & 1) == 0) {
                x += x < f.max(bits) ? 1 : -1;
            }
            c[i] = x;
        }
        return c;
    }

    static Tensor ints(int[] v, long rows, long cols) {
        Tensor t = Tensor.allocate(DType.I32, Device.CPU, rows, cols);
        for (int i = 0; i < v.length; i++) {
            t.segment().setAtIndex(JAVA_INT, i, v[i]);
        }
        return t;
    }

    static int[] intsOf(Tensor t) {
        int[] v = new int[(int) t.numel()];
        for (int i = 0; i < v.length; i++) {
            v[i] = t.segment().getAtIndex(JAVA_INT, i);
        }
        return v;
    }

    @Test
    void integerGridIsExactOnEveryPath() {
        SplittableRandom rng = new SplittableRandom(SEED);
        int[] ms = {1, 4, 1, 3, 9};
        int[] ns = {7, 1, 16, 5};
        int[] ks = {1, 65, 64, 127, 256, 300, 1000};
        ApmmFormat[] formats = ApmmFormat.values();
        for (String cpu : CpuPaths.available()) {
            Qkern.setCpuPath(cpu);
            int shape = 0;
            for (int p = 1; p <= 8; p++) {
                for (int q = 1; q <= 8; q++) {
                    ApmmFormat fa = formats[shape % 3], fw = formats[(shape / 3 + p) % 3];
                    int m = ms[shape % ms.length], n = ns[shape % ns.length], k = ks[shape % ks.length];
                    shape++;
                    int[] ca = randomCodes(rng, fa, q, m * k), cw = randomCodes(rng, fw, p, n * k);
                    long[] ref = new long[m * n];
                    for (int i = 0; i < m; i++) {
                        for (int j = 0; j < n; j++) {
                            long s = 0;
                            for (int c = 0; c < k; c++) {
                                s += (long) ca[i * k + c] * cw[j * k + c];
                            }
                            ref[i * n + j] = s;
                        }
                    }
                    try (Tensor ta = ints(ca, m, k); Tensor tw = ints(cw, n, k);
                            ApmmMatrix a = Apmm.pack(ta, fa, q, 0); ApmmMatrix w = Apmm.pack(tw, fw, p, 0)) {
                        for (ApmmPath path : List.of(ApmmPath.BITSERIAL, ApmmPath.INT8, ApmmPath.AUTO)) {
                            try (Tensor out = Tensor.allocate(DType.I32, Device.CPU, m, n)) {
                                out.fillBytes(0xFF);
                                String ran = Apmm.matmulInto(a, w, out, path);
                                int[] got = intsOf(out);
                                for (int i = 0; i < m * n; i++) {
                                    if (got[i] != ref[i]) {
                                        fail(cpu + " " + ran + ": A " + fa + " q=" + q + ", W " + fw + " p=" + p
                                                + ", M=" + m + " N=" + n + " K=" + k + ": c[" + i + "] = " + got[i]
                                                + ", expected " + ref[i] + " (seed " + SEED + ")");
                                    }
                                }
                                assertTrue(ran.startsWith(cpu.equals("avx512") ? "avx" : cpu), ran);
                            }
                        }
                    }
                }
            }
        }
    }

    /**
     * The small-M weight-streaming path that AUTO takes at M <= 16 (p <= 4) or 8 (p = 5..7) for
     * p*q > 4: every (p, q) it serves, M = 1 and the largest M, K not a multiple of 64 or 256,
     * segments of 0/32/64/128 columns, all three formats, exact against int64.
     */
    @Test
    void streamPathIsExactAtSmallM() {
        SplittableRandom rng = new SplittableRandom(SEED + 2);
        int[] ks = {97, 300, 513, 31};
        long[] groups = {0, 32, 64, 128};
        ApmmFormat[] formats = ApmmFormat.values();
        int streamed = 0;
        for (String cpu : CpuPaths.available()) {
            Qkern.setCpuPath(cpu);
            int shape = 0;
            for (int p = 1; p <= 7; p++) {
                for (int q = 1; q <= 8; q++) {
                    if (p * q <= 4 || 2 * ((1 << p) - 1) * ((1 << q) - 1) > 32767) {
                        continue;  // bit-serial's cases, or u_w * u_a pair sums beyond int16
                    }
                    int maxM = p <= 4 ? 16 : 8;
                    assertTrue(Apmm.choosePath(q, p, maxM, Device.CPU, ApmmPath.AUTO).endsWith("stream"));
                    assertTrue(!Apmm.choosePath(q, p, maxM + 1, Device.CPU, ApmmPath.AUTO).endsWith("stream"));
                    for (int m : new int[] {1, maxM}) {
                        ApmmFormat fa = formats[shape % 3], fw = formats[(shape / 3 + p) % 3];
                        int n = 1 + (shape * 5) % 19, k = ks[shape % ks.length];
                        long g = groups[shape % groups.length];
                        shape++;
                        int[] ca = randomCodes(rng, fa, q, m * k), cw = randomCodes(rng, fw, p, n * k);
                        if (shape % 5 == 0) {  // the largest unsigned codes: int16 pair sums at their bound
                            java.util.Arrays.fill(ca, fa.max(q));
                            java.util.Arrays.fill(cw, fw.max(p));
                        }
                        try (Tensor ta = ints(ca, m, k); Tensor tw = ints(cw, n, k);
                                ApmmMatrix a = Apmm.pack(ta, fa, q, g); ApmmMatrix w = Apmm.pack(tw, fw, p, g);
                                Tensor out = Tensor.allocate(DType.I32, Device.CPU, m, n)) {
                            out.fillBytes(0xFF);
                            String ran = Apmm.matmulInto(a, w, out, ApmmPath.AUTO);
                            assertTrue(ran.endsWith("stream"), ran);
                            streamed++;
                            int[] got = intsOf(out);
                            for (int i = 0; i < m; i++) {
                                for (int j = 0; j < n; j++) {
                                    long ref = 0;
                                    for (int c = 0; c < k; c++) {
                                        ref += (long) ca[i * k + c] * cw[j * k + c];
                                    }
                                    if (got[i * n + j] != ref) {
                                        fail(cpu + " " + ran + ": A " + fa + " q=" + q + ", W " + fw + " p=" + p
                                                + ", M=" + m + " N=" + n + " K=" + k + " group=" + g + ": c[" + i + ", "
                                                + j + "] = " + got[i * n + j] + ", expected " + ref + " (seed " + SEED
                                                + ")");
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        assertTrue(streamed > 100, "stream path ran " + streamed + " times");
    }

    @Test
    void pathIsChosenPerBitsAndReported() {
        String isa = Qkern.cpuPath();
        String bitserial = Apmm.choosePath(1, 1, 512, Device.CPU, ApmmPath.AUTO);
        String int8 = Apmm.choosePath(8, 8, 512, Device.CPU, ApmmPath.AUTO);
        assertTrue(bitserial.endsWith("bitserial"), bitserial);
        assertTrue(int8.contains("int8"), int8);
        assertTrue(bitserial.startsWith(isa.equals("avx512") ? "avx" : isa), bitserial);
        assertEquals(Apmm.choosePath(8, 8, 1, Device.CPU, ApmmPath.BITSERIAL), bitserial);
    }

    /** y = x W^T through ApmmLinear against float64 over the codes, scales and zero points. */
    @Test
    void linearMatchesFloat64Reference() {
        SplittableRandom rng = new SplittableRandom(SEED + 1);
        long[] groups = {0, 32, 64, 128};
        int round = 0;
        for (String cpu : CpuPaths.available()) {
            Qkern.setCpuPath(cpu);
            for (long g : groups) {
                for (ApmmFormat fw : ApmmFormat.values()) {
                    ApmmFormat fa = ApmmFormat.values()[round % 3];
                    int p = 1 + (round * 3) % 8, q = 1 + (round * 5 + 1) % 8;
                    int m = 1 + round % 5, n = 2 + round % 7;
                    int k = g == 0 ? 33 + 61 * (round % 4) : (int) g * (1 + round % 3) + (round % 2) * 7;
                    round++;
                    float[] x = new float[m * k], wv = new float[n * k];
                    for (int i = 0; i < x.length; i++) {
                        x[i] = (float) (rng.nextDouble() * 2 - 0.6);
                    }
                    for (int i = 0; i < wv.length; i++) {
                        wv[i] = (float) rng.nextGaussian() * 0.1f;
                    }
                    ApmmLinear.Spec spec = new ApmmLinear.Spec(fw, p, fa, q, g);
                    try (Tensor tx = Tensor.ofFloats(x, m, k); Tensor tw = Tensor.ofFloats(wv, n, k);
                            ApmmLinear lin = ApmmLinear.quantize(tw, spec);
                            ApmmMatrix a = Apmm.quantizeActivations(tx, fa, q, g)) {
                        double[] ref = reference(a, lin.weight());
                        for (ApmmPath path : List.of(ApmmPath.BITSERIAL, ApmmPath.INT8)) {
                            for (DType dt : List.of(DType.F32, DType.F16, DType.BF16)) {
                                try (Tensor y = lin.path(path).forward(tx, dt)) {
                                    double ulp = dt == DType.F32 ? 0x1p-24 : dt == DType.F16 ? 0x1p-11 : 0x1p-8;
                                    for (int i = 0; i < m * n; i++) {
                                        double got = element(y, i);
                                        double tol = ulp * Math.abs(ref[i]) * 1.0001 + 1e-30;
                                        if (dt == DType.F16) {
                                            tol = Math.max(tol, 0x1p-25);  // subnormal spacing
                                        }
                                        if (Math.abs(got - ref[i]) > tol) {
                                            fail(cpu + " " + lin.lastPath() + " " + dt + " " + spec + " K=" + k + ": y["
                                                    + i + "] = " + got + ", expected " + ref[i] + " (seed " + SEED
                                                    + ")");
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /** float64 sum over columns of sa * sw * (xa - za)(xw - zw) from the unpacked codes. */
    static double[] reference(ApmmMatrix a, ApmmMatrix w) {
        int m = (int) a.rows(), n = (int) w.rows(), k = (int) a.k();
        long g = w.scaleGroup();
        int segs = (int) ApmmMatrix.segments(k, g);
        try (Tensor ca = a.codes(); Tensor cw = w.codes()) {
            int[] xa = intsOf(ca), xw = intsOf(cw);
            double[] y = new double[m * n];
            for (int i = 0; i < m; i++) {
                double sa = a.scales().segment().getAtIndex(JAVA_FLOAT, i);
                int za = a.zeroPoints() == null ? 0 : a.zeroPoints().segment().getAtIndex(JAVA_INT, i);
                for (int j = 0; j < n; j++) {
                    double s = 0;
                    for (int c = 0; c < k; c++) {
                        int si = j * segs + (g == 0 ? 0 : (int) (c / g));
                        double sw = w.scales().segment().getAtIndex(JAVA_FLOAT, si);
                        int zw = w.zeroPoints() == null ? 0 : w.zeroPoints().segment().getAtIndex(JAVA_INT, si);
                        s += sa * sw * ((double) xa[i * k + c] - za) * ((double) xw[j * k + c] - zw);
                    }
                    y[i * n + j] = s;
                }
            }
            return y;
        }
    }

    static double element(Tensor y, int i) {
        return switch (y.dtype()) {
            case F32 -> y.segment().getAtIndex(JAVA_FLOAT, i);
            case F16 -> Float.float16ToFloat(y.segment().getAtIndex(JAVA_SHORT, i));
            case BF16 -> Float.intBitsToFloat((y.segment().getAtIndex(JAVA_SHORT, i) & 0xFFFF) << 16);
            default -> throw new AssertionError(y.dtype());
        };
    }

    /** The quantizer's codes decode to within half a step (a full step for bipolar) of the input. */
    @Test
    void quantizerErrorIsBounded() {
        SplittableRandom rng = new SplittableRandom(SEED + 2);
        for (ApmmFormat f : ApmmFormat.values()) {
            for (int bits = 1; bits <= 8; bits++) {
                int rows = 3, k = 200;
                float[] x = new float[rows * k];
                for (int i = 0; i < x.length; i++) {
                    x[i] = (float) rng.nextGaussian() + (f == ApmmFormat.UNSIGNED ? 0.5f : 0f);
                }
                try (Tensor tx = Tensor.ofFloats(x, rows, k); ApmmMatrix q = Apmm.quantize(tx, f, bits, 64);
                        Tensor codes = q.codes()) {
                    int[] c = intsOf(codes);
                    for (int i = 0; i < x.length; i++) {
                        int si = (i / k) * 4 + (i % k) / 64;
                        double s = q.scales().segment().getAtIndex(JAVA_FLOAT, si);
                        int z = q.zeroPoints() == null ? 0 : q.zeroPoints().segment().getAtIndex(JAVA_INT, si);
                        double step = (f == ApmmFormat.BIPOLAR || (f == ApmmFormat.SIGNED && bits == 1)) ? 1.0 : 0.5;
                        assertTrue(f.isCode(bits, c[i]), "code " + c[i]);
                        assertTrue(Math.abs(s * (c[i] - z) - x[i]) <= step * s * 1.0001 + 1e-7,
                                f + " " + bits + "-bit: " + x[i] + " -> " + s * (c[i] - z));
                    }
                }
            }
        }
    }

    @Test
    void savedLayersAndMatricesLoadIdentically(@TempDir Path dir) throws Exception {
        SplittableRandom rng = new SplittableRandom(SEED + 3);
        float[] w = new float[6 * 100], x = new float[3 * 100];
        for (int i = 0; i < w.length; i++) {
            w[i] = (float) rng.nextGaussian();
        }
        for (int i = 0; i < x.length; i++) {
            x[i] = (float) rng.nextGaussian();
        }
        ApmmLinear.Spec spec = new ApmmLinear.Spec(ApmmFormat.UNSIGNED, 3, ApmmFormat.BIPOLAR, 2, 32);
        Path file = dir.resolve("layer.safetensors");
        try (Tensor tw = Tensor.ofFloats(w, 6, 100); Tensor tx = Tensor.ofFloats(x, 3, 100);
                ApmmLinear lin = ApmmLinear.quantize(tw, spec)) {
            lin.save(file);
            try (ApmmLinear back = ApmmLinear.load(file, Device.CPU); Tensor y1 = lin.forward(tx);
                    Tensor y2 = back.forward(tx)) {
                assertEquals(spec, back.spec());
                assertArrayEquals(y1.toByteArray(), y2.toByteArray());
                assertArrayEquals(lin.weight().planes().toByteArray(), back.weight().planes().toByteArray());
            }
        }
        int[] codes = randomCodes(rng, ApmmFormat.SIGNED, 5, 4 * 70);
        Path raw = dir.resolve("codes.safetensors");
        try (Tensor tc = ints(codes, 4, 70); ApmmMatrix mtx = Apmm.pack(tc, ApmmFormat.SIGNED, 5, 0)) {
            mtx.save(raw);
            try (ApmmMatrix back = ApmmMatrix.load(raw, Device.CPU); Tensor c = back.codes()) {
                assertArrayEquals(codes, intsOf(c));
                assertEquals(ApmmFormat.SIGNED, back.format());
                assertEquals(5, back.bits());
            }
        }
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> ApmmLinear.load(raw, Device.CPU));
        assertTrue(e.getMessage().contains("activation_format"), e.getMessage());
    }

    @Test
    void badInputNamesTheValue() {
        try (Tensor t = ints(new int[] {1, 3, 9, -3}, 2, 2)) {
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> Apmm.pack(t, ApmmFormat.BIPOLAR, 3, 0));
            assertTrue(e.getMessage().contains("codes[1, 0] = 9 is not a bipolar 3-bit code"), e.getMessage());
            e = assertThrows(IllegalArgumentException.class, () -> Apmm.pack(t, ApmmFormat.SIGNED, 9, 0));
            assertTrue(e.getMessage().contains("bits 9 is outside 1..8"), e.getMessage());
            e = assertThrows(IllegalArgumentException.class, () -> Apmm.pack(t, ApmmFormat.SIGNED, 0, 0));
            assertTrue(e.getMessage().contains("bits 0"), e.getMessage());
            e = assertThrows(IllegalArgumentException.class, () -> Apmm.pack(t, ApmmFormat.SIGNED, 5, 48));
            assertTrue(e.getMessage().contains("group 48"), e.getMessage());
            e = assertThrows(IllegalArgumentException.class, () -> ApmmFormat.parse("ternary"));
            assertTrue(e.getMessage().contains("ternary"), e.getMessage());
        }
        try (Tensor a = ints(new int[6], 2, 3); Tensor w = ints(new int[8], 2, 4);
                ApmmMatrix pa = Apmm.pack(a, ApmmFormat.SIGNED, 2, 0); ApmmMatrix pw = Apmm.pack(w, ApmmFormat.SIGNED, 2, 0)) {
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> Apmm.matmul(pa, pw, DType.I32, ApmmPath.AUTO));
            assertTrue(e.getMessage().contains("K = 3") && e.getMessage().contains("K = 4"), e.getMessage());
            e = assertThrows(IllegalArgumentException.class, () -> Apmm.matmul(pa, pa, DType.F32, ApmmPath.AUTO));
            assertTrue(e.getMessage().contains("needs scales"), e.getMessage());
        }
        float[] x = new float[2 * 64];
        x[70] = Float.NaN;
        try (Tensor tx = Tensor.ofFloats(x, 2, 64)) {
            QkernException e = assertThrows(QkernException.class,
                    () -> Apmm.quantizeActivations(tx, ApmmFormat.SIGNED, 4, 0));
            assertEquals(QkernException.Status.NON_FINITE, e.status());
            assertTrue(e.getMessage().contains("x[1, 6] is NaN"), e.getMessage());
        }
        try (Tensor w = Tensor.ofFloats(new float[4 * 64], 4, 64); Tensor bad = Tensor.ofFloats(new float[2 * 32], 2, 32);
                ApmmLinear l = ApmmLinear.quantize(w, new ApmmLinear.Spec(ApmmFormat.SIGNED, 4, ApmmFormat.SIGNED, 4,
                        0))) {
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> l.forward(bad));
            assertTrue(e.getMessage().contains("x has shape [2, 32], expected [M, 64]"), e.getMessage());
        }
        assertThrows(IllegalArgumentException.class, () -> new ApmmLinear.Spec(ApmmFormat.SIGNED, 4, ApmmFormat.SIGNED,
                12, 0));
    }
}
