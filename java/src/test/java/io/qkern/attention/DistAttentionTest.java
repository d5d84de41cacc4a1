package io.qkern.attention;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.qkern.DType;
import io.qkern.Tensor;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Random;
import java.util.Set;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;

/**
 * DistAttention across CPU instances in one process: a sequence outgrows its home instance and
 * borrows blocks; the distributed decode equals single-instance attention (and the float64
 * reference) and moves only O(heads x head_dim) bytes per token, independent of context length.
 */
class DistAttentionTest {
    private static final long SEED = System.nanoTime();

    @Test
    void spreadSequenceEqualsSingleInstanceAndMovesNoKv() {
        SplittableRandom rng = new SplittableRandom(SEED);
        int bs = 16;
        int hq = 8;
        int hkv = 2;
        int d = 32;
        PagedKvCache.Spec spec = new PagedKvCache.Spec(1, 0, bs, hkv, d, DType.F32);
        // home instance 0 is small: the sequence must borrow from 1 and 2 (2 has the most spare)
        try (DistAttention dist = new DistAttention(spec, new int[] {6, 10, 30}, 2);
                PagedKvCache single = AttentionFixtures.poisonedCache(64, bs, hkv, d, DType.F32)) {
            DistAttention.Sequence seq = dist.newSequence(0);
            int len = 0;
            List<Integer> singleTable = new ArrayList<>();
            float scale = 0.15f;
            long[] bytesPerStep = new long[2];
            int[] remotesPerStep = new int[2];
            for (int step = 0; step < 2; step++) {
                int grow = step == 0 ? 150 : 350;  // 150 tokens, then 500
                for (int i = 0; i < grow; i++, len++) {
                    float[] k = AttentionFixtures.gaussian(rng, hkv * d);
                    float[] v = AttentionFixtures.gaussian(rng, hkv * d);
                    seq.append(k, v);
                    if (len % bs == 0) {
                        singleTable.add(singleTable.size());
                    }
                    try (Tensor kt = Tensor.ofFloats(k, 1, hkv, d); Tensor vt = Tensor.ofFloats(v, 1, hkv, d)) {
                        single.write(0, kt, vt, new long[] {(long) singleTable.get(len / bs) * bs + len % bs});
                    }
                }
                float[] q = AttentionFixtures.gaussian(rng, hq * d);
                Set<Integer> remotes = new HashSet<>();
                for (DistAttention.Placement p : seq.placements()) {
                    if (p.instance() != 0) {
                        remotes.add(p.instance());
                    }
                }
                remotesPerStep[step] = remotes.size();
                long kvRows = dist.transport().kvRowBytes();
                assertTrue(kvRows > 0 && kvRows % (2L * hkv * d * Float.BYTES) == 0,
                        "appends move one K and one V row per token stored remotely, got " + kvRows + " bytes");
                dist.transport().reset();
                float[][] got = seq.decode(q, hq, scale, new Random(rng.nextLong()));
                bytesPerStep[step] = dist.transport().totalBytes();
                int[] table = singleTable.stream().mapToInt(Integer::intValue).toArray();
                double[][] ref = AttentionFixtures.reference(single.key(0).toFloatArray(), single.value(0).toFloatArray(),
                        single.spec(), table, len, q, hq, scale);
                AttentionFixtures.assertClose("dist out at " + len, ref[0], got[0], 3e-5);
                AttentionFixtures.assertClose("dist lse at " + len, ref[1], got[1], 3e-5);
                try (Tensor qt = Tensor.ofFloats(q, 1, hq, d);
                        PagedAttention.Result r = PagedAttention.decode(qt, single, 0, new int[][] {table}, new int[] {len},
                                scale, 0)) {
                    AttentionFixtures.assertClose("dist vs single-instance", toDouble(r.out().toFloatArray()), got[0], 3e-5);
                }
            }
            Set<Integer> where = new HashSet<>();
            for (DistAttention.Placement p : seq.placements()) {
                where.add(p.instance());
            }
            assertEquals(Set.of(0, 1, 2), where, "the sequence's blocks should span all three instances");
            // per remote instance: q out (hq*d floats), out + lse back (hq*d + hq floats); never KV
            long perRemote = (2L * hq * d + hq) * Float.BYTES;
            assertEquals(1, remotesPerStep[0], "at 150 tokens the home borrowed from the instance with most spare only");
            assertEquals(2, remotesPerStep[1]);
            assertEquals(remotesPerStep[0] * perRemote, bytesPerStep[0], "decode bytes at 150 tokens");
            assertEquals(remotesPerStep[1] * perRemote, bytesPerStep[1],
                    "decode bytes at 500 tokens: per remote instance, independent of context length");
            long kvBytes = 500L * hkv * d * 2 * Float.BYTES;
            assertTrue(bytesPerStep[1] * 50 < kvBytes, "decode traffic must be far below the KV size");
            assertTrue(dist.globalView().owes(0, 2) > 0, "instance 0 borrowed from instance 2, which had the most spare");
            seq.free();
            assertEquals(0, dist.globalView().owes(0, 1) + dist.globalView().owes(0, 2));
            assertEquals(6, dist.instance(0).freeBlocks());
        }
    }

    @Test
    void shortLenderRefusesAndGlobalViewPicksTheOneWithSpare() {
        PagedKvCache.Spec spec = new PagedKvCache.Spec(1, 0, 8, 1, 8, DType.F32);
        try (DistAttention dist = new DistAttention(spec, new int[] {4, 3, 9}, 3)) {
            DistAttention.Instance short1 = dist.instance(1);
            assertTrue(short1.isShort());
            assertNull(short1.lend(0, 1), "an instance at its reserve must refuse to lend");
            assertNull(dist.instance(2).lend(0, 7), "lending 7 would leave 2 < reserve 3");
            DistAttention.Sequence s = dist.newSequence(0);
            float[] row = new float[8];
            for (int i = 0; i < 8 * 6; i++) {  // 6 blocks: 1 own (4 - reserve 3), then borrowed
                s.append(row, row);
            }
            assertEquals(0, dist.globalView().owes(0, 1), "the short instance 1 was not asked");
            assertEquals(5, dist.globalView().owes(0, 2));
            assertThrows(KvCacheFullException.class, () -> {
                for (int i = 0; i < 8 * 2; i++) {
                    s.append(row, row);
                }
            });
            assertEquals(java.util.Map.of(0, 6), dist.instance(2).lentTo(), "instance 2 lent 6 blocks to instance 0");
            s.free();
            assertEquals(java.util.Map.of(), dist.instance(2).lentTo());
        }
    }

    private static double[] toDouble(float[] f) {
        double[] d = new double[f.length];
        for (int i = 0; i < f.length; i++) {
            d[i] = f[i];
        }
        return d;
    }
}
