package io.qkern.attention;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;

import io.qkern.DType;
import io.qkern.Tensor;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.List;
import java.util.Random;
import java.util.SplittableRandom;
import org.junit.jupiter.api.RepeatedTest;
import org.junit.jupiter.api.Test;

/** Partial results over random partitions of a sequence's blocks, merged in random order, equal the dense result. */
class MergeTest {
    private static final long SEED = System.nanoTime();

    @RepeatedTest(6)
    void randomPartitionsMergedInRandomOrderEqualDense(org.junit.jupiter.api.RepetitionInfo rep) {
        SplittableRandom rng = new SplittableRandom(SEED + rep.getCurrentRepetition());
        int bs = 16;
        int hq = 8;
        int hkv = 2;
        int d = 32;
        int len = 1 + rng.nextInt(700);
        int pages = (len + bs - 1) / bs;
        int[] table = PagedDecodeTest.shuffled(pages + 4, rng);
        table = Arrays.copyOf(table, pages);
        try (PagedKvCache cache = AttentionFixtures.poisonedCache(pages + 4, bs, hkv, d, DType.F32)) {
            AttentionFixtures.writeTokens(cache, table, len, rng);
            float[] q = AttentionFixtures.gaussian(rng, hq * d);
            float scale = 0.2f;
            double[][] ref = AttentionFixtures.reference(cache.key(0).toFloatArray(), cache.value(0).toFloatArray(),
                    cache.spec(), table, len, q, hq, scale);
            // random partition of the pages into k parts (some possibly empty); the partial last
            // page goes last in its part
            int k = 1 + rng.nextInt(6);
            List<List<Integer>> parts = new ArrayList<>();
            for (int i = 0; i < k; i++) {
                parts.add(new ArrayList<>());
            }
            for (int j = 0; j < pages; j++) {
                parts.get(rng.nextInt(k)).add(j);
            }
            List<float[][]> partials = new ArrayList<>();
            try (Tensor qt = Tensor.ofFloats(q, 1, hq, d)) {
                for (List<Integer> part : parts) {
                    Collections.shuffle(part, new Random(rng.nextLong()));
                    int lastIdx = part.indexOf(pages - 1);
                    if (lastIdx >= 0) {
                        part.add(part.remove(lastIdx));
                    }
                    int[] ids = part.stream().mapToInt(j -> 0).toArray();
                    for (int i = 0; i < ids.length; i++) {
                        ids[i] = table[part.get(i)];
                    }
                    int last = part.isEmpty() ? 0 : part.get(part.size() - 1) == pages - 1 ? len - (pages - 1) * bs : bs;
                    try (PagedAttention.Result r = PagedAttention.decode(qt, cache, 0,
                            new PagedAttention.CsrPages(new int[] {0, ids.length}, ids, new int[] {last}), scale, 0)) {
                        partials.add(new float[][] {r.out().toFloatArray(), r.lse().toFloatArray()});
                    }
                }
            }
            Collections.shuffle(partials, new Random(rng.nextLong()));
            try (Tensor accO = Tensor.ofFloats(partials.get(0)[0], hq, d);
                    Tensor accL = Tensor.ofFloats(partials.get(0)[1], hq)) {
                for (int i = 1; i < partials.size(); i++) {
                    try (Tensor o = Tensor.ofFloats(partials.get(i)[0], hq, d);
                            Tensor l = Tensor.ofFloats(partials.get(i)[1], hq)) {
                        PagedAttention.mergeInto(accO, accL, o, l, accO, accL);
                    }
                }
                AttentionFixtures.assertClose("merged out (" + k + " parts, len " + len + ")", ref[0],
                        accO.toFloatArray(), 3e-5);
                AttentionFixtures.assertClose("merged lse", ref[1], accL.toFloatArray(), 3e-5);
            }
        }
    }

    @Test
    void emptyPartialsNeverProduceNaN() {
        float inf = Float.NEGATIVE_INFINITY;
        try (Tensor oa = Tensor.ofFloats(new float[] {Float.NaN, Float.NaN, 1, 2}, 2, 2);
                Tensor la = Tensor.ofFloats(new float[] {inf, inf}, 2);
                Tensor ob = Tensor.ofFloats(new float[] {0, 0, 5, 6}, 2, 2);
                Tensor lb = Tensor.ofFloats(new float[] {inf, 0.5f}, 2);
                PagedAttention.Result r = PagedAttention.merge(oa, la, ob, lb)) {
            float[] o = r.out().toFloatArray();
            float[] l = r.lse().toFloatArray();
            assertEquals(0f, o[0]);
            assertEquals(0f, o[1]);
            assertEquals(inf, l[0]);
            assertEquals(5f, o[2]);
            assertEquals(6f, o[3]);
            assertEquals(0.5f, l[1]);
            for (float v : o) {
                assertFalse(Float.isNaN(v));
            }
        }
    }

    @Test
    void mismatchedShapesAreRefused() {
        try (Tensor oa = Tensor.ofFloats(new float[6], 2, 3); Tensor la = Tensor.ofFloats(new float[2], 2);
                Tensor ob = Tensor.ofFloats(new float[4], 2, 2); Tensor lb = Tensor.ofFloats(new float[2], 2)) {
            assertThrows(RuntimeException.class, () -> PagedAttention.merge(oa, la, ob, lb));
        }
    }
}
