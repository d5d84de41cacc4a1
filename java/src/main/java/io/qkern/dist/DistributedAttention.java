package io.qkern.dist;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Tensor;
import io.qkern.attention.BlockAllocator;
import io.qkern.attention.KvCacheFullException;
import io.qkern.attention.PagedAttention;
import io.qkern.attention.PagedKvCache;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.TreeSet;

/**
 * DistAttention (Infinite-LLM) across the ranks of a {@link Communicator}: one sequence's KV blocks
 * live on several ranks, each rank attends over its own blocks, and the sequence's home rank merges
 * the partial (out, lse) results. Every rank runs the same calls in the same order (SPMD); the
 * sequence table — which rank holds each block — is replicated, the blocks themselves are not.
 *
 * <p>What moves, per token and layer: the query from home to each rank that holds blocks (point to
 * point, so ranks without blocks of the sequence get nothing), one partial (Hq x (D + 1) floats) back
 * from each, and, when the token's slot is in a block on another rank, its K and V rows (Hkv x D
 * each). Never KV blocks. Once per {@code blockSize} tokens the ranks all-gather their free-block
 * counts (2 ints each) to place the next block.
 *
 * <p>Placement (the global view, computed identically on every rank): a new block goes to the home
 * rank while it has more than its reserve free; otherwise it is borrowed from the rank with the most
 * spare blocks (free minus reserve; ties to the lower rank) — a rank at or below its reserve refuses
 * to lend; if none can lend, {@link KvCacheFullException} on every rank. This is the rule of the
 * single-process {@link io.qkern.attention.DistAttention}, computed from all-gathered free counts.
 * Loans are recorded and settled when the sequence is freed.
 *
 * <p>Not thread-safe: each rank's instance is driven by its own thread.
 */
public final class DistributedAttention implements AutoCloseable {

    /** Where the {@code index}-th block of a sequence lives. */
    public record BlockPlacement(int index, int rank) {
    }

    private static final class Sequence {
        final int home;
        final List<Integer> owners = new ArrayList<>();
        /** This rank's handles of the sequence's blocks, by block index. */
        final Map<Integer, Long> localHandles = new LinkedHashMap<>();
        int length;

        Sequence(int home) {
            this.home = home;
        }
    }

    private final Communicator comm;
    private final PagedKvCache.Spec spec;
    private final PagedKvCache cache;
    private final BlockAllocator allocator;
    private final int reserveBlocks;
    private final Map<Integer, Sequence> sequences = new HashMap<>();
    /** loans[borrower][lender]: blocks held by borrower's sequences on lender; replicated. */
    private final int[][] loans;
    private int nextSequence;
    private boolean closed;

    /**
     * This rank's part: a one-layer KV pool of {@code spec.numBlocks()} blocks on the communicator's
     * device (ranks may have different pool sizes; block size, heads, head dim and dtype must match —
     * checked collectively), keeping {@code reserveBlocks} for its own sequences.
     */
    public DistributedAttention(Communicator comm, PagedKvCache.Spec spec, int reserveBlocks) {
        this.comm = Objects.requireNonNull(comm, "comm");
        this.spec = Objects.requireNonNull(spec, "spec");
        if (spec.numLayers() != 1) {
            throw new IllegalArgumentException("DistributedAttention holds one layer per instance, got "
                    + spec.numLayers() + " layers");
        }
        if (reserveBlocks < 0) {
            throw new IllegalArgumentException("reserveBlocks must be >= 0, got " + reserveBlocks);
        }
        this.reserveBlocks = reserveBlocks;
        this.loans = new int[comm.size()][comm.size()];
        // every rank must agree on the geometry before any block moves
        try (Tensor mine = Tensor.allocate(DType.I32, Device.CPU, 4);
                Tensor all = Tensor.allocate(DType.I32, Device.CPU, 4L * comm.size())) {
            int[] geometry = {spec.blockSize(), spec.numKvHeads(), spec.headDim(), spec.dtype().ordinal()};
            mine.segment().copyFrom(java.lang.foreign.MemorySegment.ofArray(geometry));
            gatherHost(mine, all);
            int[] g = all.segment().toArray(java.lang.foreign.ValueLayout.JAVA_INT);
            for (int r = 0; r < comm.size(); r++) {
                if (!Arrays.equals(geometry, Arrays.copyOfRange(g, 4 * r, 4 * r + 4))) {
                    throw new IllegalArgumentException("rank " + r + "'s KV pool (block size, KV heads, head dim,"
                            + " dtype) = " + Arrays.toString(Arrays.copyOfRange(g, 4 * r, 4 * r + 4))
                            + " differs from rank " + comm.rank() + "'s " + Arrays.toString(geometry));
                }
            }
        }
        this.cache = PagedKvCache.allocate(comm.device(), spec);
        cache.fillBytes(0xFF); // NaN in every unwritten slot: reading one would show in the output
        this.allocator = new BlockAllocator(spec.numBlocks());
    }

    /** A new sequence homed on {@code home}; collective, returns the same id on every rank. */
    public int newSequence(int home) {
        checkOpen();
        if (home < 0 || home >= comm.size()) {
            throw new IllegalArgumentException("home rank " + home + " is out of range [0, " + comm.size() + ")");
        }
        int id = nextSequence++;
        sequences.put(id, new Sequence(home));
        return id;
    }

    public int length(int sequence) {
        return seq(sequence).length;
    }

    /** Which rank holds each block of the sequence (the same on every rank). */
    public List<BlockPlacement> placements(int sequence) {
        Sequence s = seq(sequence);
        List<BlockPlacement> p = new ArrayList<>();
        for (int i = 0; i < s.owners.size(); i++) {
            p.add(new BlockPlacement(i, s.owners.get(i)));
        }
        return Collections.unmodifiableList(p);
    }

    public int freeBlocks() {
        return allocator.freeBlocks();
    }

    /** Blocks of {@code borrower}'s sequences held on {@code lender} (the same on every rank). */
    public int loaned(int borrower, int lender) {
        return loans[borrower][lender];
    }

    /**
     * Appends one token to the sequence: collective. On the home rank {@code key} and {@code value}
     * are the token's rows ({@code numKvHeads * headDim} floats each); other ranks pass null.
     */
    public void append(int sequence, float[] key, float[] value) {
        checkOpen();
        Sequence s = seq(sequence);
        int row = spec.numKvHeads() * spec.headDim();
        boolean home = comm.rank() == s.home;
        if (home && (key == null || value == null || key.length != row || value.length != row)) {
            throw new IllegalArgumentException("the home rank needs key and value rows of " + row + " floats, got "
                    + (key == null ? "null" : key.length) + " and " + (value == null ? "null" : value.length));
        }
        int offset = s.length % spec.blockSize();
        if (offset == 0) {
            placeBlock(s);
        }
        int blockIndex = s.owners.size() - 1;
        int owner = s.owners.get(blockIndex);
        try (Tensor k = Tensor.allocate(DType.F32, comm.device(), 1, spec.numKvHeads(), spec.headDim());
                Tensor v = Tensor.allocate(DType.F32, comm.device(), 1, spec.numKvHeads(), spec.headDim())) {
            if (home) {
                copyIn(key, k);
                copyIn(value, v);
                if (owner != s.home) {
                    comm.send(k, owner);
                    comm.send(v, owner);
                }
            } else if (comm.rank() == owner) {
                comm.recv(k, s.home);
                comm.recv(v, s.home);
            }
            if (comm.rank() == owner) {
                long slot = (long) BlockAllocator.id(s.localHandles.get(blockIndex)) * spec.blockSize() + offset;
                cache.write(0, k, v, new long[] {slot});
            }
        }
        s.length++;
    }

    /** Decides, identically on every rank, where the sequence's next block goes; its owner allocates it. */
    private void placeBlock(Sequence s) {
        int p = comm.size();
        int[] state = new int[2 * p];
        try (Tensor mine = Tensor.allocate(DType.I32, Device.CPU, 2);
                Tensor all = Tensor.allocate(DType.I32, Device.CPU, 2L * p)) {
            mine.segment().copyFrom(java.lang.foreign.MemorySegment.ofArray(new int[] {allocator.freeBlocks(),
                    reserveBlocks}));
            gatherHost(mine, all);
            System.arraycopy(all.segment().toArray(java.lang.foreign.ValueLayout.JAVA_INT), 0, state, 0, 2 * p);
        }
        int owner = -1;
        if (state[2 * s.home] > state[2 * s.home + 1]) {
            owner = s.home;
        } else {
            int best = 0;
            for (int r = 0; r < p; r++) {
                int spare = state[2 * r] - state[2 * r + 1];
                if (r != s.home && spare > best) {
                    best = spare;
                    owner = r;
                }
            }
        }
        if (owner < 0) {
            throw new KvCacheFullException("rank " + s.home + " needs a KV block for a sequence of length " + s.length
                    + " and no rank has one to spare above its reserve (free per rank: " + freeList(state) + ")");
        }
        if (comm.rank() == owner) {
            s.localHandles.put(s.owners.size(), allocator.allocate());
        }
        s.owners.add(owner);
        if (owner != s.home) {
            loans[s.home][owner]++;
        }
    }

    private static String freeList(int[] state) {
        StringBuilder sb = new StringBuilder("[");
        for (int r = 0; r < state.length / 2; r++) {
            sb.append(r == 0 ? "" : ", ").append(state[2 * r]).append(" (reserve ").append(state[2 * r + 1]).append(')');
        }
        return sb.append(']').toString();
    }

    /**
     * One decode step for the sequence: collective. On the home rank {@code q} holds
     * {@code numQueryHeads * headDim} floats and the result is {out [Hq * D], lse [Hq]} (natural log);
     * other ranks pass null and get null. An empty sequence gives out = 0, lse = -inf.
     * {@code mergeOrder} (may be null = rank order) permutes the order partials are merged in.
     */
    public float[][] decode(int sequence, float[] q, int numQueryHeads, float scale, java.util.Random mergeOrder) {
        checkOpen();
        Sequence s = seq(sequence);
        int d = spec.headDim();
        boolean home = comm.rank() == s.home;
        if (home && (q == null || q.length != (long) numQueryHeads * d)) {
            throw new IllegalArgumentException("the home rank needs q of " + numQueryHeads + " x " + d + " floats, got "
                    + (q == null ? "null" : q.length));
        }
        if (numQueryHeads < 1 || numQueryHeads % spec.numKvHeads() != 0) {
            throw new IllegalArgumentException("query heads " + numQueryHeads + " must be a positive multiple of the "
                    + spec.numKvHeads() + " KV heads");
        }
        TreeSet<Integer> holders = new TreeSet<>(s.owners);
        boolean holder = holders.contains(comm.rank());
        if (!home && !holder) {
            return null;
        }
        try (Tensor qt = Tensor.allocate(DType.F32, comm.device(), 1, numQueryHeads, d)) {
            if (home) {
                copyIn(q, qt);
                for (int r : holders) {
                    if (r != s.home) {
                        comm.send(qt, r);
                    }
                }
            } else {
                comm.recv(qt, s.home);
            }
            if (!home) {
                try (PagedAttention.Result mine = attendLocal(s, qt, scale)) {
                    comm.send(mine.out(), s.home);
                    comm.send(mine.lse(), s.home);
                }
                return null;
            }
            List<float[][]> partials = new ArrayList<>();
            for (int r : holders) {
                if (r == s.home) {
                    try (PagedAttention.Result mine = attendLocal(s, qt, scale)) {
                        partials.add(new float[][] {mine.out().toFloatArray(), mine.lse().toFloatArray()});
                    }
                } else {
                    try (Tensor o = Tensor.allocate(DType.F32, comm.device(), 1, numQueryHeads, d);
                            Tensor l = Tensor.allocate(DType.F32, comm.device(), 1, numQueryHeads)) {
                        comm.recv(o, r);
                        comm.recv(l, r);
                        partials.add(new float[][] {o.toFloatArray(), l.toFloatArray()});
                    }
                }
            }
            return merge(partials, numQueryHeads, d, mergeOrder);
        }
    }

    /** This rank's partial over its blocks of the sequence (the partially filled last block, if here, goes last). */
    private PagedAttention.Result attendLocal(Sequence s, Tensor q, float scale) {
        List<Integer> order = new ArrayList<>(s.localHandles.keySet());
        int lastIndex = s.owners.size() - 1;
        int tail = s.length - lastIndex * spec.blockSize();
        int lastLen = order.contains(lastIndex) ? tail : spec.blockSize();
        if (order.remove((Integer) lastIndex)) {
            order.add(lastIndex);
        }
        int[] pages = order.stream().mapToInt(i -> BlockAllocator.id(s.localHandles.get(i))).toArray();
        PagedAttention.CsrPages csr = new PagedAttention.CsrPages(new int[] {0, pages.length}, pages,
                new int[] {lastLen});
        return PagedAttention.decode(q, cache, 0, csr, scale, 0);
    }

    private static float[][] merge(List<float[][]> partials, int heads, int d, java.util.Random order) {
        if (order != null) {
            Collections.shuffle(partials, order);
        }
        return PagedAttention.mergePartials(partials, heads, d);
    }

    /** Frees the sequence's blocks on every rank and settles its loans; collective. */
    public void free(int sequence) {
        checkOpen();
        Sequence s = sequences.remove(sequence);
        if (s == null) {
            throw new IllegalArgumentException("sequence " + sequence + " does not exist (freed already?)");
        }
        s.localHandles.values().forEach(allocator::release);
        for (int owner : s.owners) {
            if (owner != s.home) {
                loans[s.home][owner]--;
            }
        }
    }

    private Sequence seq(int id) {
        Sequence s = sequences.get(id);
        if (s == null) {
            throw new IllegalArgumentException("sequence " + id + " does not exist");
        }
        return s;
    }

    private void gatherHost(Tensor mine, Tensor all) {
        if (comm.device().isCpu()) {
            comm.allGather(mine, all);
            return;
        }
        try (Tensor m = mine.copyTo(comm.device());
                Tensor a = Tensor.allocate(all.dtype(), comm.device(), all.shape())) {
            comm.allGather(m, a);
            all.copyFrom(a);
        }
    }

    private static void copyIn(float[] values, Tensor target) {
        try (Tensor host = Tensor.ofFloats(values, target.shape())) {
            target.copyFrom(host);
        }
    }

    private void checkOpen() {
        if (closed) {
            throw new IllegalStateException("DistributedAttention is closed");
        }
    }

    /** Releases this rank's pool; idempotent. Does not close the communicator. */
    @Override
    public void close() {
        if (!closed) {
            closed = true;
            cache.close();
        }
    }
}
