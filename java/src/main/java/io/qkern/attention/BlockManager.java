package io.qkern.attention;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/**
 * Which KV blocks each sequence owns: the policy side of a paged KV cache (the data lives in a
 * {@link PagedKvCache}, whose block ids these are).
 *
 * <ul>
 *   <li>Admission ({@link #admit}) reuses blocks of an identical prompt prefix (prefix caching by
 *       chained block hashes) and allocates the rest, but only if {@code watermarkBlocks} blocks
 *       stay free afterwards: that reserve is what running sequences grow into, so admitting new
 *       work never leaves a running sequence unable to append.
 *   <li>{@link #fork} shares every block (reference counts); {@link #append} to a shared last block
 *       first moves the sequence to a private copy (copy-on-write): the returned {@link BlockCopy}
 *       must be applied to the pool ({@link PagedKvCache#copyBlocks}) before the token is written.
 *   <li>{@link #swapOut} / {@link #swapIn} move a sequence between the device pool and a host pool;
 *       the returned mappings must be applied ({@link PagedKvCache#swapBlocks}) before the freed
 *       blocks are handed out again (before the next call that allocates).
 *   <li>Freeing an unknown sequence (double free), or using a freed one, throws.
 * </ul>
 *
 * <p>Thread-safe: every method is synchronized (admission from several threads is safe).
 */
public final class BlockManager {
    /** A block-to-block copy the caller applies to the KV data. */
    public record BlockCopy(int src, int dst) {}

    /** Where the appended token goes, and a copy to apply first (null unless copy-on-write happened). */
    public record Slot(long slot, BlockCopy copyFirst) {}

    public enum State { RUNNING, SWAPPED }

    private static final class Seq {
        State state = State.RUNNING;
        final List<Long> blocks = new ArrayList<>();  // device handles when RUNNING, host handles when SWAPPED
        int[] tokens = new int[16];
        int length;
        final List<Long> fullBlockHashes = new ArrayList<>();

        void add(int token) {
            if (length == tokens.length) {
                tokens = Arrays.copyOf(tokens, tokens.length * 2);
            }
            tokens[length++] = token;
        }
    }

    private final BlockAllocator device;
    private final BlockAllocator host;
    private final int blockSize;
    private final int watermarkBlocks;
    private final Map<Long, Seq> seqs = new HashMap<>();

    /**
     * @param numBlocks       blocks of the device pool
     * @param numHostBlocks   blocks of the host pool sequences swap out to
     * @param blockSize       tokens per block (8..256)
     * @param watermarkBlocks device blocks admission keeps free for running sequences to grow into
     */
    public BlockManager(int numBlocks, int numHostBlocks, int blockSize, int watermarkBlocks) {
        PagedKvCache.checkBlockSize(blockSize);
        if (watermarkBlocks < 0 || watermarkBlocks > numBlocks) {
            throw new IllegalArgumentException("watermarkBlocks must be in 0.." + numBlocks + ", got " + watermarkBlocks);
        }
        this.device = new BlockAllocator(numBlocks);
        this.host = new BlockAllocator(numHostBlocks);
        this.blockSize = blockSize;
        this.watermarkBlocks = watermarkBlocks;
    }

    public int blockSize() {
        return blockSize;
    }

    public synchronized int freeBlocks() {
        return device.freeBlocks();
    }

    public synchronized int freeHostBlocks() {
        return host.freeBlocks();
    }

    /** The device allocator (for inspection: reference counts, free blocks). */
    public BlockAllocator deviceAllocator() {
        return device;
    }

    // ---- admission --------------------------------------------------------------------------------------

    private record Plan(int blocks, List<Long> prefixHashes, int freeHits) {}

    private Plan plan(int[] prompt) {
        int blocks = ceilDiv(prompt.length, blockSize);
        List<Long> hashes = new ArrayList<>();
        int freeHits = 0;
        long parent = 0;
        for (int i = 0; i < prompt.length / blockSize; i++) {
            long h = BlockAllocator.hashBlock(parent, prompt, i * blockSize, blockSize);
            if (!device.isCached(h)) {
                break;
            }
            hashes.add(h);
            freeHits += device.isCachedAndFree(h) ? 1 : 0;
            parent = h;
        }
        return new Plan(blocks, hashes, freeHits);
    }

    /** True if {@link #admit} would succeed now for this prompt. */
    public synchronized boolean canAdmit(int[] prompt) {
        Plan p = plan(prompt);
        return device.freeBlocks() - p.freeHits() - (p.blocks() - p.prefixHashes().size()) >= watermarkBlocks;
    }

    /**
     * Gives a new sequence the blocks for its prompt. Returns how many leading prompt tokens already
     * have their K/V in the pool (whole blocks found in the prefix cache); the caller writes the rest.
     *
     * @throws KvCacheFullException if fewer than the watermark would stay free (nothing changes)
     */
    public synchronized int admit(long seqId, int[] prompt) {
        if (seqs.containsKey(seqId)) {
            throw new IllegalStateException("sequence " + seqId + " is already admitted");
        }
        if (!canAdmit(prompt)) {
            throw new KvCacheFullException("admitting sequence " + seqId + " (" + prompt.length + " tokens) needs "
                    + ceilDiv(prompt.length, blockSize) + " blocks but only " + device.freeBlocks()
                    + " are free and " + watermarkBlocks + " are kept for running sequences");
        }
        Seq s = new Seq();
        List<Long> fresh = new ArrayList<>();
        int hits = 0;
        try {
            long parent = 0;
            for (int i = 0; i < ceilDiv(prompt.length, blockSize); i++) {
                int from = i * blockSize;
                int count = Math.min(blockSize, prompt.length - from);
                long handle = -1;
                if (count == blockSize) {
                    long h = BlockAllocator.hashBlock(parent, prompt, from, count);
                    if (hits == i) {  // reuse only while the prefix matches block after block
                        handle = device.lookupCached(h, prompt, from, count);
                    }
                    if (handle != -1) {
                        hits++;
                    } else {
                        handle = device.allocate();
                        fresh.add(handle);
                        device.registerCached(handle, h, prompt, from, count);
                    }
                    s.fullBlockHashes.add(h);
                    parent = h;
                } else {
                    handle = device.allocate();
                    fresh.add(handle);
                }
                s.blocks.add(handle);
            }
        } catch (RuntimeException e) {
            // fresh blocks were never written: they must not stay findable by their hash
            fresh.forEach(device::unregisterCached);
            s.blocks.forEach(device::release);
            throw e;
        }
        for (int t : prompt) {
            s.add(t);
        }
        seqs.put(seqId, s);
        return hits * blockSize;
    }

    // ---- growth -------------------------------------------------------------------------------------

    /**
     * Appends one token: returns its slot, allocating a block when the last one is full and copying a
     * shared last block first (copy-on-write). Running sequences may use the watermark reserve.
     *
     * @throws KvCacheFullException if a block is needed and none is free (nothing changes)
     */
    public synchronized Slot append(long seqId, int token) {
        Seq s = running(seqId, "append");
        int offset = s.length % blockSize;
        BlockCopy copy = null;
        if (offset == 0) {
            s.blocks.add(device.allocate());
        } else {
            int last = s.blocks.size() - 1;
            long block = s.blocks.get(last);
            if (!device.isExclusive(block)) {
                long fresh = device.allocate();
                copy = new BlockCopy(BlockAllocator.id(block), BlockAllocator.id(fresh));
                device.release(block);
                s.blocks.set(last, fresh);
            }
        }
        long block = s.blocks.get(s.blocks.size() - 1);
        long slot = (long) BlockAllocator.id(block) * blockSize + offset;
        s.add(token);
        if (s.length % blockSize == 0) {
            long parent = s.fullBlockHashes.isEmpty() ? 0 : s.fullBlockHashes.get(s.fullBlockHashes.size() - 1);
            long h = BlockAllocator.hashBlock(parent, s.tokens, s.length - blockSize, blockSize);
            s.fullBlockHashes.add(h);
            device.registerCached(block, h, s.tokens, s.length - blockSize, blockSize);
        }
        return new Slot(slot, copy);
    }

    /** A new sequence sharing every block of {@code parentId} (beam search, parallel sampling). */
    public synchronized void fork(long parentId, long childId) {
        Seq p = running(parentId, "fork");
        if (seqs.containsKey(childId)) {
            throw new IllegalStateException("fork: sequence " + childId + " already exists");
        }
        Seq c = new Seq();
        for (long b : p.blocks) {
            device.retain(b);
            c.blocks.add(b);
        }
        c.tokens = Arrays.copyOf(p.tokens, p.tokens.length);
        c.length = p.length;
        c.fullBlockHashes.addAll(p.fullBlockHashes);
        seqs.put(childId, c);
    }

    /** Releases every block of the sequence. Freeing it twice throws. */
    public synchronized void free(long seqId) {
        Seq s = seqs.remove(seqId);
        if (s == null) {
            throw new IllegalStateException("free: sequence " + seqId + " is not admitted (double free?)");
        }
        BlockAllocator owner = s.state == State.RUNNING ? device : host;
        s.blocks.forEach(owner::release);
    }

    // ---- swapping -----------------------------------------------------------------------------------

    /** Moves a running sequence to host blocks; apply the returned (device -> host) copies before the next allocation. */
    public synchronized List<BlockCopy> swapOut(long seqId) {
        Seq s = running(seqId, "swapOut");
        if (host.freeBlocks() < s.blocks.size()) {
            throw new KvCacheFullException("swapOut: sequence " + seqId + " needs " + s.blocks.size()
                    + " host blocks, " + host.freeBlocks() + " are free");
        }
        List<BlockCopy> copies = new ArrayList<>();
        List<Long> hostBlocks = new ArrayList<>();
        for (long b : s.blocks) {
            long h = host.allocate();
            hostBlocks.add(h);
            copies.add(new BlockCopy(BlockAllocator.id(b), BlockAllocator.id(h)));
        }
        s.blocks.forEach(device::release);
        s.blocks.clear();
        s.blocks.addAll(hostBlocks);
        s.state = State.SWAPPED;
        return copies;
    }

    /** Moves a swapped sequence back to device blocks; apply the returned (host -> device) copies. */
    public synchronized List<BlockCopy> swapIn(long seqId) {
        Seq s = seqs.get(seqId);
        if (s == null || s.state != State.SWAPPED) {
            throw new IllegalStateException("swapIn: sequence " + seqId + (s == null ? " is not admitted" : " is not swapped out"));
        }
        if (device.freeBlocks() - s.blocks.size() < watermarkBlocks) {
            throw new KvCacheFullException("swapIn: sequence " + seqId + " needs " + s.blocks.size() + " blocks, "
                    + device.freeBlocks() + " are free and " + watermarkBlocks + " are kept for running sequences");
        }
        List<BlockCopy> copies = new ArrayList<>();
        List<Long> deviceBlocks = new ArrayList<>();
        for (int i = 0; i < s.blocks.size(); i++) {
            long d = device.allocate();
            deviceBlocks.add(d);
            copies.add(new BlockCopy(BlockAllocator.id(s.blocks.get(i)), BlockAllocator.id(d)));
            if (i < s.fullBlockHashes.size()) {
                device.registerCached(d, s.fullBlockHashes.get(i), s.tokens, i * blockSize, blockSize);
            }
        }
        s.blocks.forEach(host::release);
        s.blocks.clear();
        s.blocks.addAll(deviceBlocks);
        s.state = State.RUNNING;
        return copies;
    }

    // ---- inspection ---------------------------------------------------------------------------------

    /** The sequence's block ids in order (device ids when running, host ids when swapped out). */
    public synchronized int[] blockTable(long seqId) {
        Seq s = known(seqId, "blockTable");
        return s.blocks.stream().mapToInt(BlockAllocator::id).toArray();
    }

    public synchronized int length(long seqId) {
        return known(seqId, "length").length;
    }

    public synchronized State state(long seqId) {
        return known(seqId, "state").state;
    }

    public synchronized boolean contains(long seqId) {
        return seqs.containsKey(seqId);
    }

    private Seq known(long seqId, String op) {
        Seq s = seqs.get(seqId);
        if (s == null) {
            throw new IllegalStateException(op + ": sequence " + seqId + " is not admitted (freed?)");
        }
        return s;
    }

    private Seq running(long seqId, String op) {
        Seq s = known(seqId, op);
        if (s.state != State.RUNNING) {
            throw new IllegalStateException(op + ": sequence " + seqId + " is swapped out");
        }
        return s;
    }

    private static int ceilDiv(int a, int b) {
        return (a + b - 1) / b;
    }
}
