package io.qkern.cli;

import static io.qkern.cli.CliTest.assertContains;
import static io.qkern.cli.CliTest.expect;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.qkern.DType;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Path;
import java.util.Map;
import java.util.Random;
import java.util.TreeMap;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** {@code qkern run attention.paged_decode / attention.merge} over safetensors files. */
class AttentionCliTest {
    @TempDir
    Path dir;

    static CliTest.T f32(float[] v, long... shape) {
        ByteBuffer b = ByteBuffer.allocate(v.length * 4).order(ByteOrder.LITTLE_ENDIAN);
        for (float x : v) {
            b.putFloat(x);
        }
        return new CliTest.T(DType.F32, shape, b.array());
    }

    static CliTest.T i32(int[] v, long... shape) {
        ByteBuffer b = ByteBuffer.allocate(v.length * 4).order(ByteOrder.LITTLE_ENDIAN);
        for (int x : v) {
            b.putInt(x);
        }
        return new CliTest.T(DType.I32, shape, b.array());
    }

    static float[] floats(CliTest.T t) {
        ByteBuffer b = ByteBuffer.wrap(t.data()).order(ByteOrder.LITTLE_ENDIAN);
        float[] f = new float[t.data().length / 4];
        for (int i = 0; i < f.length; i++) {
            f[i] = b.getFloat();
        }
        return f;
    }

    @Test
    void pagedDecodeMatchesAFloat64Reference() throws IOException {
        Random rnd = new Random(7);
        int blocks = 5;
        int bs = 8;
        int hkv = 2;
        int hq = 4;
        int d = 16;
        float[] k = new float[blocks * bs * hkv * d];
        float[] v = new float[k.length];
        for (int i = 0; i < k.length; i++) {
            k[i] = (float) rnd.nextGaussian();
            v[i] = (float) rnd.nextGaussian();
        }
        float[] q = new float[2 * hq * d];
        for (int i = 0; i < q.length; i++) {
            q[i] = (float) rnd.nextGaussian();
        }
        int[] tables = {3, 0, 4, 1, -1, -1};  // sequence 0: blocks 3, 0, 4; sequence 1: block 1
        int[] lens = {19, 8};
        Map<String, CliTest.T> in = new TreeMap<>();
        in.put("q", f32(q, 2, hq, d));
        in.put("k_cache", f32(k, blocks, bs, hkv, d));
        in.put("v_cache", f32(v, blocks, bs, hkv, d));
        in.put("block_tables", i32(tables, 2, 3));
        in.put("seq_lens", i32(lens, 2));
        Path inFile = dir.resolve("in.safetensors");
        Path outFile = dir.resolve("out.safetensors");
        CliTest.write(inFile, in);
        expect(0, "run", "attention.paged_decode", inFile, outFile, "--set", "scale=0.25");
        Map<String, CliTest.T> out = CliTest.tensors(outFile);
        float[] o = floats(out.get("out"));
        float[] lse = floats(out.get("lse"));
        assertEquals(2 * hq * d, o.length);
        for (int b = 0; b < 2; b++) {
            for (int h = 0; h < hq; h++) {
                int kvh = h / (hq / hkv);
                double[] s = new double[lens[b]];
                double m = Double.NEGATIVE_INFINITY;
                for (int t = 0; t < lens[b]; t++) {
                    int base = ((tables[b * 3 + t / bs] * bs + t % bs) * hkv + kvh) * d;
                    for (int i = 0; i < d; i++) {
                        s[t] += (double) q[(b * hq + h) * d + i] * k[base + i];
                    }
                    s[t] *= 0.25;
                    m = Math.max(m, s[t]);
                }
                double sum = 0;
                for (double x : s) {
                    sum += Math.exp(x - m);
                }
                assertEquals(m + Math.log(sum), lse[b * hq + h], 1e-5);
                for (int i = 0; i < d; i++) {
                    double acc = 0;
                    for (int t = 0; t < lens[b]; t++) {
                        int base = ((tables[b * 3 + t / bs] * bs + t % bs) * hkv + kvh) * d;
                        acc += Math.exp(s[t] - m) / sum * v[base + i];
                    }
                    assertEquals(acc, o[(b * hq + h) * d + i], 1e-5);
                }
            }
        }
        // a block id outside the cache: a clear error, exit 1
        tables[4] = 5;
        lens[1] = 9;
        in.put("block_tables", i32(tables, 2, 3));
        in.put("seq_lens", i32(lens, 2));
        CliTest.write(inFile, in);
        assertContains(expect(1, "run", "attention.paged_decode", inFile, outFile).err(), "block_tables[1][1] = 5");
        assertContains(expect(1, "run", "attention.paged_decode", inFile, outFile, "--set", "scale=big").err(),
                "scale=big");
    }

    @Test
    void mergeCombinesTwoPartials() throws IOException {
        Map<String, CliTest.T> in = new TreeMap<>();
        float inf = Float.NEGATIVE_INFINITY;
        in.put("out_a", f32(new float[] {1, 2, 9, 9}, 2, 2));
        in.put("lse_a", f32(new float[] {0, inf}, 2));
        in.put("out_b", f32(new float[] {3, 4, 5, 6}, 2, 2));
        in.put("lse_b", f32(new float[] {0, 1}, 2));
        Path inFile = dir.resolve("m.safetensors");
        Path outFile = dir.resolve("mo.safetensors");
        CliTest.write(inFile, in);
        expect(0, "run", "attention.merge", inFile, outFile);
        Map<String, CliTest.T> out = CliTest.tensors(outFile);
        float[] o = floats(out.get("out"));
        float[] l = floats(out.get("lse"));
        assertEquals(2f, o[0], 1e-6);
        assertEquals(3f, o[1], 1e-6);
        assertEquals(5f, o[2]);
        assertEquals(6f, o[3]);
        assertEquals((float) Math.log(2), l[0], 1e-6);
        assertEquals(1f, l[1]);
        assertTrue(expect(0, "run", "--list").out().contains("attention.paged_decode"));
    }
}
