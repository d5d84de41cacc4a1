package io.qkern.bench;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Tensor;
import io.qkern.attention.PagedAttention;
import io.qkern.attention.PagedKvCache;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.SplittableRandom;
import java.util.concurrent.TimeUnit;
import java.util.stream.IntStream;
import org.openjdk.jmh.annotations.Benchmark;
import org.openjdk.jmh.annotations.BenchmarkMode;
import org.openjdk.jmh.annotations.Fork;
import org.openjdk.jmh.annotations.Level;
import org.openjdk.jmh.annotations.Measurement;
import org.openjdk.jmh.annotations.Mode;
import org.openjdk.jmh.annotations.OutputTimeUnit;
import org.openjdk.jmh.annotations.Param;
import org.openjdk.jmh.annotations.Scope;
import org.openjdk.jmh.annotations.Setup;
import org.openjdk.jmh.annotations.State;
import org.openjdk.jmh.annotations.TearDown;
import org.openjdk.jmh.annotations.Warmup;

/**
 * Paged decode attention on the CPU ({@code PagedAttention.decodeInto}): one query token per
 * sequence over {@code context} cached tokens, head_dim 128.
 *
 * <ul>
 *   <li>{@code layout=paged}: the blocks of all sequences are a random permutation of the pool
 *       (what a long-running server's block tables look like);
 *   <li>{@code layout=dense}: the dense baseline — each sequence's KV contiguous in memory
 *       ([B, T, Hkv, D], the layout of a non-paged cache), read by the same kernel through an
 *       identity table of 256-token blocks, so the comparison isolates the cost of paging.
 * </ul>
 *
 * <p>The KV bytes a call must read ({@code 2 * B * T * Hkv * D * dtype size}) over the time gives
 * GB/s; {@link AttentionDecodeReport} sets that beside the read-bandwidth probe measured in the
 * same process.
 */
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MILLISECONDS)
@Warmup(iterations = 2, time = 1)
@Measurement(iterations = 4, time = 1)
@Fork(value = 1, jvmArgsAppend = {"--enable-native-access=ALL-UNNAMED"})
public class AttentionDecodeBenchmark {
    static final int HEAD_DIM = 128;

    @State(Scope.Benchmark)
    public static class DecodeState {
        @Param({"4"})
        public int batch;

        @Param({"4096"})
        public int context;

        /** Query heads x KV heads. */
        @Param({"32x8", "40x40", "64x8"})
        public String heads;

        @Param({"16"})
        public int blockSize;

        @Param({"BF16", "F32"})
        public String dtype;

        @Param({"paged", "dense"})
        public String layout;

        PagedKvCache cache;
        Tensor q;
        Tensor tables;
        Tensor lens;
        Tensor out;
        Tensor lse;
        float scale;

        @Setup(Level.Trial)
        public void setup() {
            int[] h = parseHeads(heads);
            int bs = layout.equals("dense") ? PagedKvCache.MAX_BLOCK_SIZE : blockSize;
            int pages = (context + bs - 1) / bs;
            int blocks = batch * pages;
            cache = PagedKvCache.allocate(Device.CPU,
                    new PagedKvCache.Spec(1, blocks, bs, h[1], HEAD_DIM, DType.valueOf(dtype)));
            fillRandom(cache.key(0), 1);
            fillRandom(cache.value(0), 2);
            int[] ids = IntStream.range(0, blocks).toArray();
            if (layout.equals("paged")) {
                SplittableRandom r = new SplittableRandom(3);
                for (int i = blocks - 1; i > 0; i--) {
                    int j = r.nextInt(i + 1);
                    int t = ids[i];
                    ids[i] = ids[j];
                    ids[j] = t;
                }
            } else if (!layout.equals("dense")) {
                throw new IllegalArgumentException("layout must be paged or dense, got " + layout);
            }
            tables = Tensor.allocate(DType.I32, Device.CPU, batch, pages);
            MemorySegment.copy(ids, 0, tables.segment(), ValueLayout.JAVA_INT, 0, ids.length);
            lens = Tensor.allocate(DType.I32, Device.CPU, batch);
            for (int b = 0; b < batch; b++) {
                lens.segment().setAtIndex(ValueLayout.JAVA_INT, b, context);
            }
            q = Tensor.allocate(DType.F32, Device.CPU, batch, h[0], HEAD_DIM);
            fillRandom(q, 4);
            out = Tensor.allocate(DType.F32, Device.CPU, batch, h[0], HEAD_DIM);
            lse = Tensor.allocate(DType.F32, Device.CPU, batch, h[0]);
            scale = (float) (1 / Math.sqrt(HEAD_DIM));
            PagedAttention.decodeInto(q, cache, 0, tables, lens, scale, 0, out, lse);
            if (!Float.isFinite(out.segment().get(ValueLayout.JAVA_FLOAT, 0))) {
                throw new IllegalStateException("decode produced a non-finite output");
            }
        }

        /** Bytes of K and V one call reads. */
        long kvBytes() {
            int[] h = parseHeads(heads);
            return 2L * batch * context * h[1] * HEAD_DIM * DType.valueOf(dtype).byteSize();
        }

        @TearDown(Level.Trial)
        public void tearDown() {
            cache.close();
            q.close();
            tables.close();
            lens.close();
            out.close();
            lse.close();
        }
    }

    static int[] parseHeads(String heads) {
        String[] p = heads.split("x");
        return new int[] {Integer.parseInt(p[0]), Integer.parseInt(p[1])};
    }

    /** Values of N(0, 1) (a 1 MiB random pattern repeated: bandwidth does not care, setup stays fast). */
    static void fillRandom(Tensor t, long seed) {
        MemorySegment s = t.segment();
        int esize = t.dtype().byteSize();
        long chunk = Math.min(s.byteSize(), 1 << 20);
        SplittableRandom r = new SplittableRandom(seed);
        for (long i = 0; i < chunk / esize; i++) {
            float v = (float) r.nextGaussian();
            switch (t.dtype()) {
                case F32 -> s.setAtIndex(ValueLayout.JAVA_FLOAT, i, v);
                case BF16 -> s.setAtIndex(ValueLayout.JAVA_SHORT, i, (short) (Float.floatToRawIntBits(v) >>> 16));
                case F16 -> s.setAtIndex(ValueLayout.JAVA_SHORT, i, Float.floatToFloat16(v));
                default -> throw new IllegalArgumentException(t.dtype().toString());
            }
        }
        for (long off = chunk; off < s.byteSize(); off += chunk) {
            MemorySegment.copy(s, 0, s, off, Math.min(chunk, s.byteSize() - off));
        }
    }

    @Benchmark
    public Tensor decode(DecodeState st) {
        PagedAttention.decodeInto(st.q, st.cache, 0, st.tables, st.lens, st.scale, 0, st.out, st.lse);
        return st.out;
    }
}
