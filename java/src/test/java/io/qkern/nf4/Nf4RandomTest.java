package io.qkern.nf4;

import io.qkern.CpuPaths;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Qkern;
import io.qkern.Tensor;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.SplittableRandom;
import java.util.stream.Stream;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * Fresh random tensors against an independent float64 reference of the NF4 format:
 * code = argmin_c |x/absmax - T[c]| (ties to the lower code), value = round(T[code] * absmax).
 */
class Nf4RandomTest {
    private static final long SEED = System.nanoTime();
    private static final double[] T = {-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
            -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534,
            0.16093020141124725, 0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
            0.7229568362236023, 1.0};

    @AfterEach
    void restorePath() {
        Qkern.setCpuPath("auto");
    }

    static Stream<Arguments> cases() {
        SplittableRandom rng = new SplittableRandom(SEED);
        long[][] shapes = {{1}, {2}, {7}, {33, 3}, {64}, {65}, {1000, 17}, {3 * 4096 + 5}, {128, 257}};
        int[] blocksizes = {32, 64, 128, 256, 512, 1024, 2048, 4096};
        List<Arguments> out = new ArrayList<>();
        for (String path : CpuPaths.available()) {
            for (long[] shape : shapes) {
                for (DType dt : List.of(DType.F32, DType.F16, DType.BF16)) {
                    int bs = blocksizes[rng.nextInt(blocksizes.length)];
                    out.add(Arguments.of(path, shape, dt, bs, rng.nextBoolean(), rng.nextLong()));
                }
            }
        }
        return out.stream();
    }

    @ParameterizedTest(name = "{0} {1} {2} bs={3} dq={4}")
    @MethodSource("cases")
    void matchesFloat64Reference(String path, long[] shape, DType dtype, int blocksize, boolean dq, long seed) {
        Qkern.setCpuPath(path);
        SplittableRandom rng = new SplittableRandom(seed);
        int n = (int) Arrays.stream(shape).reduce(1, (a, b) -> a * b);
        float[] x = new float[n];
        double scale = Math.pow(10, rng.nextDouble(-6, 2));
        for (int i = 0; i < n; i++) {
            double g = rng.nextGaussian() * scale;
            if (rng.nextInt(50) == 0) {
                g *= 30;  // heavy tail: outliers set a block's absmax
            }
            if (rng.nextInt(40) == 0) {
                g = 0;
            }
            x[i] = roundTo(dtype, (float) g);
        }
        if (n >= 2 * blocksize) {
            Arrays.fill(x, blocksize, 2 * blocksize, 0f);  // an all-zero block decodes to +0
        }
        try (Tensor t = make(x, dtype, shape); Nf4Tensor q = Nf4.quantize(t, new Nf4.Options(blocksize, dq))) {
            assertArrayEquals(shape, q.shape());
            assertEquals(dtype, q.originalDtype());
            int blocks = (n + blocksize - 1) / blocksize;
            float[] absmax = new float[blocks];
            for (int b = 0; b < blocks; b++) {
                for (int i = b * blocksize; i < Math.min(n, (b + 1) * blocksize); i++) {
                    absmax[b] = Math.max(absmax[b], Math.abs(x[i]));
                }
            }
            byte[] packed = q.packed().toByteArray();
            assertEquals((n + 1) / 2, packed.length);
            int[] codes = new int[n];
            for (int i = 0; i < n; i++) {
                codes[i] = (i & 1) == 0 ? (packed[i >> 1] >> 4) & 15 : packed[i >> 1] & 15;
                double s = absmax[i / blocksize] == 0 ? 0 : x[i] / (double) absmax[i / blocksize];
                double best = Double.MAX_VALUE;
                for (double v : T) {
                    best = Math.min(best, Math.abs(s - v));
                }
                // float32 scaling may flip only near-exact ties: allow one float32 ulp of s
                double err = Math.abs(s - T[codes[i]]);
                assertTrue(err <= best + Math.ulp((float) Math.abs(s)) + 1e-12,
                        "element " + i + ": x=" + x[i] + " s=" + s + " code=" + codes[i] + " err=" + err + " best=" + best
                                + " seed=" + SEED);
            }
            if ((n & 1) == 1) {
                assertEquals(7, packed[n >> 1] & 15, "odd n pads the last low nibble with code 7");
            }
            float[] effectiveAbsmax;
            try (Tensor a = Nf4.absmaxOf(q)) {
                effectiveAbsmax = a.toFloatArray();
            }
            if (!dq) {
                assertArrayEquals(absmax, effectiveAbsmax, "absmax is the exact block maximum");
            } else {
                checkDoubleQuantized(absmax, effectiveAbsmax, q);
            }
            for (DType outType : List.of(DType.F32, DType.F16, DType.BF16)) {
                try (Tensor out = Tensor.allocate(outType, Device.CPU, shape)) {
                    out.fillBytes(0xFF);
                    Nf4.dequantizeInto(q, out);
                    float[] got = out.toFloatArray();
                    for (int i = 0; i < n; i++) {
                        float expect = roundTo(outType, (float) (T[codes[i]] * effectiveAbsmax[i / blocksize]));
                        if (Float.floatToRawIntBits(expect) != Float.floatToRawIntBits(got[i])) {
                            throw new AssertionError(outType + " element " + i + ": expected " + expect + " got "
                                    + got[i] + " (seed " + SEED + ")");
                        }
                    }
                }
            }
        }
    }

    /** absmax rebuilt from 8-bit codes lies within half a code step (plus rounding) of the exact one. */
    private static void checkDoubleQuantized(float[] exact, float[] rebuilt, Nf4Tensor q) {
        double mean = 0;
        for (float a : exact) {
            mean += a;
        }
        float offset = (float) (mean / exact.length);
        assertEquals(offset, q.quantState().nestedOffset(), "offset = mean(absmax) rounded once");
        float[] nested = q.doubleQuant().nestedAbsmax().toFloatArray();
        float[] map = Nf4Format.dynamicMap();
        double maxGap = 0;
        for (int i = 1; i < 256; i++) {
            maxGap = Math.max(maxGap, map[i] - map[i - 1]);
        }
        for (int b = 0; b < exact.length; b++) {
            double bound = nested[b / 256] * (maxGap / 2 + 1e-6) + Math.ulp(exact[b]) * 4;
            assertTrue(Math.abs(rebuilt[b] - exact[b]) <= bound,
                    "block " + b + ": rebuilt " + rebuilt[b] + " vs exact " + exact[b] + " bound " + bound);
        }
    }

    @Test
    void exactTiesGoToTheLowerCode() {
        float[] thr = new float[15];
        for (int k = 0; k < 15; k++) {
            thr[k] = (float) ((float) T[k] + (float) T[k + 1]) * 0.5f;
        }
        float[] x = new float[32];
        x[0] = 1.0f;  // absmax 1: s == x exactly
        System.arraycopy(thr, 0, x, 1, 15);
        for (String path : CpuPaths.available()) {
            Qkern.setCpuPath(path);
            try (Tensor t = Tensor.ofFloats(x, 32); Nf4Tensor q = Nf4.quantize(t, new Nf4.Options(32, false))) {
                byte[] p = q.packed().toByteArray();
                for (int k = 0; k < 15; k++) {
                    int i = k + 1;
                    int code = (i & 1) == 0 ? (p[i >> 1] >> 4) & 15 : p[i >> 1] & 15;
                    assertEquals(k, code, path + ": threshold " + k + " must encode to the lower code");
                }
            }
        }
    }

    @Test
    void nonFiniteInputNamesTensorAndIndex() {
        for (float bad : new float[] {Float.NaN, Float.POSITIVE_INFINITY, Float.NEGATIVE_INFINITY}) {
            float[] x = new float[40 * 7];
            Arrays.fill(x, 0.5f);
            x[3 * 7 + 5] = bad;
            x[30 * 7] = bad;  // a later one: the lowest index is reported
            try (Tensor t = Tensor.ofFloats(x, 40, 7)) {
                NonFiniteException e = assertThrows(NonFiniteException.class,
                        () -> Nf4.quantize("model.layers.3.mlp.up_proj.weight", t, Nf4.Options.DEFAULT));
                assertEquals(26, e.flatIndex());
                assertArrayEquals(new long[] {3, 5}, e.index());
                assertTrue(e.getMessage().contains("model.layers.3.mlp.up_proj.weight"), e.getMessage());
                assertTrue(e.getMessage().contains("[3, 5]"), e.getMessage());
            }
        }
        try (Tensor t = Tensor.allocate(DType.BF16, Device.CPU, 64)) {
            t.fillBytes(0);
            t.segment().set(ValueLayout.JAVA_SHORT_UNALIGNED, 2 * 63, (short) 0x7f80);  // bf16 +Inf
            NonFiniteException e = assertThrows(NonFiniteException.class, () -> Nf4.quantize(t));
            assertEquals(63, e.flatIndex());
            assertTrue(e.getMessage().contains("+Inf"), e.getMessage());
        }
    }

    @Test
    void invalidArgumentsAreNamed() {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> new Nf4.Options(48, false));
        assertTrue(e.getMessage().contains("48"), e.getMessage());
        assertThrows(IllegalArgumentException.class, () -> new Nf4.Options(8192, false));
        try (Tensor t = Tensor.allocate(DType.I32, Device.CPU, 64)) {
            IllegalArgumentException d = assertThrows(IllegalArgumentException.class, () -> Nf4.quantize("w", t,
                    Nf4.Options.DEFAULT));
            assertTrue(d.getMessage().contains("I32"), d.getMessage());
        }
        try (Tensor t = Tensor.ofFloats(new float[64], 64); Nf4Tensor q = Nf4.quantize(t);
                Tensor wrong = Tensor.allocate(DType.F32, Device.CPU, 63)) {
            assertThrows(IllegalArgumentException.class, () -> Nf4.dequantizeInto(q, wrong));
            assertThrows(IllegalArgumentException.class, () -> Nf4.dequantize(q, DType.I8));
        }
    }

    @Test
    void emptyTensorQuantizesToNothing() {
        try (Tensor t = Tensor.allocate(DType.F32, Device.CPU, 0, 16); Nf4Tensor q = Nf4.quantize(t);
                Tensor back = q.dequantize()) {
            assertEquals(0, q.packed().numel());
            assertEquals(0, back.numel());
        }
    }

    static Tensor make(float[] x, DType dtype, long[] shape) {
        Tensor t = Tensor.allocate(dtype, Device.CPU, shape);
        MemorySegment s = t.segment();
        for (int i = 0; i < x.length; i++) {
            switch (dtype) {
                case F32 -> s.setAtIndex(ValueLayout.JAVA_FLOAT, i, x[i]);
                case F16 -> s.setAtIndex(ValueLayout.JAVA_SHORT, i, Float.floatToFloat16(x[i]));
                default -> s.setAtIndex(ValueLayout.JAVA_SHORT, i, (short) (Float.floatToRawIntBits(x[i]) >>> 16));
            }
        }
        return t;
    }

    /** Round to nearest even into the dtype, returned as the float it represents. */
    static float roundTo(DType dtype, float v) {
        return switch (dtype) {
            case F16 -> Float.float16ToFloat(Float.floatToFloat16(v));
            case BF16 -> {
                int u = Float.floatToRawIntBits(v);
                if (Float.isNaN(v)) {
                    yield v;
                }
                u += 0x7fff + ((u >>> 16) & 1);
                yield Float.intBitsToFloat(u & 0xffff0000);
            }
            default -> v;
        };
    }
}
