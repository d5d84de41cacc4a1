package io.qkern.attention;

import java.util.Arrays;
import java.util.HashMap;
import java.util.Iterator;
import java.util.LinkedHashSet;
import java.util.Map;

/**
 * Fixed-size KV blocks with reference counts, a free list in LRU order and a prefix cache.
 *
 * <p>Blocks are handed out as {@code long} handles: the block id in the low 32 bits and the
 * block's generation (bumped each time the block goes from free to in use) in the high 32 bits.
 * A handle that outlived its block (released to zero, then reused) is refused as a
 * use-after-free; releasing a free block is refused as a double free.
 *
 * <p>Prefix caching: a full block may be registered under the chained hash of its tokens
 * ({@link #hashBlock}). When its last reference goes, it stays in the free list with its
 * contents and its hash; {@link #lookupCached} brings it back in use, and {@link #allocate}
 * evicts the least recently freed block (dropping its hash) when it needs a fresh one.
 *
 * <p>Thread-safe: every method is synchronized.
 */
public final class BlockAllocator {
    private final int numBlocks;
    private final int[] refCount;
    private final int[] generation;
    /** Free blocks, least recently freed first. */
    private final LinkedHashSet<Integer> free = new LinkedHashSet<>();
    private final Map<Long, Integer> cachedByHash = new HashMap<>();
    private final long[] hashOf;
    private final boolean[] hashed;
    /** The tokens a cached block holds, so a hash collision can never share wrong contents. */
    private final int[][] tokensOf;

    public BlockAllocator(int numBlocks) {
        if (numBlocks < 0) {
            throw new IllegalArgumentException("numBlocks must be >= 0, got " + numBlocks);
        }
        this.numBlocks = numBlocks;
        refCount = new int[numBlocks];
        generation = new int[numBlocks];
        hashOf = new long[numBlocks];
        hashed = new boolean[numBlocks];
        tokensOf = new int[numBlocks][];
        for (int i = 0; i < numBlocks; i++) {
            free.add(i);
        }
    }

    public int numBlocks() {
        return numBlocks;
    }

    /** The block id of a handle. */
    public static int id(long handle) {
        return (int) handle;
    }

    private static long handle(int id, int generation) {
        return ((long) generation << 32) | (id & 0xFFFFFFFFL);
    }

    /** Free blocks, cached ones included (they are reused when nothing else is left). */
    public synchronized int freeBlocks() {
        return free.size();
    }

    public synchronized int refCount(long handle) {
        return refCount[check(handle, "refCount")];
    }

    /** A free block with reference count 1; evicts the least recently freed one. */
    public synchronized long allocate() {
        Iterator<Integer> it = free.iterator();
        if (!it.hasNext()) {
            throw new KvCacheFullException("no free KV block (all " + numBlocks + " are in use)");
        }
        int id = it.next();
        it.remove();
        if (hashed[id]) {
            cachedByHash.remove(hashOf[id]);
            hashed[id] = false;
            tokensOf[id] = null;
        }
        refCount[id] = 1;
        generation[id]++;
        return handle(id, generation[id]);
    }

    /** One more reference (fork / share). */
    public synchronized void retain(long handle) {
        int id = check(handle, "retain");
        refCount[id]++;
    }

    /** One reference less; the block becomes free (keeping its prefix-cache entry) at zero. */
    public synchronized void release(long handle) {
        int id = check(handle, "release");
        if (--refCount[id] == 0) {
            free.add(id);
        }
    }

    /** True if the block behind the handle has no other reference (it may be written in place). */
    public synchronized boolean isExclusive(long handle) {
        return refCount[check(handle, "isExclusive")] == 1;
    }

    // ---- prefix cache --------------------------------------------------------------------------------

    /** Chained hash of a full block: H(parent hash, tokens[from, from + count)). */
    public static long hashBlock(long parentHash, int[] tokens, int from, int count) {
        long h = 0xcbf29ce484222325L ^ mix(parentHash);
        for (int i = from; i < from + count; i++) {
            h = (h ^ tokens[i]) * 0x100000001b3L;
        }
        return mix(h ^ count);
    }

    private static long mix(long z) {  // splitmix64 finalizer: every input bit affects every output bit
        z = (z ^ (z >>> 30)) * 0xbf58476d1ce4e5b9L;
        z = (z ^ (z >>> 27)) * 0x94d049bb133111ebL;
        return z ^ (z >>> 31);
    }

    /**
     * Records that the in-use block holds {@code tokens[from, from + count)} under {@code hash}. Returns
     * false (and records nothing) if another block already serves that hash.
     */
    public synchronized boolean registerCached(long handle, long hash, int[] tokens, int from, int count) {
        int id = check(handle, "registerCached");
        if (cachedByHash.containsKey(hash) || hashed[id]) {
            return false;
        }
        cachedByHash.put(hash, id);
        hashOf[id] = hash;
        hashed[id] = true;
        tokensOf[id] = Arrays.copyOfRange(tokens, from, from + count);
        return true;
    }

    /** Drops the block's prefix-cache entry, if it has one (its contents are no longer what the hash says). */
    public synchronized void unregisterCached(long handle) {
        int id = check(handle, "unregisterCached");
        if (hashed[id]) {
            cachedByHash.remove(hashOf[id]);
            hashed[id] = false;
            tokensOf[id] = null;
        }
    }

    /**
     * A new reference to the cached block with {@code hash} holding exactly these tokens (taken off
     * the free list if it had no references), or -1.
     */
    public synchronized long lookupCached(long hash, int[] tokens, int from, int count) {
        Integer id = cachedByHash.get(hash);
        if (id == null || !Arrays.equals(tokensOf[id], 0, count, tokens, from, from + count)) {
            return -1;
        }
        if (refCount[id] == 0) {
            free.remove(id);
            generation[id]++;
        }
        refCount[id]++;
        return handle(id, generation[id]);
    }

    /** True if a lookup of this hash would hit a block with no references (it would leave the free list). */
    public synchronized boolean isCachedAndFree(long hash) {
        Integer id = cachedByHash.get(hash);
        return id != null && refCount[id] == 0;
    }

    public synchronized boolean isCached(long hash) {
        return cachedByHash.containsKey(hash);
    }

    private int check(long handle, String op) {
        int id = id(handle);
        int gen = (int) (handle >>> 32);
        if (id < 0 || id >= numBlocks) {
            throw new IllegalArgumentException(op + ": block id " + id + " is out of range (0.." + (numBlocks - 1) + ")");
        }
        if (gen != generation[id]) {
            throw new IllegalStateException(op + ": use after free: the handle names generation " + gen + " of block "
                    + id + ", which was freed and reused (now generation " + generation[id] + ")");
        }
        if (refCount[id] == 0) {
            throw new IllegalStateException(op + ": block " + id + " is free (" + (op.equals("release") ? "double free"
                    : "use after free") + ")");
        }
        return id;
    }
}
