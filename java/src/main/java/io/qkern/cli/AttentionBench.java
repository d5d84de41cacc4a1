package io.qkern.cli;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Tensor;
import io.qkern.attention.PagedAttention;
import io.qkern.attention.PagedKvCache;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;

/**
 * {@code qkern bench attention}: paged decode attention (one query token per sequence, head_dim
 * 128) over batch x context cached tokens, for the head ratios 32x8, 40x40 and 64x8 in BF16 and
 * F32, each next to the same-run read probe and to the dense baseline — the same kernel over KV
 * stored contiguously per sequence ([B, T, Hkv, D] through an identity table of 256-token blocks).
 *
 * <p>Traffic counted ({@code gbps}): the K and V bytes the call must read,
 * {@code 2 * B * T * Hkv * D * dtype size}; queries and outputs are negligible beside them.
 * Both layouts are timed in alternation; {@code paged_over_dense} is the median over sample
 * pairs of the paged layout's throughput over the dense one's. {@code gflops} counts
 * {@code 4 * B * T * Hq * D} flops per call; on the CPU {@code pct_of_fma_peak} sets it beside the
 * FMA peak probe (the roofline of the compute-bound rows: a group of 8 does 8 flops per BF16 KV
 * byte).
 */
final class AttentionBench implements BenchSuite {
    static final int HEAD_DIM = 128;

    @Override
    public String name() {
        return "attention";
    }

    @Override
    public String summary() {
        return "paged decode attention (GQA 32x8, MHA 40x40, 64x8; BF16/F32) vs dense contiguous KV";
    }

    @Override
    public void run(BenchContext ctx) {
        int batch = ctx.quick() ? 2 : 4;
        int context = ctx.quick() ? 1024 : 4096;
        List<int[]> heads = ctx.quick() ? List.of(new int[] {32, 8}) : List.of(new int[] {32, 8}, new int[] {40, 40},
                new int[] {64, 8});
        List<DType> dtypes = ctx.quick() ? List.of(DType.BF16) : List.of(DType.BF16, DType.F32);
        for (int[] h : heads) {
            for (DType dt : dtypes) {
                String shape = "B" + batch + "xT" + context + "xH" + h[0] + "/" + h[1];
                ctx.note("preparing " + shape + " " + dt);
                try (Setup dense = new Setup(ctx.device(), batch, context, h, dt, PagedKvCache.MAX_BLOCK_SIZE, false);
                        Setup paged = new Setup(ctx.device(), batch, context, h, dt, PagedKvCache.DEFAULT_BLOCK_SIZE,
                                true)) {
                    // timed in alternation: the ratio is what the target is about, and on a shared
                    // machine two separate medians can differ by more than the layouts do
                    BenchContext.Paired t = ctx.secondsPaired(dense::decode, paged::decode);
                    long kvBytes = 2L * batch * context * h[1] * HEAD_DIM * dt.byteSize();
                    double flops = 4.0 * batch * context * h[0] * HEAD_DIM;
                    dense.emit(ctx, shape, t.firstSeconds(), kvBytes, flops, Double.NaN);
                    paged.emit(ctx, shape, t.secondSeconds(), kvBytes, flops, 1 / t.medianRatio());
                }
            }
        }
    }

    /** One layout's cache, tables, query and outputs. */
    private static final class Setup implements AutoCloseable {
        private final int blockSize;
        private final boolean shuffled;
        private final PagedKvCache cache;
        private final Tensor tables;
        private final Tensor seqLens;
        private final Tensor q;
        private final Tensor out;
        private final Tensor lse;

        Setup(Device device, int batch, int context, int[] h, DType dt, int blockSize, boolean shuffled) {
            this.blockSize = blockSize;
            this.shuffled = shuffled;
            int pages = (context + blockSize - 1) / blockSize;
            int blocks = batch * pages;
            int[] ids = new int[blocks];
            SplittableRandom rnd = new SplittableRandom(7);
            for (int i = 0; i < blocks; i++) {
                ids[i] = i;
            }
            if (shuffled) {  // a server's tables after a while: blocks anywhere in the pool
                for (int i = blocks - 1; i > 0; i--) {
                    int j = rnd.nextInt(i + 1);
                    int t = ids[i];
                    ids[i] = ids[j];
                    ids[j] = t;
                }
            }
            int[] lens = new int[batch];
            java.util.Arrays.fill(lens, context);
            float[] qv = new float[batch * h[0] * HEAD_DIM];
            for (int i = 0; i < qv.length; i++) {
                qv[i] = (float) rnd.nextGaussian();
            }
            List<AutoCloseable> made = new java.util.ArrayList<>();
            try {
                cache = add(made, PagedKvCache.allocate(device, new PagedKvCache.Spec(1, blocks, blockSize, h[1],
                        HEAD_DIM, dt)));
                try (Tensor hostTables = hostInts(ids, batch, pages); Tensor hostLens = hostInts(lens, batch);
                        Tensor hostQ = Tensor.ofFloats(qv, batch, h[0], HEAD_DIM)) {
                    tables = add(made, hostTables.copyTo(device));
                    seqLens = add(made, hostLens.copyTo(device));
                    q = add(made, hostQ.copyTo(device));
                }
                out = add(made, Tensor.allocate(DType.F32, device, batch, h[0], HEAD_DIM));
                lse = add(made, Tensor.allocate(DType.F32, device, batch, h[0]));
                fill(cache.key(0), 1);
                fill(cache.value(0), 2);
            } catch (RuntimeException e) {
                for (AutoCloseable c : made.reversed()) {
                    try {
                        c.close();
                    } catch (Exception suppressed) {
                        e.addSuppressed(suppressed);
                    }
                }
                throw e;
            }
        }

        private static <T extends AutoCloseable> T add(List<AutoCloseable> made, T resource) {
            made.add(resource);
            return resource;
        }

        void decode() {
            PagedAttention.decodeInto(q, cache, 0, tables, seqLens, (float) (1 / Math.sqrt(HEAD_DIM)), 0, out, lse);
        }

        /** Reports this layout's time; pagedOverDense (throughput) only for the paged layout. */
        void emit(BenchContext ctx, String shape, double seconds, long kvBytes, double flops, double pagedOverDense) {
            Map<String, Object> extra = new LinkedHashMap<>();
            extra.put("layout", shuffled ? "paged" : "dense");
            extra.put("block_size", blockSize);
            extra.put("kv_mib", Math.round(kvBytes / 1048576.0));
            double gflops = flops / seconds / 1e9;
            extra.put("gflops", Math.round(gflops * 10) / 10.0);
            if (ctx.device().kind() == Device.Kind.CPU) {
                extra.put("pct_of_fma_peak", Math.round(1000 * gflops / ctx.fmaPeakGflops()) / 10.0);
            }
            if (!Double.isNaN(pagedOverDense)) {
                extra.put("paged_over_dense", Math.round(pagedOverDense * 1000) / 1000.0);
            }
            ctx.emit(shuffled ? "paged_decode" : "dense_decode", shape, cache.spec().dtype().name().toLowerCase(),
                    ctx.backend(), seconds, kvBytes, extra);
        }

        @Override
        public void close() {
            lse.close();
            out.close();
            q.close();
            seqLens.close();
            tables.close();
            cache.close();
        }
    }

    private static Tensor hostInts(int[] v, long... shape) {
        Tensor t = Tensor.allocate(DType.I32, Device.CPU, shape);
        MemorySegment.copy(v, 0, t.segment(), ValueLayout.JAVA_INT, 0, v.length);
        return t;
    }

    /** N(0, 1) values: a 1 MiB random pattern repeated (bandwidth does not care; setup stays fast). */
    private static void fill(Tensor t, long seed) {
        try (Tensor host = Tensor.allocate(t.dtype(), Device.CPU, t.shape())) {
            MemorySegment s = host.segment();
            long chunk = Math.min(s.byteSize(), 1 << 20);
            SplittableRandom r = new SplittableRandom(seed);
            int esize = t.dtype().byteSize();
            for (long i = 0; i < chunk / esize; i++) {
                float v = (float) r.nextGaussian();
                if (t.dtype() == DType.F32) {
                    s.setAtIndex(ValueLayout.JAVA_FLOAT, i, v);
                } else if (t.dtype() == DType.BF16) {
                    s.setAtIndex(ValueLayout.JAVA_SHORT, i, (short) (Float.floatToRawIntBits(v) >>> 16));
                } else {
                    s.setAtIndex(ValueLayout.JAVA_SHORT, i, Float.floatToFloat16(v));
                }
            }
            for (long off = chunk; off < s.byteSize(); off += chunk) {
                MemorySegment.copy(s, 0, s, off, Math.min(chunk, s.byteSize() - off));
            }
            t.copyFrom(host);
        }
    }
}
