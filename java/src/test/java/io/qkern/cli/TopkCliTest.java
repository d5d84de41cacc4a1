package io.qkern.cli;

import static io.qkern.cli.CliTest.expect;
import static io.qkern.cli.CliTest.tensors;
import static io.qkern.cli.CliTest.write;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.qkern.DType;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** {@code qkern run topk} and {@code qkern run dgc.step}. */
class TopkCliTest {
    @TempDir
    Path dir;

    private final Random rnd = new Random();

    static byte[] f32(float... v) {
        ByteBuffer b = ByteBuffer.allocate(4 * v.length).order(ByteOrder.LITTLE_ENDIAN);
        for (float f : v) {
            b.putFloat(f);
        }
        return b.array();
    }

    static float[] floats(byte[] b) {
        ByteBuffer bb = ByteBuffer.wrap(b).order(ByteOrder.LITTLE_ENDIAN);
        float[] f = new float[b.length / 4];
        for (int i = 0; i < f.length; i++) {
            f[i] = bb.getFloat();
        }
        return f;
    }

    static long[] longs(byte[] b) {
        ByteBuffer bb = ByteBuffer.wrap(b).order(ByteOrder.LITTLE_ENDIAN);
        long[] l = new long[b.length / 8];
        for (int i = 0; i < l.length; i++) {
            l[i] = bb.getLong();
        }
        return l;
    }

    @Test
    void topkWritesIndicesByDescendingMagnitudeWithTiesToTheLowerIndex() throws IOException {
        Path in = dir.resolve("x.safetensors"), out = dir.resolve("top.safetensors");
        write(in, Map.of("x", new CliTest.T(DType.F32, new long[] {8}, f32(1, -7, 3, 7, -0.5f, 3, 0, -3))));
        expect(0, "run", "topk", in, out, "--set", "k=4");
        var t = tensors(out);
        assertEquals(List.of("indices", "values"), List.copyOf(t.keySet()));
        assertEquals(DType.I64, t.get("indices").dtype());
        assertArrayEquals(new long[] {4}, t.get("indices").shape());
        assertArrayEquals(new long[] {1, 3, 2, 5}, longs(t.get("indices").data()));
        assertArrayEquals(new float[] {-7, 7, 3, 3}, floats(t.get("values").data()));
        expect(0, "run", "topk", in, out, "--set", "k=2", "order=smallest");
        assertArrayEquals(new long[] {1, 7}, longs(tensors(out).get("indices").data()));
        assertTrue(expect(1, "run", "topk", in, out, "--set", "k=9").err().contains("k = 9"));
    }

    @Test
    void topkReportsNanWithItsIndex() throws IOException {
        Path in = dir.resolve("x.safetensors"), out = dir.resolve("top.safetensors");
        write(in, Map.of("x", new CliTest.T(DType.F32, new long[] {4}, f32(1, Float.NaN, 3, 4))));
        String err = expect(1, "run", "topk", in, out, "--set", "k=1").err();
        assertTrue(err.contains("\"x\"") && err.contains("flat index 1"), err);
    }

    @Test
    void dgcStepUpdatesMomentumAndResidualAndSendsTheTopRatio() throws IOException {
        int rows = 200, cols = 100, n = rows * cols;
        float[] g = new float[n], u = new float[n], v = new float[n];
        for (int i = 0; i < n; i++) {
            g[i] = (float) rnd.nextGaussian();
            u[i] = (float) rnd.nextGaussian() * 0.1f;
            v[i] = (float) rnd.nextGaussian() * 0.1f;
        }
        Path in = dir.resolve("state.safetensors"), out = dir.resolve("step.safetensors");
        Map<String, CliTest.T> ins = new LinkedHashMap<>();
        ins.put("grad", new CliTest.T(DType.F32, new long[] {rows, cols}, f32(g)));
        ins.put("u", new CliTest.T(DType.F32, new long[] {rows, cols}, f32(u)));
        ins.put("v", new CliTest.T(DType.F32, new long[] {rows, cols}, f32(v)));
        write(in, ins);
        expect(0, "run", "dgc.step", in, out, "--set", "momentum=0.9", "ratio=0.01", "nesterov=false");
        var t = tensors(out);
        assertEquals(DType.I32, t.get("indices").dtype());
        assertArrayEquals(new long[] {200}, t.get("indices").shape());
        ByteBuffer ib = ByteBuffer.wrap(t.get("indices").data()).order(ByteOrder.LITTLE_ENDIAN);
        float[] sent = floats(t.get("values").data()), u2 = floats(t.get("u").data()), v2 = floats(t.get("v").data());
        float[] eu = new float[n], ev = new float[n];
        for (int i = 0; i < n; i++) {
            eu[i] = 0.9f * u[i] + g[i];
            ev[i] = v[i] + eu[i];
        }
        boolean[] hit = new boolean[n];
        float smallestSent = Float.MAX_VALUE;
        for (int j = 0; j < 200; j++) {
            int i = ib.getInt();
            hit[i] = true;
            assertEquals(ev[i], sent[j], 0f);
            smallestSent = Math.min(smallestSent, Math.abs(sent[j]));
        }
        for (int i = 0; i < n; i++) {
            assertEquals(hit[i] ? 0f : eu[i], u2[i], 0f, "u at " + i);
            assertEquals(hit[i] ? 0f : ev[i], v2[i], 0f, "v at " + i);
            if (!hit[i]) {
                assertTrue(Math.abs(ev[i]) <= smallestSent, "unsent element larger than a sent one at " + i);
            }
        }
    }
}
