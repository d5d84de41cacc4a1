package io.qkern.attention;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Tensor;
import io.qkern.internal.AttentionNative;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.Arrays;

/**
 * Decode attention over a {@link PagedKvCache} (one new query token per sequence), and the merge
 * of partial results. Kernels run on the cache's device (CPU: AVX-512 / AVX2 / scalar chosen at
 * run time, all worker threads).
 *
 * <p>Every call returns the output and the natural-log log-sum-exp of the scaled scores per
 * (sequence, query head), so results over disjoint sets of blocks {@link #merge merge} exactly. A
 * sequence with no tokens gives output 0 and lse -inf.
 */
public final class PagedAttention {
    private PagedAttention() {}

    /** Attention output {@code [B, Hq, D]} and lse {@code [B, Hq]} (F32); close both. */
    public record Result(Tensor out, Tensor lse) implements AutoCloseable {
        @Override
        public void close() {
            out.close();
            lse.close();
        }
    }

    /** A CSR page table: sequence b reads pages {@code indices[indptr[b] .. indptr[b+1])}. */
    public record CsrPages(int[] indptr, int[] indices, int[] lastPageLen) {
        public CsrPages {
            if (indptr.length != lastPageLen.length + 1) {
                throw new IllegalArgumentException("indptr needs batch + 1 = " + (lastPageLen.length + 1)
                        + " entries, got " + indptr.length);
            }
        }

        public int batch() {
            return lastPageLen.length;
        }
    }

    /**
     * Decode attention with a padded page table.
     *
     * @param q              {@code [B, Hq, D]} queries (F32/F16/BF16) on the cache's device; Hq a
     *                       multiple of the cache's KV heads (query head h uses KV head h / (Hq / Hkv))
     * @param blockTables    {@code [B][maxBlocks]}: the blocks of each sequence in order
     * @param seqLens        tokens per sequence (0 .. maxBlocks * blockSize)
     * @param scale          softmax scale (usually 1 / sqrt(D))
     * @param partitionBlocks blocks per split-KV partition; 0 lets qkern choose
     */
    public static Result decode(Tensor q, PagedKvCache cache, int layer, int[][] blockTables, int[] seqLens,
            float scale, int partitionBlocks) {
        int batch = checkQuery(q, cache);
        if (blockTables.length != batch || seqLens.length != batch) {
            throw new IllegalArgumentException("q has batch " + batch + " but blockTables has " + blockTables.length
                    + " rows and seqLens " + seqLens.length + " entries");
        }
        int maxBlocks = 0;
        for (int[] row : blockTables) {
            maxBlocks = Math.max(maxBlocks, row.length);
        }
        int[] flat = new int[batch * maxBlocks];
        Arrays.fill(flat, -1);
        for (int b = 0; b < batch; b++) {
            System.arraycopy(blockTables[b], 0, flat, b * maxBlocks, blockTables[b].length);
        }
        Result r = allocateResult(q, cache.device());
        try (Tensor tables = onDevice(PagedKvCache.hostInts(flat, batch, maxBlocks), cache.device());
                Tensor lens = onDevice(PagedKvCache.hostInts(seqLens, batch), cache.device())) {
            decodeInto(q, cache, layer, tables, lens, scale, partitionBlocks, r.out(), r.lse());
            return r;
        } catch (RuntimeException e) {
            r.close();
            throw e;
        }
    }

    /** Decode attention with a padded table already in tensors: blockTables I32 [B, maxBlocks], seqLens I32 [B]. */
    public static void decodeInto(Tensor q, PagedKvCache cache, int layer, Tensor blockTables, Tensor seqLens,
            float scale, int partitionBlocks, Tensor out, Tensor lse) {
        decodeInto(q, cache.key(layer), cache.value(layer), blockTables, seqLens, scale, partitionBlocks, out, lse);
    }

    /**
     * Decode attention over raw cache tensors {@code kCache}, {@code vCache} [numBlocks, blockSize,
     * Hkv, D] with a padded table: blockTables I32 [B, maxBlocks], seqLens I32 [B]; writes
     * {@code out} [B, Hq, D] (F32/F16/BF16) and {@code lse} F32 [B, Hq]. Every argument is checked
     * natively (block ids, lengths, shapes), with errors naming the offending entry.
     */
    public static void decodeInto(Tensor q, Tensor kCache, Tensor vCache, Tensor blockTables, Tensor seqLens,
            float scale, int partitionBlocks, Tensor out, Tensor lse) {
        checkPartition(partitionBlocks);
        if (out.isReadOnly() || lse.isReadOnly()) {
            throw new IllegalArgumentException("out and lse must be writable");
        }
        try (Arena arena = Arena.ofConfined(); Tensor.Lease a = q.acquire(); Tensor.Lease b = kCache.acquire();
                Tensor.Lease c = vCache.acquire(); Tensor.Lease d = blockTables.acquire();
                Tensor.Lease e = seqLens.acquire(); Tensor.Lease f = out.acquire(); Tensor.Lease g = lse.acquire()) {
            AttentionNative.get().pagedDecode(q.descriptor(arena), kCache.descriptor(arena), vCache.descriptor(arena),
                    blockTables.descriptor(arena), seqLens.descriptor(arena), scale, partitionBlocks,
                    out.descriptor(arena), lse.descriptor(arena), MemorySegment.NULL);
        }
    }

    /** Decode attention with a CSR page table (see {@link CsrPages}). */
    public static Result decode(Tensor q, PagedKvCache cache, int layer, CsrPages pages, float scale,
            int partitionBlocks) {
        int batch = checkQuery(q, cache);
        if (pages.batch() != batch) {
            throw new IllegalArgumentException("q has batch " + batch + " but the CSR table has " + pages.batch());
        }
        checkPartition(partitionBlocks);
        Result r = allocateResult(q, cache.device());
        Device dev = cache.device();
        Tensor k = cache.key(layer);
        Tensor v = cache.value(layer);
        try (Tensor indptr = onDevice(PagedKvCache.hostInts(pages.indptr(), pages.indptr().length), dev);
                Tensor indices = onDevice(PagedKvCache.hostInts(pages.indices(), pages.indices().length), dev);
                Tensor last = onDevice(PagedKvCache.hostInts(pages.lastPageLen(), batch), dev);
                Arena arena = Arena.ofConfined(); Tensor.Lease a = q.acquire(); Tensor.Lease b = k.acquire();
                Tensor.Lease c = v.acquire(); Tensor.Lease d = r.out().acquire(); Tensor.Lease e = r.lse().acquire();
                Tensor.Lease f = indptr.acquire(); Tensor.Lease g = indices.acquire(); Tensor.Lease h = last.acquire()) {
            AttentionNative.get().pagedDecodeCsr(q.descriptor(arena), k.descriptor(arena), v.descriptor(arena),
                    indptr.descriptor(arena), indices.descriptor(arena), last.descriptor(arena), scale,
                    partitionBlocks, r.out().descriptor(arena), r.lse().descriptor(arena), MemorySegment.NULL);
            return r;
        } catch (RuntimeException e) {
            r.close();
            throw e;
        }
    }

    /**
     * Merges two partial results over disjoint key sets: {@code M = max(lseA, lseB)},
     * {@code out = (e^(lseA-M) outA + e^(lseB-M) outB) / (e^(lseA-M) + e^(lseB-M))},
     * {@code lse = M + log(e^(lseA-M) + e^(lseB-M))}. An empty side (lse -inf) contributes nothing.
     * All F32 on one device; {@code out} has {@code numel(lse) * D} elements.
     */
    public static Result merge(Tensor outA, Tensor lseA, Tensor outB, Tensor lseB) {
        Tensor out = Tensor.allocate(DType.F32, outA.device(), outA.shape());
        Tensor lse = Tensor.allocate(DType.F32, outA.device(), lseA.shape());
        try {
            mergeInto(outA, lseA, outB, lseB, out, lse);
            return new Result(out, lse);
        } catch (RuntimeException e) {
            out.close();
            lse.close();
            throw e;
        }
    }

    /** As {@link #merge}, into given tensors, which may be {@code outA}/{@code lseA} themselves (accumulate). */
    public static void mergeInto(Tensor outA, Tensor lseA, Tensor outB, Tensor lseB, Tensor out, Tensor lse) {
        if (out.isReadOnly() || lse.isReadOnly()) {
            throw new IllegalArgumentException("out and lse must be writable");
        }
        try (Arena arena = Arena.ofConfined(); Tensor.Lease a = outA.acquire(); Tensor.Lease b = lseA.acquire();
                Tensor.Lease c = outB.acquire(); Tensor.Lease d = lseB.acquire(); Tensor.Lease e = out.acquire();
                Tensor.Lease f = lse.acquire()) {
            AttentionNative.get().merge(outA.descriptor(arena), lseA.descriptor(arena), outB.descriptor(arena),
                    lseB.descriptor(arena), out.descriptor(arena), lse.descriptor(arena), MemorySegment.NULL);
        }
    }

    /**
     * Merges host partials {out [heads * headDim], lse [heads]} over disjoint key sets, in list order
     * (pairwise, with the merge kernel). No partials: the empty result, out = 0 and lse = -inf.
     * Returns {out, lse}. How DistAttention combines what the instances (or ranks) sent back.
     */
    public static float[][] mergePartials(java.util.List<float[][]> partials, int heads, int headDim) {
        if (partials.isEmpty()) {
            float[] lse = new float[heads];
            java.util.Arrays.fill(lse, Float.NEGATIVE_INFINITY);
            return new float[][] {new float[heads * headDim], lse};
        }
        try (Tensor accOut = Tensor.ofFloats(partials.get(0)[0], heads, headDim);
                Tensor accLse = Tensor.ofFloats(partials.get(0)[1], heads)) {
            for (int i = 1; i < partials.size(); i++) {
                try (Tensor o = Tensor.ofFloats(partials.get(i)[0], heads, headDim);
                        Tensor l = Tensor.ofFloats(partials.get(i)[1], heads)) {
                    mergeInto(accOut, accLse, o, l, accOut, accLse);
                }
            }
            return new float[][] {accOut.toFloatArray(), accLse.toFloatArray()};
        }
    }

    private static int checkQuery(Tensor q, PagedKvCache cache) {
        long[] s = q.shape();
        PagedKvCache.Spec spec = cache.spec();
        if (s.length != 3) {
            throw new IllegalArgumentException("q must be [B, Hq, D], got shape " + Arrays.toString(s));
        }
        if (s[2] != spec.headDim()) {
            throw new IllegalArgumentException("q head_dim " + s[2] + " does not match the cache's " + spec.headDim());
        }
        if (s[1] < 1 || s[1] % spec.numKvHeads() != 0) {
            throw new IllegalArgumentException("q has " + s[1] + " heads, not a positive multiple of the cache's "
                    + spec.numKvHeads() + " KV heads");
        }
        if (!q.device().equals(cache.device())) {
            throw new IllegalArgumentException("q is on " + q.device() + " but the cache is on " + cache.device());
        }
        return Math.toIntExact(s[0]);
    }

    private static void checkPartition(int partitionBlocks) {
        if (partitionBlocks < 0) {
            throw new IllegalArgumentException("partitionBlocks must be >= 0 (0 = automatic), got " + partitionBlocks);
        }
    }

    private static Result allocateResult(Tensor q, Device device) {
        long[] s = q.shape();
        Tensor out = Tensor.allocate(DType.F32, device, s);
        try {
            return new Result(out, Tensor.allocate(DType.F32, device, s[0], s[1]));
        } catch (RuntimeException e) {
            out.close();
            throw e;
        }
    }

    private static Tensor onDevice(Tensor host, Device device) {
        if (device.isCpu()) {
            return host;
        }
        try (host) {
            return host.copyTo(device);
        }
    }
}
