package io.qkern.cli;

import static io.qkern.cli.CliTest.assertContains;
import static io.qkern.cli.CliTest.expect;
import static io.qkern.cli.CliTest.qkern;
import static io.qkern.cli.CliTest.tensors;
import static io.qkern.cli.CliTest.write;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.qkern.DType;
import io.qkern.Tensor;
import io.qkern.apmm.ApmmFormat;
import io.qkern.apmm.ApmmLinear;
import io.qkern.io.Json;
import java.io.IOException;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** {@code qkern run apmm.matmul / apmm.linear}: files in, files out, against independent references. */
class ApmmCliTest {
    @TempDir
    Path dir;

    private static CliTest.T i8(byte[] v, long rows, long cols) {
        return new CliTest.T(DType.I8, new long[] {rows, cols}, v);
    }

    @Test
    void matmulOfCodesIsExact() throws IOException {
        SplittableRandom rng = new SplittableRandom();
        int m = 3, n = 5, k = 77;
        for (String format : List.of("signed", "bipolar", "unsigned")) {
            ApmmFormat f = ApmmFormat.parse(format);
            int q = 3, p = 2;
            byte[] a = new byte[m * k], w = new byte[n * k];
            fill(rng, f, q, a);
            fill(rng, f, p, w);
            Map<String, CliTest.T> in = new LinkedHashMap<>();
            in.put("a", i8(a, m, k));
            in.put("w", i8(w, n, k));
            Path inFile = dir.resolve(format + ".in.safetensors"), out = dir.resolve(format + ".out.safetensors");
            write(inFile, in);
            for (String path : List.of("auto", "bitserial", "int8")) {
                expect(0, "run", "apmm.matmul", inFile, out, "--set", "a_bits=" + q, "w_bits=" + p, "format=" + format,
                        "path=" + path);
                CliTest.T c = tensors(out).get("c");
                assertEquals(DType.I32, c.dtype());
                assertArrayEquals(new long[] {m, n}, c.shape());
                MemorySegment s = MemorySegment.ofArray(c.data());
                for (int i = 0; i < m; i++) {
                    for (int j = 0; j < n; j++) {
                        long ref = 0;
                        for (int x = 0; x < k; x++) {
                            ref += (long) a[i * k + x] * w[j * k + x];
                        }
                        assertEquals(ref, s.getAtIndex(ValueLayout.JAVA_INT_UNALIGNED, i * n + j),
                                format + " " + path + " c[" + i + ", " + j + "]");
                    }
                }
            }
        }
    }

    private static void fill(SplittableRandom rng, ApmmFormat f, int bits, byte[] v) {
        for (int i = 0; i < v.length; i++) {
            int x = rng.nextInt(f.min(bits), f.max(bits) + 1);
            if (f == ApmmFormat.BIPOLAR && (x & 1) == 0) {
                x += 1;
            }
            v[i] = (byte) x;
        }
    }

    @Test
    void linearMatchesTheLibraryAndTheFloatProduct() throws IOException {
        SplittableRandom rng = new SplittableRandom();
        int m = 4, n = 6, k = 96;
        float[] x = new float[m * k], w = new float[n * k];
        for (int i = 0; i < x.length; i++) {
            x[i] = (float) rng.nextGaussian();
        }
        for (int i = 0; i < w.length; i++) {
            w[i] = (float) rng.nextGaussian();
        }
        Map<String, CliTest.T> in = new LinkedHashMap<>();
        in.put("x", new CliTest.T(DType.F32, new long[] {m, k}, bytes(x)));
        in.put("w", new CliTest.T(DType.F32, new long[] {n, k}, bytes(w)));
        Path inFile = dir.resolve("lin.in.safetensors"), out = dir.resolve("lin.out.safetensors");
        write(inFile, in);
        expect(0, "run", "apmm.linear", inFile, out, "--set", "w_bits=8", "a_bits=8", "format=signed", "group=32");
        CliTest.T y = tensors(out).get("y");
        assertEquals(DType.F32, y.dtype());
        assertArrayEquals(new long[] {m, n}, y.shape());
        try (Tensor tx = Tensor.ofFloats(x, m, k); Tensor tw = Tensor.ofFloats(w, n, k);
                ApmmLinear lin = ApmmLinear.quantize(tw, new ApmmLinear.Spec(ApmmFormat.SIGNED, 8, ApmmFormat.SIGNED,
                        8, 32));
                Tensor ref = lin.forward(tx)) {
            assertArrayEquals(ref.toByteArray(), y.data(), "same as the Java API");
        }
        // 8-bit x 8-bit stays close to the float product
        MemorySegment s = MemorySegment.ofArray(y.data());
        for (int i = 0; i < m; i++) {
            for (int j = 0; j < n; j++) {
                double ref = 0, mag = 0;
                for (int c = 0; c < k; c++) {
                    ref += (double) x[i * k + c] * w[j * k + c];
                    mag += Math.abs((double) x[i * k + c] * w[j * k + c]);
                }
                double got = s.getAtIndex(ValueLayout.JAVA_FLOAT_UNALIGNED, i * n + j);
                assertTrue(Math.abs(got - ref) <= 0.03 * mag, got + " vs " + ref);
            }
        }
    }

    private static byte[] bytes(float[] v) {
        byte[] b = new byte[v.length * 4];
        MemorySegment s = MemorySegment.ofArray(b);
        for (int i = 0; i < v.length; i++) {
            s.setAtIndex(ValueLayout.JAVA_FLOAT_UNALIGNED, i, v[i]);
        }
        return b;
    }

    @Test
    void badSettingsAndCodesAreNamed() throws IOException {
        Map<String, CliTest.T> in = new LinkedHashMap<>();
        in.put("a", i8(new byte[] {1, 2, 3, 4}, 2, 2));
        in.put("w", i8(new byte[] {1, 1, 1, 9}, 2, 2));
        Path inFile = dir.resolve("bad.safetensors"), out = dir.resolve("o.safetensors");
        write(inFile, in);
        CliTest.Result r = qkern("run", "apmm.matmul", inFile, out, "--set", "a_bits=9", "w_bits=4");
        assertNotEquals(0, r.code());
        assertContains(r.err(), "a_bits 9 is outside 1..8");
        r = qkern("run", "apmm.matmul", inFile, out, "--set", "a_bits=4", "w_bits=3");
        assertNotEquals(0, r.code());
        assertContains(r.err(), "codes[1, 1] = 9 is not a signed 3-bit code");
        r = qkern("run", "apmm.matmul", inFile, out, "--set", "a_bits=4", "w_bits=4", "format=ternary");
        assertNotEquals(0, r.code());
        assertContains(r.err(), "ternary");
        in.put("w", i8(new byte[] {1, 1, 1, 1, 1, 1}, 2, 3));
        write(inFile, in);
        r = qkern("run", "apmm.matmul", inFile, out, "--set", "a_bits=4", "w_bits=4");
        assertNotEquals(0, r.code());
        assertContains(r.err(), "a has K = 2 columns but w has 3");
        Map<String, CliTest.T> lin = new LinkedHashMap<>();
        lin.put("x", new CliTest.T(DType.F32, new long[] {1, 8}, new byte[32]));
        lin.put("w", new CliTest.T(DType.F32, new long[] {1, 8}, new byte[32]));
        write(inFile, lin);
        r = qkern("run", "apmm.linear", inFile, out, "--set", "group=48");
        assertNotEquals(0, r.code());
        assertContains(r.err(), "group 48");
        assertContains(expect(0, "run", "--list").out(), "apmm.matmul", "apmm.linear");
    }

    @Test
    void benchApmmJsonLinesCarryBitsPathAndTops() {
        CliTest.Result r = expect(0, "bench", "apmm", "--quick", "--json", "--device", "cpu");
        List<String> paths = new java.util.ArrayList<>();
        for (String line : r.out().strip().split("\n")) {
            @SuppressWarnings("unchecked")
            Map<String, Object> row = (Map<String, Object>) Json.parse(line);
            assertEquals(BenchCommandTest.FIELDS, row.keySet().stream().limit(BenchCommandTest.FIELDS.size()).toList(),
                    line);
            assertEquals("apmm_matmul", row.get("kernel"));
            for (String f : List.of("m", "w_bits", "a_bits", "path", "tops")) {
                assertTrue(row.containsKey(f), f + " in " + line);
            }
            assertTrue(((Number) row.get("tops")).doubleValue() > 0, line);
            paths.add(row.get("w_bits") + "/" + row.get("requested") + "/" + row.get("path"));
        }
        assertEquals(3, paths.size(), r.out());
        assertTrue(paths.get(1).startsWith("1/auto/") && paths.get(1).endsWith("bitserial"), paths.toString());
        assertTrue(paths.get(2).startsWith("1/int8/") && paths.get(2).contains("int8"), paths.toString());
        assertTrue(expect(0, "bench", "--list").out().contains("apmm "));
    }
}
