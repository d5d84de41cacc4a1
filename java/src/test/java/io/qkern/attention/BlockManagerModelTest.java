package io.qkern.attention;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.SplittableRandom;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.jupiter.api.RepeatedTest;
import org.junit.jupiter.api.RepetitionInfo;
import org.junit.jupiter.api.Test;

/**
 * The block manager against a simple model: thousands of random admit / append / fork / free /
 * swap operations. The model is each sequence's token list; a simulated pool holds one token id
 * per slot and is updated exactly as a caller would (writes at returned slots, copy-on-write and
 * swap copies applied). After every operation each sequence read back through its block table must
 * equal the model, reference counts must equal the number of sequences holding each block, and
 * free + used must account for every block.
 */
class BlockManagerModelTest {
    private static final long SEED = System.nanoTime();

    @RepeatedTest(4)
    void randomOperationsMatchTheModel(RepetitionInfo rep) {
        SplittableRandom rng = new SplittableRandom(SEED + rep.getCurrentRepetition());
        int bs = 8;
        int numBlocks = 64;
        int hostBlocks = 48;
        int watermark = 4;
        BlockManager m = new BlockManager(numBlocks, hostBlocks, bs, watermark);
        int[] pool = new int[numBlocks * bs];
        int[] hostPool = new int[hostBlocks * bs];
        java.util.Arrays.fill(pool, -1);
        Map<Long, List<Integer>> model = new HashMap<>();
        Set<Long> swapped = new HashSet<>();
        long nextId = 0;
        int ops = 4000;
        int prefixHits = 0;
        int cowCopies = 0;
        int fullRefusals = 0;
        // a few shared prompt prefixes so the prefix cache is exercised
        int[][] prefixes = new int[3][];
        for (int i = 0; i < prefixes.length; i++) {
            prefixes[i] = rng.ints(bs * (1 + rng.nextInt(3)), 0, 50).toArray();
        }
        for (int op = 0; op < ops; op++) {
            List<Long> running = model.keySet().stream().filter(s -> !swapped.contains(s)).toList();
            int kind = rng.nextInt(100);
            if (kind < 20 || model.isEmpty()) {  // admit
                int[] prefix = prefixes[rng.nextInt(prefixes.length)];
                int extra = rng.nextInt(2 * bs);
                int[] prompt = new int[rng.nextBoolean() ? prefix.length + extra : extra];
                int off = 0;
                if (prompt.length >= prefix.length && prompt.length == prefix.length + extra) {
                    System.arraycopy(prefix, 0, prompt, 0, prefix.length);
                    off = prefix.length;
                }
                for (int i = off; i < prompt.length; i++) {
                    prompt[i] = rng.nextInt(50);
                }
                long id = nextId++;
                boolean can = m.canAdmit(prompt);
                if (!can) {
                    assertThrows(KvCacheFullException.class, () -> m.admit(id, prompt));
                    fullRefusals++;
                } else {
                    int cached = m.admit(id, prompt);
                    int[] table = m.blockTable(id);
                    // tokens found in the prefix cache must already be in the pool; the caller writes the rest
                    for (int t = 0; t < cached; t++) {
                        assertEquals(prompt[t], pool[table[t / bs] * bs + t % bs], "prefix cache hit with other content");
                    }
                    for (int t = cached; t < prompt.length; t++) {
                        pool[table[t / bs] * bs + t % bs] = prompt[t];
                    }
                    prefixHits += cached / bs;
                    List<Integer> toks = new ArrayList<>();
                    for (int t : prompt) {
                        toks.add(t);
                    }
                    model.put(id, toks);
                    assertTrue(m.freeBlocks() >= watermark, "admission ate into the watermark");
                }
            } else if (kind < 60 && !running.isEmpty()) {  // append
                long id = running.get(rng.nextInt(running.size()));
                int token = rng.nextInt(50);
                try {
                    BlockManager.Slot s = m.append(id, token);
                    if (s.copyFirst() != null) {
                        System.arraycopy(pool, s.copyFirst().src() * bs, pool, s.copyFirst().dst() * bs, bs);
                        cowCopies++;
                    }
                    pool[(int) s.slot()] = token;
                    model.get(id).add(token);
                } catch (KvCacheFullException e) {
                    assertEquals(0, m.freeBlocks(), "append refused although blocks are free");
                    fullRefusals++;
                }
            } else if (kind < 70 && !running.isEmpty()) {  // fork
                long parent = running.get(rng.nextInt(running.size()));
                long child = nextId++;
                m.fork(parent, child);
                model.put(child, new ArrayList<>(model.get(parent)));
            } else if (kind < 85) {  // free
                long id = new ArrayList<>(model.keySet()).get(rng.nextInt(model.size()));
                m.free(id);
                model.remove(id);
                swapped.remove(id);
                assertThrows(IllegalStateException.class, () -> m.free(id), "double free must be detected");
                assertThrows(IllegalStateException.class, () -> m.append(id, 1), "use after free must be detected");
            } else if (kind < 93 && !running.isEmpty()) {  // swap out
                long id = running.get(rng.nextInt(running.size()));
                try {
                    for (BlockManager.BlockCopy c : m.swapOut(id)) {
                        System.arraycopy(pool, c.src() * bs, hostPool, c.dst() * bs, bs);
                    }
                    swapped.add(id);
                } catch (KvCacheFullException e) {
                    fullRefusals++;
                }
            } else if (!swapped.isEmpty()) {  // swap in
                long id = new ArrayList<>(swapped).get(rng.nextInt(swapped.size()));
                try {
                    for (BlockManager.BlockCopy c : m.swapIn(id)) {
                        System.arraycopy(hostPool, c.src() * bs, pool, c.dst() * bs, bs);
                    }
                    swapped.remove(id);
                } catch (KvCacheFullException e) {
                    fullRefusals++;
                }
            }
            checkInvariants(m, model, swapped, pool, hostPool, numBlocks, bs);
        }
        assertTrue(prefixHits > 0, "the prefix cache was never hit");
        assertTrue(cowCopies > 0, "copy-on-write never happened");
        assertTrue(fullRefusals > 0, "the pool never ran full");
    }

    private static void checkInvariants(BlockManager m, Map<Long, List<Integer>> model, Set<Long> swapped, int[] pool,
            int[] hostPool, int numBlocks, int bs) {
        int[] holders = new int[numBlocks];
        for (Map.Entry<Long, List<Integer>> e : model.entrySet()) {
            long id = e.getKey();
            List<Integer> toks = e.getValue();
            int[] table = m.blockTable(id);
            assertEquals(toks.size(), m.length(id));
            assertEquals((toks.size() + bs - 1) / bs, table.length, "blocks of sequence " + id);
            boolean isSwapped = swapped.contains(id);
            assertEquals(isSwapped ? BlockManager.State.SWAPPED : BlockManager.State.RUNNING, m.state(id));
            int[] mem = isSwapped ? hostPool : pool;
            for (int t = 0; t < toks.size(); t++) {
                assertEquals((int) toks.get(t), mem[table[t / bs] * bs + t % bs],
                        "sequence " + id + " token " + t + " read through its block table");
            }
            if (!isSwapped) {
                for (int b : new HashSet<>(java.util.Arrays.stream(table).boxed().toList())) {
                    holders[b]++;
                }
            }
        }
        int used = 0;
        for (int b = 0; b < numBlocks; b++) {
            if (holders[b] > 0) {
                used++;
            }
        }
        assertEquals(numBlocks, used + m.freeBlocks(), "every block is either used or free");
    }

    @Test
    void allocatorDetectsDoubleFreeAndUseAfterFree() {
        BlockAllocator a = new BlockAllocator(2);
        long h = a.allocate();
        a.release(h);
        IllegalStateException e = assertThrows(IllegalStateException.class, () -> a.release(h));
        assertTrue(e.getMessage().contains("double free"), e.getMessage());
        long h2 = a.allocate();
        long h3 = a.allocate();  // block of h reused under a new generation
        long reused = BlockAllocator.id(h2) == BlockAllocator.id(h) ? h2 : h3;
        assertEquals(BlockAllocator.id(h), BlockAllocator.id(reused));
        e = assertThrows(IllegalStateException.class, () -> a.retain(h));
        assertTrue(e.getMessage().contains("use after free"), e.getMessage());
        assertThrows(KvCacheFullException.class, a::allocate);
        assertThrows(IllegalArgumentException.class, () -> a.release(7));
    }

    @Test
    void freeListIsLruAndPrefixCacheSurvivesUntilEvicted() {
        BlockAllocator a = new BlockAllocator(3);
        int[] toks = {1, 2, 3, 4, 5, 6, 7, 8};
        long h0 = a.allocate();
        long hash = BlockAllocator.hashBlock(0, toks, 0, 8);
        assertTrue(a.registerCached(h0, hash, toks, 0, 8));
        a.release(h0);  // free but cached
        long again = a.lookupCached(hash, toks, 0, 8);
        assertEquals(BlockAllocator.id(h0), BlockAllocator.id(again));
        int[] other = {1, 2, 3, 4, 5, 6, 7, 9};
        assertEquals(-1, a.lookupCached(hash, other, 0, 8), "same hash, other tokens: no sharing");
        a.release(again);
        // blocks 1 and 2 were never used: LRU takes them before the cached block 0
        long x = a.allocate();
        long y = a.allocate();
        assertFalse(BlockAllocator.id(x) == BlockAllocator.id(h0) || BlockAllocator.id(y) == BlockAllocator.id(h0));
        assertTrue(a.isCached(hash));
        long z = a.allocate();  // now the cached block is evicted
        assertEquals(BlockAllocator.id(h0), BlockAllocator.id(z));
        assertFalse(a.isCached(hash));
        assertEquals(-1, a.lookupCached(hash, toks, 0, 8));
    }

    @Test
    void watermarkKeepsRoomForRunningSequences() {
        BlockManager m = new BlockManager(10, 0, 8, 3);
        m.admit(1, new int[8 * 7]);  // 7 blocks: 3 left = watermark
        assertFalse(m.canAdmit(new int[1]));
        assertThrows(KvCacheFullException.class, () -> m.admit(2, new int[1]));
        for (int i = 0; i < 8 * 3; i++) {  // the running sequence grows into the reserve
            m.append(1, i);
        }
        assertEquals(0, m.freeBlocks());
        assertThrows(KvCacheFullException.class, () -> m.append(1, 0));
        assertEquals(8 * 10, m.length(1), "a refused append leaves the sequence unchanged");
    }

    @Test
    void concurrentAdmissionNeverDoubleAllocates() throws Exception {
        int blocks = 400;
        BlockManager m = new BlockManager(blocks, 0, 16, 8);
        int threads = 4;
        ExecutorService pool = Executors.newFixedThreadPool(threads);
        CountDownLatch start = new CountDownLatch(1);
        AtomicInteger admitted = new AtomicInteger();
        Map<Long, int[]> tables = new ConcurrentHashMap<>();
        List<Future<?>> fs = new ArrayList<>();
        for (int t = 0; t < threads; t++) {
            int tid = t;
            fs.add(pool.submit(() -> {
                start.await();
                SplittableRandom rng = new SplittableRandom(SEED + tid);
                for (int i = 0; i < 300; i++) {
                    long id = tid * 100_000L + i;
                    int[] prompt = rng.ints(1 + rng.nextInt(60), 0, 1_000_000).toArray();  // unique: no prefix sharing
                    try {
                        m.admit(id, prompt);
                        admitted.incrementAndGet();
                        m.append(id, 7);
                        tables.put(id, m.blockTable(id));
                        if (rng.nextInt(3) == 0) {
                            m.free(id);
                            tables.remove(id);
                        }
                    } catch (KvCacheFullException e) {
                        // full: fine
                    }
                }
                return null;
            }));
        }
        start.countDown();
        for (Future<?> f : fs) {
            f.get(60, TimeUnit.SECONDS);
        }
        pool.shutdown();
        Set<Integer> seen = new HashSet<>();
        int used = 0;
        for (int[] t : tables.values()) {
            for (int b : t) {
                assertTrue(seen.add(b), "block " + b + " given to two sequences");
                used++;
            }
        }
        assertTrue(admitted.get() > 0);
        assertEquals(blocks, used + m.freeBlocks());
    }
}
