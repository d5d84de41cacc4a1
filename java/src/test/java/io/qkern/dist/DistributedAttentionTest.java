package io.qkern.dist;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.qkern.DType;
import io.qkern.attention.KvCacheFullException;
import io.qkern.attention.PagedKvCache;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import org.junit.jupiter.api.Test;

/**
 * DistAttention across in-process ranks against a float64 dense attention over every token, with
 * blocks spread by lending, bytes on the wire counted, and the usual failure cases.
 */
class DistributedAttentionTest {
    static final int BLOCK = 16;
    static final int KV_HEADS = 4;
    static final int HEAD_DIM = 32;
    static final int Q_HEADS = 8;
    static final float SCALE = (float) (1 / Math.sqrt(HEAD_DIM));

    static PagedKvCache.Spec spec(int blocks) {
        return new PagedKvCache.Spec(1, blocks, BLOCK, KV_HEADS, HEAD_DIM, DType.F32);
    }

    static float[] row(Random rnd, int n) {
        float[] r = new float[n];
        for (int i = 0; i < n; i++) {
            r[i] = (float) rnd.nextGaussian();
        }
        return r;
    }

    /** Dense float64 attention: out [Hq * D], lse [Hq]. */
    static double[][] reference(float[] q, List<float[]> keys, List<float[]> values) {
        double[] out = new double[Q_HEADS * HEAD_DIM];
        double[] lse = new double[Q_HEADS];
        int group = Q_HEADS / KV_HEADS;
        for (int h = 0; h < Q_HEADS; h++) {
            int kv = h / group;
            double[] s = new double[keys.size()];
            double max = Double.NEGATIVE_INFINITY;
            for (int t = 0; t < keys.size(); t++) {
                double dot = 0;
                for (int i = 0; i < HEAD_DIM; i++) {
                    dot += (double) q[h * HEAD_DIM + i] * keys.get(t)[kv * HEAD_DIM + i];
                }
                s[t] = dot * SCALE;
                max = Math.max(max, s[t]);
            }
            double sum = 0;
            for (int t = 0; t < keys.size(); t++) {
                double p = Math.exp(s[t] - max);
                sum += p;
                for (int i = 0; i < HEAD_DIM; i++) {
                    out[h * HEAD_DIM + i] += p * values.get(t)[kv * HEAD_DIM + i];
                }
            }
            for (int i = 0; i < HEAD_DIM; i++) {
                out[h * HEAD_DIM + i] /= sum;
            }
            lse[h] = max + Math.log(sum);
        }
        return new double[][] {out, lse};
    }

    record Outcome(float[][] result, List<DistributedAttention.BlockPlacement> placements, long decodeBytes,
            long appendBytes, int loanedFromOne, int freeAfter) {
    }

    /** Runs one sequence of {@code length} tokens homed on rank 0 and one decode step; results per rank. */
    static List<Outcome> run(int[] poolPerRank, int reserve, int length, long seed, boolean shuffleMerge) {
        int ranks = poolPerRank.length;
        Random data = new Random(seed);
        List<float[]> keys = new ArrayList<>();
        List<float[]> values = new ArrayList<>();
        for (int t = 0; t < length; t++) {
            keys.add(row(data, KV_HEADS * HEAD_DIM));
            values.add(row(data, KV_HEADS * HEAD_DIM));
        }
        float[] q = row(data, Q_HEADS * HEAD_DIM);
        DeviceMesh mesh = DeviceMesh.cpu(ranks);
        List<Communicator> comms = mesh.inProcess(Duration.ofSeconds(30));
        try {
            return mesh.run(comms, raw -> {
                CountingCommunicator c = new CountingCommunicator(raw);
                try (DistributedAttention da = new DistributedAttention(c, spec(poolPerRank[c.rank()]), reserve)) {
                    int seq = da.newSequence(0);
                    boolean home = c.rank() == 0;
                    c.reset();
                    for (int t = 0; t < length; t++) {
                        da.append(seq, home ? keys.get(t) : null, home ? values.get(t) : null);
                    }
                    long appendBytes = c.bytesSent();
                    c.reset();
                    float[][] r = da.decode(seq, home ? q : null, Q_HEADS, SCALE, shuffleMerge ? new Random(seed) : null);
                    long decodeBytes = c.bytesSent();
                    var placements = da.placements(seq);
                    int loaned = ranks > 1 ? da.loaned(0, 1) : 0;
                    da.free(seq);
                    assertEquals(0, ranks > 1 ? da.loaned(0, 1) : 0, "loans settled");
                    return new Outcome(r, placements, decodeBytes, appendBytes, loaned, da.freeBlocks());
                }
            });
        } finally {
            comms.forEach(Communicator::close);
        }
    }

    static void assertMatchesReference(float[][] got, int length, long seed) {
        Random data = new Random(seed);
        List<float[]> keys = new ArrayList<>();
        List<float[]> values = new ArrayList<>();
        for (int t = 0; t < length; t++) {
            keys.add(row(data, KV_HEADS * HEAD_DIM));
            values.add(row(data, KV_HEADS * HEAD_DIM));
        }
        double[][] want = reference(row(data, Q_HEADS * HEAD_DIM), keys, values);
        for (int i = 0; i < want[0].length; i++) {
            // each output is a convex combination of |v| <~ 5 values; float32 softmax and merges: ~1e-5
            assertEquals(want[0][i], got[0][i], 2e-5 * (1 + Math.abs(want[0][i])), "out " + i);
        }
        for (int h = 0; h < Q_HEADS; h++) {
            assertEquals(want[1][h], got[1][h], 2e-5 * (1 + Math.abs(want[1][h])), "lse " + h);
        }
    }

    @Test
    void blocksSpreadByLendingAndTheMergedResultEqualsDenseAttention() {
        for (int length : new int[] {1, BLOCK - 1, BLOCK, BLOCK + 1, 100, 161}) {
            // rank 0 has 4 blocks (reserve 2: it uses 2 before borrowing), ranks 1 and 2 have 8 each
            List<Outcome> out = run(new int[] {4, 8, 8}, 2, length, 31 + length, true);
            assertMatchesReference(out.get(0).result(), length, 31 + length);
            assertNull(out.get(1).result());
            int blocks = (length + BLOCK - 1) / BLOCK;
            assertEquals(blocks, out.get(0).placements().size());
            for (Outcome o : out) {
                assertEquals(out.get(0).placements(), o.placements(), "the sequence table is the same on every rank");
            }
            int onHome = (int) out.get(0).placements().stream().filter(p -> p.rank() == 0).count();
            // home uses its blocks above the reserve (2), then borrows; it never gives up its reserve
            assertEquals(Math.min(blocks, 2), onHome, "length " + length);
            assertEquals(new int[] {4, 6, 6}[0], out.get(0).freeAfter(), "free returns every block");
        }
    }

    @Test
    void onlyTheQueryAndPartialsMoveAndTheirSizeDoesNotGrowWithTheSequence() {
        // 2 home blocks, then alternating lenders: every length below spans ranks 0, 1 and 2
        List<Outcome> shortSeq = run(new int[] {4, 20, 20}, 2, 70, 5, false);
        List<Outcome> longSeq = run(new int[] {4, 20, 20}, 2, 500, 6, false);
        long q = (long) Q_HEADS * HEAD_DIM * 4;
        long partial = (long) Q_HEADS * (HEAD_DIM + 1) * 4;
        for (List<Outcome> o : List.of(shortSeq, longSeq)) {
            long total = o.stream().mapToLong(Outcome::decodeBytes).sum();
            assertEquals(2 * q + 2 * partial, total, "home sends q to 2 holders, each returns one partial");
            assertEquals(2 * q, o.get(0).decodeBytes());
        }
        // appends: K and V rows for tokens in remote blocks, plus 2 ints per rank per new block
        Outcome home = longSeq.get(0);
        long remoteTokens = 0;
        for (var p : home.placements()) {
            if (p.rank() != 0) {
                remoteTokens += Math.min(BLOCK, 500 - p.index() * BLOCK);
            }
        }
        assertEquals(remoteTokens * 2L * KV_HEADS * HEAD_DIM * 4 + home.placements().size() * 2L * 8,
                home.appendBytes(), "home's append traffic");
        assertTrue(home.loanedFromOne() > 0);
    }

    @Test
    void oneRankEqualsManyRanksAndAnEmptySequenceIsDefined() {
        List<Outcome> one = run(new int[] {40}, 0, 200, 9, false);
        List<Outcome> four = run(new int[] {3, 4, 5, 40}, 1, 200, 9, true);
        for (int i = 0; i < one.get(0).result()[0].length; i++) {
            assertEquals(one.get(0).result()[0][i], four.get(0).result()[0][i], 1e-5, "out " + i);
        }
        List<Outcome> empty = run(new int[] {4, 4}, 1, 0, 1, false);
        float[][] e = empty.get(0).result();
        for (float v : e[0]) {
            assertEquals(0f, v);
        }
        for (float v : e[1]) {
            assertEquals(Float.NEGATIVE_INFINITY, v);
        }
        assertEquals(0, empty.stream().mapToLong(Outcome::decodeBytes).sum(), "an empty sequence moves nothing");
    }

    @Test
    void aRankAtItsReserveRefusesToLendAndAFullClusterFailsEverywhere() {
        // rank 1 has only its reserve: blocks go to home (1 above its reserve) and rank 2 (3 spare),
        // never rank 1; a fifth block finds nobody with a block to spare
        List<Outcome> out = run(new int[] {3, 2, 5}, 2, 4 * BLOCK, 3, false);
        assertTrue(out.get(0).placements().stream().noneMatch(p -> p.rank() == 1), out.get(0).placements().toString());
        assertEquals(1, out.get(0).placements().stream().filter(p -> p.rank() == 0).count());
        assertThrows(RankFailureException.class, () -> run(new int[] {3, 2, 5}, 2, 4 * BLOCK + 1, 3, false));
        RankFailureException e = assertThrows(RankFailureException.class,
                () -> run(new int[] {1, 1}, 0, 2 * BLOCK + 1, 3, false));
        for (Throwable t : e.failures().values()) {
            if (!(t instanceof CommunicatorException)) {
                assertInstanceOf(KvCacheFullException.class, t);
                assertTrue(t.getMessage().contains("no rank has one to spare above its reserve"), t.getMessage());
            }
        }
        assertInstanceOf(KvCacheFullException.class, e.getCause());
    }

    @Test
    void ranksWithDifferentKvGeometryAreRefusedBeforeAnyBlockMoves() {
        DeviceMesh mesh = DeviceMesh.cpu(2);
        List<Communicator> comms = mesh.inProcess(Duration.ofSeconds(30));
        RankFailureException e = assertThrows(RankFailureException.class, () -> mesh.run(comms, c -> {
            PagedKvCache.Spec s = new PagedKvCache.Spec(1, 4, c.rank() == 0 ? 16 : 32, KV_HEADS, HEAD_DIM, DType.F32);
            try (DistributedAttention da = new DistributedAttention(c, s, 0)) {
                return null;
            }
        }));
        assertTrue(e.getMessage().contains("differs from rank"), e.getMessage());
        comms.forEach(Communicator::close);
    }
}
