package io.qkern.attention;

import io.qkern.CpuPaths;
import static io.qkern.attention.AttentionFixtures.assertClose;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.qkern.DType;
import io.qkern.Qkern;
import io.qkern.QkernException;
import io.qkern.Tensor;
import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import java.util.stream.IntStream;
import java.util.stream.Stream;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * Paged decode on every CPU path against a float64 dense reference (the sequence's pages gathered
 * into dense K/V): awkward lengths, GQA/MHA ratios, random non-monotonic and shared block tables,
 * padded and CSR tables, split-KV partitions, NaN in every unused slot.
 */
class PagedDecodeTest {
    private static final long SEED = System.nanoTime();

    @AfterEach
    void restorePath() {
        Qkern.setCpuPath("auto");
    }

    record Case(int hq, int hkv, int headDim, int blockSize, DType dtype, int[] lens) {}

    static Stream<Arguments> cases() {
        SplittableRandom rng = new SplittableRandom(SEED);
        List<Arguments> out = new ArrayList<>();
        for (String path : CpuPaths.available()) {
            int[][] heads = {{32, 8}, {40, 40}, {64, 8}};
            for (int[] h : heads) {
                for (DType dt : List.of(DType.F32, DType.F16, DType.BF16)) {
                    int bs = List.of(8, 16, 32, 256).get(rng.nextInt(4));
                    // lengths 1, block_size +- 1, 511/512/513 and an empty sequence in one batch
                    int[] lens = {1, bs - 1, bs, bs + 1, 511, 512, 513, 0};
                    int d = h[0] == 40 ? 64 : 128;
                    out.add(Arguments.of(path, new Case(h[0], h[1], d, bs, dt, lens), rng.nextLong()));
                }
            }
            out.add(Arguments.of(path, new Case(6, 3, 24, 16, DType.F32, new int[] {37, 3}), rng.nextLong()));
            out.add(Arguments.of(path, new Case(4, 1, 7, 8, DType.BF16, new int[] {20}), rng.nextLong()));
            // groups the SIMD kernels tile as 4 + 1, 4 + 2 and 4 + 2 + 1 heads; BF16 head_dim a
            // multiple of 16 (rows widened 16 at a time) and not (8 at a time)
            out.add(Arguments.of(path, new Case(10, 2, 48, 16, DType.BF16, new int[] {33, 17, 1}), rng.nextLong()));
            out.add(Arguments.of(path, new Case(12, 2, 32, 8, DType.F16, new int[] {40, 7}), rng.nextLong()));
            out.add(Arguments.of(path, new Case(14, 2, 40, 16, DType.BF16, new int[] {17, 15}), rng.nextLong()));
        }
        return out.stream();
    }

    @ParameterizedTest(name = "{0} {1}")
    @MethodSource("cases")
    void matchesDenseFloat64(String path, Case c, long seed) {
        Qkern.setCpuPath(path);
        SplittableRandom rng = new SplittableRandom(seed);
        int batch = c.lens().length;
        int[] pagesPer = IntStream.of(c.lens()).map(l -> (l + c.blockSize() - 1) / c.blockSize()).toArray();
        int total = IntStream.of(pagesPer).sum();
        // shared blocks: sequence 0's first block also starts sequence 1 (when both have a full one)
        int numBlocks = total + 5;
        int[] perm = shuffled(numBlocks, rng);  // non-monotonic block ids
        int[][] tables = new int[batch][];
        int next = 0;
        for (int b = 0; b < batch; b++) {
            tables[b] = new int[pagesPer[b] + rng.nextInt(3)];  // padded rows of different lengths
            for (int j = 0; j < tables[b].length; j++) {
                tables[b][j] = j < pagesPer[b] ? perm[next++] : -1 - rng.nextInt(1000);  // unused entries: garbage
            }
        }
        boolean share = batch > 1 && c.lens()[0] >= c.blockSize() && c.lens()[1] > c.blockSize();
        if (share) {
            tables[1][0] = tables[0][0];
        }
        try (PagedKvCache cache = AttentionFixtures.poisonedCache(numBlocks, c.blockSize(), c.hkv(), c.headDim(), c.dtype())) {
            for (int b = 0; b < batch; b++) {
                int from = share && b == 1 ? c.blockSize() : 0;  // the shared block is written once, by sequence 0
                int[] blocks = java.util.Arrays.copyOfRange(tables[b], from / c.blockSize(), tables[b].length);
                AttentionFixtures.writeTokens(cache, blocks, c.lens()[b] - from, rng);
            }
            float[] kAll = cache.key(0).toFloatArray();
            float[] vAll = cache.value(0).toFloatArray();
            int d = c.headDim();
            float[] q = AttentionFixtures.gaussian(rng, batch * c.hq() * d);
            float scale = (float) (1 / Math.sqrt(d));
            double tol = c.dtype() == DType.F32 ? 2e-5 : 5e-5;
            List<double[][]> ref = new ArrayList<>();
            for (int b = 0; b < batch; b++) {
                float[] qb = java.util.Arrays.copyOfRange(q, b * c.hq() * d, (b + 1) * c.hq() * d);
                ref.add(AttentionFixtures.reference(kAll, vAll, cache.spec(), tables[b], c.lens()[b], qb, c.hq(), scale));
            }
            for (int partition : new int[] {0, 1, 3}) {
                try (Tensor qt = Tensor.ofFloats(q, batch, c.hq(), d);
                        PagedAttention.Result padded = PagedAttention.decode(qt, cache, 0, tables, c.lens(), scale, partition);
                        PagedAttention.Result csr = PagedAttention.decode(qt, cache, 0, csrOf(tables, c.lens(), c.blockSize()),
                                scale, partition)) {
                    check(ref, padded, c, "padded p=" + partition, tol);
                    check(ref, csr, c, "csr p=" + partition, tol);
                }
            }
        }
    }

    private static void check(List<double[][]> ref, PagedAttention.Result r, Case c, String what, double tol) {
        float[] out = r.out().toFloatArray();
        float[] lse = r.lse().toFloatArray();
        int d = c.headDim();
        for (int b = 0; b < ref.size(); b++) {
            float[] ob = java.util.Arrays.copyOfRange(out, b * c.hq() * d, (b + 1) * c.hq() * d);
            float[] lb = java.util.Arrays.copyOfRange(lse, b * c.hq(), (b + 1) * c.hq());
            assertClose(what + " seq " + b + " (len " + c.lens()[b] + ") out", ref.get(b)[0], ob, tol);
            assertClose(what + " seq " + b + " lse", ref.get(b)[1], lb, tol);
            if (c.lens()[b] == 0) {  // defined result, no NaN
                for (int i = 0; i < ob.length; i++) {
                    assertEquals(0f, ob[i], what + ": empty sequence output");
                }
                for (float l : lb) {
                    assertEquals(Float.NEGATIVE_INFINITY, l, what + ": empty sequence lse");
                }
            }
        }
    }

    static PagedAttention.CsrPages csrOf(int[][] tables, int[] lens, int bs) {
        int batch = lens.length;
        int[] indptr = new int[batch + 1];
        List<Integer> idx = new ArrayList<>();
        int[] last = new int[batch];
        for (int b = 0; b < batch; b++) {
            int pages = (lens[b] + bs - 1) / bs;
            for (int j = 0; j < pages; j++) {
                idx.add(tables[b][j]);
            }
            indptr[b + 1] = idx.size();
            last[b] = pages == 0 ? 0 : lens[b] - (pages - 1) * bs;
        }
        return new PagedAttention.CsrPages(indptr, idx.stream().mapToInt(Integer::intValue).toArray(), last);
    }

    static int[] shuffled(int n, SplittableRandom rng) {
        int[] p = IntStream.range(0, n).toArray();
        for (int i = n - 1; i > 0; i--) {
            int j = rng.nextInt(i + 1);
            int t = p[i];
            p[i] = p[j];
            p[j] = t;
        }
        return p;
    }

    // ---- bad input: clear errors, never an out-of-bounds read ----------------------------------------

    @Test
    void badTablesAndShapesAreRefused() {
        try (PagedKvCache cache = AttentionFixtures.poisonedCache(4, 16, 2, 8, DType.F32);
                Tensor q = Tensor.ofFloats(new float[2 * 4 * 8], 2, 4, 8)) {
            AttentionFixtures.writeTokens(cache, new int[] {0, 1, 2, 3}, 64, new SplittableRandom(1));
            int[][] tables = {{0, 1}, {2, 3}};
            try (PagedAttention.Result ok = PagedAttention.decode(q, cache, 0, tables, new int[] {20, 32}, 0.3f, 0)) {
                assertTrue(Float.isFinite(ok.out().toFloatArray()[0]));
            }
            QkernException e = assertThrows(QkernException.class,
                    () -> PagedAttention.decode(q, cache, 0, new int[][] {{0, 1}, {2, 4}}, new int[] {20, 32}, 0.3f, 0));
            assertTrue(e.getMessage().contains("block_tables[1][1] = 4"), e.getMessage());
            e = assertThrows(QkernException.class,
                    () -> PagedAttention.decode(q, cache, 0, new int[][] {{0, 1}, {-3, 2}}, new int[] {20, 32}, 0.3f, 0));
            assertTrue(e.getMessage().contains("= -3"), e.getMessage());
            e = assertThrows(QkernException.class,
                    () -> PagedAttention.decode(q, cache, 0, tables, new int[] {20, 33}, 0.3f, 0));
            assertTrue(e.getMessage().contains("seq_lens[1] = 33"), e.getMessage());
            e = assertThrows(QkernException.class, () -> PagedAttention.decode(q, cache, 0,
                    new PagedAttention.CsrPages(new int[] {0, 2, 5}, new int[] {0, 1, 2, 3}, new int[] {16, 16}), 0.3f, 0));
            assertTrue(e.getMessage().contains("kv_indptr[2] = 5"), e.getMessage());
            e = assertThrows(QkernException.class, () -> PagedAttention.decode(q, cache, 0,
                    new PagedAttention.CsrPages(new int[] {0, 2, 4}, new int[] {0, 1, 2, 3}, new int[] {16, 17}), 0.3f, 0));
            assertTrue(e.getMessage().contains("kv_last_page_len[1] = 17"), e.getMessage());
            try (Tensor q3 = Tensor.ofFloats(new float[2 * 3 * 8], 2, 3, 8)) {
                IllegalArgumentException h = assertThrows(IllegalArgumentException.class,
                        () -> PagedAttention.decode(q3, cache, 0, tables, new int[] {20, 32}, 0.3f, 0));
                assertTrue(h.getMessage().contains("3 heads"), h.getMessage());
            }
            try (Tensor q5 = Tensor.ofFloats(new float[2 * 4 * 5], 2, 4, 5)) {
                IllegalArgumentException h = assertThrows(IllegalArgumentException.class,
                        () -> PagedAttention.decode(q5, cache, 0, tables, new int[] {20, 32}, 0.3f, 0));
                assertTrue(h.getMessage().contains("head_dim 5"), h.getMessage());
            }
            assertThrows(IllegalArgumentException.class,
                    () -> PagedAttention.decode(q, cache, 0, tables, new int[] {20}, 0.3f, 0));
            assertThrows(IllegalArgumentException.class,
                    () -> PagedAttention.decode(q, cache, 1, tables, new int[] {20, 32}, 0.3f, 0));
        }
    }

    @Test
    void writeRefusesBadSlotsBeforeWriting() {
        try (PagedKvCache cache = AttentionFixtures.poisonedCache(2, 8, 1, 4, DType.BF16);
                Tensor k = Tensor.ofFloats(new float[] {1, 2, 3, 4, 5, 6, 7, 8}, 2, 1, 4);
                Tensor v = Tensor.ofFloats(new float[] {1, 2, 3, 4, 5, 6, 7, 8}, 2, 1, 4)) {
            byte[] before = cache.key(0).toByteArray();
            QkernException e = assertThrows(QkernException.class, () -> cache.write(0, k, v, new long[] {3, 16}));
            assertTrue(e.getMessage().contains("slot_mapping[1] = 16"), e.getMessage());
            e = assertThrows(QkernException.class, () -> cache.write(0, k, v, new long[] {3, 3}));
            assertTrue(e.getMessage().contains("slot 3"), e.getMessage());
            org.junit.jupiter.api.Assertions.assertArrayEquals(before, cache.key(0).toByteArray());
            cache.write(0, k, v, new long[] {-1, 15});  // negative slot: token skipped
            float[] kk = cache.key(0).toFloatArray();
            assertEquals(5f, kk[15 * 4]);
            assertTrue(Float.isNaN(kk[0]), "slot 0 was not to be written");
        }
    }
}
