package io.qkern.attention;

import io.qkern.Device;
import io.qkern.Tensor;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.TreeMap;

/**
 * DistAttention (Infinite-LLM): one sequence's KV blocks live on several instances. For a decode
 * step the query goes to every instance holding blocks of the sequence, each attends over its own
 * blocks and sends back a partial (out, lse), and the home instance merges the partials. Per token
 * and layer only O(heads x head_dim) values cross instances — the query, the partial results and the
 * new token's K/V row when its block lives elsewhere — never the KV cache.
 *
 * <p>Instances manage their own blocks and keep a reserve; one that runs short borrows blocks from
 * another through the {@link GlobalView}, which picks the lender with the most spare blocks and
 * records who owes whom. A lender whose spare blocks would fall below its reserve refuses.
 *
 * <p>Here instances are CPU pools in one process and "sending" is a copy through a {@link Transport}
 * that counts every byte; with devices, the same calls would run on each instance's device.
 */
public final class DistAttention implements AutoCloseable {

    /** Counts every value that crosses instances, by kind. */
    public static final class Transport {
        private long queryBytes;
        private long partialBytes;
        private long kvRowBytes;
        private long messages;

        float[] send(int from, int to, float[] payload, String kind) {
            if (from != to) {
                long bytes = (long) payload.length * Float.BYTES;
                switch (kind) {
                    case "query" -> queryBytes += bytes;
                    case "partial" -> partialBytes += bytes;
                    case "kv" -> kvRowBytes += bytes;
                    default -> throw new AssertionError(kind);
                }
                messages++;
            }
            return payload.clone();
        }

        public long queryBytes() {
            return queryBytes;
        }

        public long partialBytes() {
            return partialBytes;
        }

        /** New tokens' K/V rows written to a block on another instance (once per token). */
        public long kvRowBytes() {
            return kvRowBytes;
        }

        public long totalBytes() {
            return queryBytes + partialBytes + kvRowBytes;
        }

        public long messages() {
            return messages;
        }

        public void reset() {
            queryBytes = partialBytes = kvRowBytes = messages = 0;
        }
    }

    /** One instance: its KV pool (one layer here) and the manager of its blocks. */
    public static final class Instance implements AutoCloseable {
        private final int id;
        private final PagedKvCache cache;
        private final BlockAllocator blocks;
        private final int reserveBlocks;
        /** Blocks this instance lent out, per borrower. */
        private final Map<Integer, Integer> lentTo = new TreeMap<>();

        Instance(int id, PagedKvCache cache, int reserveBlocks) {
            this.id = id;
            this.cache = cache;
            this.blocks = new BlockAllocator(cache.spec().numBlocks());
            this.reserveBlocks = reserveBlocks;
        }

        public int id() {
            return id;
        }

        public PagedKvCache cache() {
            return cache;
        }

        public synchronized int freeBlocks() {
            return blocks.freeBlocks();
        }

        /** Blocks it could give away and still keep its reserve. */
        public synchronized int spareBlocks() {
            return Math.max(0, blocks.freeBlocks() - reserveBlocks);
        }

        /** Short: at or below its reserve, so it must borrow to grow. */
        public synchronized boolean isShort() {
            return blocks.freeBlocks() <= reserveBlocks;
        }

        /** A block for its own sequence, or -1 if it is short. */
        synchronized long allocateOwn() {
            return isShort() ? -1 : blocks.allocate();
        }

        /** Lends {@code n} blocks to {@code borrower}, or refuses (null) if that would eat its reserve. */
        public synchronized long[] lend(int borrower, int n) {
            if (borrower == id || spareBlocks() < n) {
                return null;
            }
            long[] h = new long[n];
            for (int i = 0; i < n; i++) {
                h[i] = blocks.allocate();
            }
            lentTo.merge(borrower, n, Integer::sum);
            return h;
        }

        synchronized void giveBack(int borrower, long handle) {
            blocks.release(handle);
            lentTo.merge(borrower, -1, Integer::sum);
            lentTo.remove(borrower, 0);
        }

        synchronized void releaseOwn(long handle) {
            blocks.release(handle);
        }

        public synchronized Map<Integer, Integer> lentTo() {
            return Map.copyOf(lentTo);
        }

        @Override
        public void close() {
            cache.close();
        }
    }

    /** The global view: who has spare blocks, and who owes whom. */
    public static final class GlobalView {
        private final List<Instance> instances;
        private final Map<Integer, Map<Integer, Integer>> owes = new TreeMap<>();  // borrower -> lender -> blocks

        GlobalView(List<Instance> instances) {
            this.instances = instances;
        }

        /** A loan of one block to {@code borrower} from the instance with the most spare blocks, or null if none can lend. */
        synchronized Loan borrow(int borrower) {
            List<Instance> byspare = new ArrayList<>(instances);
            byspare.sort((a, b) -> Integer.compare(b.spareBlocks(), a.spareBlocks()));
            for (Instance lender : byspare) {
                long[] h = lender.lend(borrower, 1);
                if (h != null) {
                    owes.computeIfAbsent(borrower, k -> new TreeMap<>()).merge(lender.id(), 1, Integer::sum);
                    return new Loan(lender.id(), h[0]);
                }
            }
            return null;
        }

        synchronized void repay(int borrower, int lender) {
            Map<Integer, Integer> m = owes.get(borrower);
            m.merge(lender, -1, Integer::sum);
            m.remove(lender, 0);
            if (m.isEmpty()) {
                owes.remove(borrower);
            }
        }

        /** Blocks {@code borrower} owes {@code lender}. */
        public synchronized int owes(int borrower, int lender) {
            return owes.getOrDefault(borrower, Map.of()).getOrDefault(lender, 0);
        }
    }

    record Loan(int lender, long handle) {}

    /** Where one block of a sequence lives. */
    public record Placement(int instance, long handle) {
        public int block() {
            return BlockAllocator.id(handle);
        }
    }

    /** A sequence with a home instance and blocks anywhere. */
    public final class Sequence {
        private final int home;
        private final List<Placement> blocks = new ArrayList<>();
        private int length;

        Sequence(int home) {
            this.home = home;
        }

        public int home() {
            return home;
        }

        public int length() {
            return length;
        }

        public List<Placement> placements() {
            return Collections.unmodifiableList(blocks);
        }

        /**
         * Appends a token whose key and value rows ({@code numKvHeads * headDim} floats each) were computed
         * on the home instance; they are written into the block that holds the slot, wherever it lives.
         */
        public void append(float[] key, float[] value) {
            int rowLen = spec.numKvHeads() * spec.headDim();
            if (key.length != rowLen || value.length != rowLen) {
                throw new IllegalArgumentException("key and value rows need " + rowLen + " floats, got " + key.length
                        + " and " + value.length);
            }
            int offset = length % spec.blockSize();
            if (offset == 0) {
                Instance h = instances.get(home);
                long own = h.allocateOwn();
                if (own != -1) {
                    blocks.add(new Placement(home, own));
                } else {
                    Loan loan = view.borrow(home);
                    if (loan == null) {
                        throw new KvCacheFullException("instance " + home + " is short of KV blocks and no instance can lend");
                    }
                    blocks.add(new Placement(loan.lender(), loan.handle()));
                }
            }
            Placement p = blocks.get(blocks.size() - 1);
            float[] k = transport.send(home, p.instance(), key, "kv");
            float[] v = transport.send(home, p.instance(), value, "kv");
            long slot = (long) p.block() * spec.blockSize() + offset;
            try (Tensor kt = Tensor.ofFloats(k, 1, spec.numKvHeads(), spec.headDim());
                    Tensor vt = Tensor.ofFloats(v, 1, spec.numKvHeads(), spec.headDim())) {
                instances.get(p.instance()).cache().write(0, kt, vt, new long[] {slot});
            }
            length++;
        }

        /**
         * One decode step: {@code q} ({@code Hq * headDim} floats) goes to every instance holding blocks,
         * partial results come back and are merged at home in the order given by {@code mergeOrder}
         * (or instance order if null). Returns {out (Hq * headDim), lse (Hq)}.
         */
        public float[][] decode(float[] q, int numQueryHeads, float scale, Random mergeOrder) {
            int d = spec.headDim();
            if (q.length != numQueryHeads * d) {
                throw new IllegalArgumentException("q needs " + numQueryHeads * d + " floats, got " + q.length);
            }
            // this sequence's pages per instance, in sequence order (only the sequence's last block is partial)
            Map<Integer, List<Integer>> pagesOf = new LinkedHashMap<>();
            int lastInstance = blocks.isEmpty() ? -1 : blocks.get(blocks.size() - 1).instance();
            for (Placement p : blocks) {
                pagesOf.computeIfAbsent(p.instance(), k -> new ArrayList<>()).add(p.block());
            }
            if (lastInstance >= 0) {  // the partial last page must be the last of its instance's list
                List<Integer> l = pagesOf.get(lastInstance);
                l.add(l.remove(l.indexOf(blocks.get(blocks.size() - 1).block())));
            }
            List<float[][]> partials = new ArrayList<>();
            for (Map.Entry<Integer, List<Integer>> e : pagesOf.entrySet()) {
                int inst = e.getKey();
                float[] qRemote = transport.send(home, inst, q, "query");
                int[] pages = e.getValue().stream().mapToInt(Integer::intValue).toArray();
                int tail = length - (blocks.size() - 1) * spec.blockSize();
                int last = inst == lastInstance ? tail : spec.blockSize();
                PagedAttention.CsrPages csr = new PagedAttention.CsrPages(new int[] {0, pages.length}, pages,
                        new int[] {last});
                try (Tensor qt = Tensor.ofFloats(qRemote, 1, numQueryHeads, d);
                        PagedAttention.Result r = PagedAttention.decode(qt, instances.get(inst).cache(), 0, csr, scale, 0)) {
                    partials.add(new float[][] {transport.send(inst, home, r.out().toFloatArray(), "partial"),
                            transport.send(inst, home, r.lse().toFloatArray(), "partial")});
                }
            }
            if (mergeOrder != null) {
                Collections.shuffle(partials, mergeOrder);
            }
            return PagedAttention.mergePartials(partials, numQueryHeads, d);
        }

        /** Returns every block to its instance, settling loans. */
        public void free() {
            for (Placement p : blocks) {
                if (p.instance() == home) {
                    instances.get(home).releaseOwn(p.handle());
                } else {
                    instances.get(p.instance()).giveBack(home, p.handle());
                    view.repay(home, p.instance());
                }
            }
            blocks.clear();
            length = 0;
        }
    }

    private final PagedKvCache.Spec spec;
    private final List<Instance> instances;
    private final GlobalView view;
    private final Transport transport = new Transport();

    /**
     * {@code blocksPerInstance[i]} blocks on instance i (a CPU pool each), each keeping
     * {@code reserveBlocks} for itself. The spec's numBlocks is ignored; numLayers must be 1.
     */
    public DistAttention(PagedKvCache.Spec spec, int[] blocksPerInstance, int reserveBlocks) {
        if (spec.numLayers() != 1) {
            throw new IllegalArgumentException("DistAttention here models one layer, got " + spec.numLayers());
        }
        this.spec = spec;
        List<Instance> list = new ArrayList<>();
        try {
            for (int i = 0; i < blocksPerInstance.length; i++) {
                PagedKvCache.Spec s = new PagedKvCache.Spec(1, blocksPerInstance[i], spec.blockSize(),
                        spec.numKvHeads(), spec.headDim(), spec.dtype());
                PagedKvCache c = PagedKvCache.allocate(Device.CPU, s);
                c.fillBytes(0xFF);  // NaN everywhere: an unwritten slot that is read shows in the output
                list.add(new Instance(i, c, reserveBlocks));
            }
        } catch (RuntimeException e) {
            list.forEach(Instance::close);
            throw e;
        }
        this.instances = List.copyOf(list);
        this.view = new GlobalView(instances);
    }

    public Sequence newSequence(int homeInstance) {
        if (homeInstance < 0 || homeInstance >= instances.size()) {
            throw new IllegalArgumentException("instance " + homeInstance + " does not exist (0.." + (instances.size() - 1) + ")");
        }
        return new Sequence(homeInstance);
    }

    public Instance instance(int i) {
        return instances.get(i);
    }

    public GlobalView globalView() {
        return view;
    }

    public Transport transport() {
        return transport;
    }

    public PagedKvCache.Spec spec() {
        return spec;
    }

    @Override
    public void close() {
        instances.forEach(Instance::close);
    }
}
