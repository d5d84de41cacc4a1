package io.qkern.bench;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Qkern;
import io.qkern.Tensor;
import io.qkern.nf4.Nf4;
import io.qkern.nf4.Nf4Tensor;
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
 * NF4 dequantize on the CPU, beside the yardsticks it is judged against, all in one class so one
 * JMH run measures them together (DESIGN.md, "How results are judged"):
 *
 * <ul>
 *   <li>{@link #dequant}: {@code Nf4.dequantizeInto(q, out)} — reads the packed codes (n/2 bytes) and
 *       the float32 absmax (4 bytes per 64-element block), writes n outputs of the dtype's size.
 *   <li>{@link #copyOutputBytes}: a plain Java/FFM {@code MemorySegment.copy} of as many bytes as the
 *       dequant writes — the write-bandwidth side of dequant, split over all cores like the kernel.
 *   <li>{@link #widenBf16ToF32Java}: "what you would do without qkern" — keep the weight dense in
 *       BF16 and widen it to F32 in Java (2n bytes read, 4n written), split over all cores.
 *   <li>{@link #probeRead}: the library's read-bandwidth probe ({@code Qkern.probeReadBandwidth},
 *       best of several read patterns on all worker threads) over 512 MiB; its GB/s is reported as
 *       a line printed at the end of the trial (its JMH time per call is the probe's own duration,
 *       not a bandwidth). {@link Nf4DequantReport} measures the probe in-process before and after
 *       the JMH runs instead; that is the number the result files use.
 * </ul>
 *
 * <p>Raw run: {@code java --enable-native-access=ALL-UNNAMED -jar bench/target/qkern-bench.jar Nf4Dequant}.
 */
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MILLISECONDS)
@Warmup(iterations = 3, time = 1)
@Measurement(iterations = 5, time = 1)
@Fork(value = 1, jvmArgsAppend = {"--enable-native-access=ALL-UNNAMED"})
public class Nf4DequantBenchmark {

    /** Bytes per chunk handed to one thread by the Java baselines (a multiple of 4 KiB). */
    static final long CHUNK_ALIGN = 4096;

    /** Parses "ROWSxCOLS". */
    static long[] parseShape(String shape) {
        String[] p = shape.toLowerCase(java.util.Locale.ROOT).split("x");
        if (p.length != 2) {
            throw new IllegalArgumentException("shape must be ROWSxCOLS, got \"" + shape + "\"");
        }
        return new long[] {Long.parseLong(p[0].trim()), Long.parseLong(p[1].trim())};
    }

    /** Fills a host F32 tensor with N(0, 1) values (weights of a Linear layer, up to scale). */
    static void fillNormal(Tensor t, long seed) {
        MemorySegment s = t.segment();
        long n = t.numel();
        int parts = Runtime.getRuntime().availableProcessors();
        IntStream.range(0, parts).parallel().forEach(p -> {
            SplittableRandom r = new SplittableRandom(seed + 0x9E3779B97F4A7C15L * (p + 1));
            long i0 = n * p / parts;
            long i1 = n * (p + 1) / parts;
            for (long i = i0; i < i1; i++) {
                s.setAtIndex(ValueLayout.JAVA_FLOAT, i, (float) r.nextGaussian());
            }
        });
    }

    /** Runs {@code body(from, to)} over [0, n) in one 4 KiB-aligned chunk per core (caller + common pool). */
    static void parallelChunks(long n, long align, ChunkBody body) {
        int parts = Runtime.getRuntime().availableProcessors();
        if (parts == 1) {
            body.run(0, n);
            return;
        }
        IntStream.range(0, parts).parallel().forEach(p -> {
            long from = Math.min(n, (n / parts / align) * align * p);
            long to = p == parts - 1 ? n : Math.min(n, (n / parts / align) * align * (p + 1));
            if (to > from) {
                body.run(from, to);
            }
        });
    }

    @FunctionalInterface
    interface ChunkBody {
        void run(long from, long to);
    }

    // ---- the kernel --------------------------------------------------------------------------------

    @State(Scope.Benchmark)
    public static class DequantState {
        @Param({"4096x4096", "4096x11008", "11008x4096", "14336x4096"})
        public String shape;

        @Param({"F32", "BF16", "F16"})
        public String dtype;

        @Param({"64"})
        public int blocksize;

        Nf4Tensor q;
        Tensor out;

        @Setup(Level.Trial)
        public void setup() {
            long[] s = parseShape(shape);
            try (Tensor w = Tensor.allocate(DType.F32, Device.CPU, s)) {
                fillNormal(w, 42);
                q = Nf4.quantize(w, new Nf4.Options(blocksize, false));
            }
            out = Tensor.allocate(DType.valueOf(dtype), Device.CPU, s);
            out.fillBytes(0xff);  // touch every page before timing
            Nf4.dequantizeInto(q, out);
            if (out.numel() > 0 && !Float.isFinite(firstElement(out))) {
                throw new IllegalStateException("dequantize left a non-finite first element");
            }
        }

        @TearDown(Level.Trial)
        public void tearDown() {
            q.close();
            out.close();
        }
    }

    static float firstElement(Tensor t) {
        MemorySegment s = t.segment();
        return switch (t.dtype()) {
            case F32 -> s.get(ValueLayout.JAVA_FLOAT, 0);
            case F16 -> Float.float16ToFloat(s.get(ValueLayout.JAVA_SHORT, 0));
            case BF16 -> Float.intBitsToFloat((s.get(ValueLayout.JAVA_SHORT, 0) & 0xffff) << 16);
            default -> throw new IllegalStateException(t.dtype().toString());
        };
    }

    @Benchmark
    public Tensor dequant(DequantState st) {
        Nf4.dequantizeInto(st.q, st.out);
        return st.out;
    }

    // ---- baseline: copy as many bytes as dequant writes --------------------------------------------

    @State(Scope.Benchmark)
    public static class CopyState {
        @Param({"4096x4096", "4096x11008", "11008x4096", "14336x4096"})
        public String shape;

        /** Output dtype whose byte count is copied (F16 and BF16 copy the same bytes). */
        @Param({"F32", "BF16", "F16"})
        public String dtype;

        Tensor src;
        Tensor dst;

        @Setup(Level.Trial)
        public void setup() {
            long[] s = parseShape(shape);
            DType d = DType.valueOf(dtype);
            src = Tensor.allocate(d, Device.CPU, s);
            dst = Tensor.allocate(d, Device.CPU, s);
            src.fillBytes(0x3c);
            dst.fillBytes(0);
        }

        @TearDown(Level.Trial)
        public void tearDown() {
            src.close();
            dst.close();
        }
    }

    @Benchmark
    public Tensor copyOutputBytes(CopyState st) {
        MemorySegment a = st.src.segment();
        MemorySegment b = st.dst.segment();
        parallelChunks(a.byteSize(), CHUNK_ALIGN, (from, to) -> MemorySegment.copy(a, from, b, from, to - from));
        return st.dst;
    }

    // ---- baseline: dense BF16 weight widened to F32 in Java -----------------------------------------

    @State(Scope.Benchmark)
    public static class WidenState {
        @Param({"4096x4096", "4096x11008", "11008x4096", "14336x4096"})
        public String shape;

        Tensor bf16;
        Tensor f32;

        @Setup(Level.Trial)
        public void setup() {
            long[] s = parseShape(shape);
            bf16 = Tensor.allocate(DType.BF16, Device.CPU, s);
            f32 = Tensor.allocate(DType.F32, Device.CPU, s);
            MemorySegment b = bf16.segment();
            SplittableRandom r = new SplittableRandom(7);
            for (long i = 0; i < bf16.numel(); i++) {  // finite bf16 values of either sign
                b.setAtIndex(ValueLayout.JAVA_SHORT, i, (short) (0x3c00 + r.nextInt(0x0400) | (i & 1) << 15));
            }
            f32.fillBytes(0xff);
        }

        @TearDown(Level.Trial)
        public void tearDown() {
            bf16.close();
            f32.close();
        }
    }

    @Benchmark
    public Tensor widenBf16ToF32Java(WidenState st) {
        MemorySegment in = st.bf16.segment();
        MemorySegment out = st.f32.segment();
        parallelChunks(st.bf16.numel(), CHUNK_ALIGN, (from, to) -> widen(in, out, from, to));
        return st.f32;
    }

    static void widen(MemorySegment in, MemorySegment out, long from, long to) {
        for (long i = from; i < to; i++) {
            out.setAtIndex(ValueLayout.JAVA_INT, i, (in.getAtIndex(ValueLayout.JAVA_SHORT, i) & 0xffff) << 16);
        }
    }

    // ---- the read-bandwidth probe (for raw JMH runs; the report measures it in-process) ---------------

    /** 512 MiB, far larger than any cache here. */
    public static final long PROBE_BYTES = 512L << 20;

    @State(Scope.Benchmark)
    public static class ProbeState {
        Tensor buffer;
        final java.util.List<Double> gbps = new java.util.ArrayList<>();
        String pattern = "";

        @Setup(Level.Trial)
        public void setup() {
            buffer = Tensor.allocate(DType.U8, Device.CPU, PROBE_BYTES);
            buffer.fillBytes(1);
        }

        /** JMH shows a forked run's stdout: the probe's GB/s appears under the benchmark's output. */
        @TearDown(Level.Trial)
        public void tearDown() {
            buffer.close();
            double[] v = gbps.stream().mapToDouble(Double::doubleValue).sorted().toArray();
            if (v.length > 0) {
                System.out.printf(java.util.Locale.ROOT,
                        "%nread probe over %d MiB: median %.2f GB/s, best %.2f GB/s over %d calls (%s, %d qkern threads)%n",
                        PROBE_BYTES >> 20, v[v.length / 2], v[v.length - 1], v.length, pattern, Qkern.cpuThreads());
            }
        }
    }

    /**
     * One call of the library's probe (three read patterns, one pass each, best kept). Its time per
     * call is not a bandwidth; the GB/s it returns is printed at the end of the trial.
     */
    @Benchmark
    public double probeRead(ProbeState st) {
        Qkern.Bandwidth b = Qkern.probeReadBandwidth(st.buffer, 1);
        st.gbps.add(b.gbps());
        st.pattern = b.pattern();
        return b.gbps();
    }
}
