package io.qkern.bench;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Tensor;
import io.qkern.apmm.Apmm;
import io.qkern.apmm.ApmmFormat;
import io.qkern.apmm.ApmmMatrix;
import io.qkern.apmm.ApmmPath;
import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.SymbolLookup;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.MethodHandle;
import java.util.Locale;
import java.util.Optional;
import java.util.SplittableRandom;
import java.util.concurrent.TimeUnit;
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
 * APMM matmul on the CPU and its dense baseline, one class so a JMH run measures both:
 *
 * <ul>
 *   <li>{@link #apmm}: {@code Apmm.matmulInto} of packed signed codes, A [M, K] (a_bits) times
 *       W [N, K] (w_bits), exact I32 output, on the path {@code path} asks for (auto, bitserial,
 *       int8). The packing of A is not timed (a linear layer adds the per-token quantizer).
 *   <li>{@link #sgemm}: OpenBLAS {@code cblas_sgemm} (row-major A [M, K] x W [N, K]^T, F32) from
 *       the system's libopenblas.so.0 when installed; skipped (an exception in setup) otherwise.
 * </ul>
 * Shapes are "KxN" as in the spec (K = in features, N = out features).
 */
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MICROSECONDS)
@Warmup(iterations = 2, time = 1)
@Measurement(iterations = 3, time = 1)
@Fork(value = 1, jvmArgsAppend = {"--enable-native-access=ALL-UNNAMED", "-Xmx8g"})
public class ApmmBenchmark {

    static long[] parseShape(String shape) {
        String[] p = shape.toLowerCase(Locale.ROOT).split("x");
        return new long[] {Long.parseLong(p[0].trim()), Long.parseLong(p[1].trim())};
    }

    /** Random signed codes of {@code bits} bits, packed. */
    static ApmmMatrix randomPacked(long rows, long k, int bits, long seed) {
        try (Tensor codes = Tensor.allocate(DType.I8, Device.CPU, rows, k)) {
            MemorySegment s = codes.segment();
            SplittableRandom r = new SplittableRandom(seed);
            int lo = ApmmFormat.SIGNED.min(bits), hi = ApmmFormat.SIGNED.max(bits);
            long n = rows * k;
            for (long i = 0; i < n; i += 8) {
                long word = r.nextLong();
                for (int b = 0; b < 8 && i + b < n; b++) {
                    int v = lo + (int) (((word >>> (8 * b)) & 0xFF) % (hi - lo + 1));
                    s.set(ValueLayout.JAVA_BYTE, i + b, (byte) v);
                }
            }
            return Apmm.pack(codes, ApmmFormat.SIGNED, bits, 0);
        }
    }

    @State(Scope.Benchmark)
    public static class ApmmState {
        @Param("4096x4096")
        public String shape;

        @Param("1")
        public int m;

        @Param("4")
        public int wBits;

        @Param("8")
        public int aBits;

        @Param("auto")
        public String path;

        ApmmMatrix a, w;
        Tensor out;
        ApmmPath request;

        @Setup(Level.Trial)
        public void setup() {
            long[] kn = parseShape(shape);
            w = randomPacked(kn[1], kn[0], wBits, 1);
            a = randomPacked(m, kn[0], aBits, 2);
            out = Tensor.allocate(DType.I32, Device.CPU, m, kn[1]);
            request = ApmmPath.valueOf(path.toUpperCase(Locale.ROOT));
        }

        @TearDown(Level.Trial)
        public void tearDown() {
            out.close();
            a.close();
            w.close();
        }
    }

    @Benchmark
    public String apmm(ApmmState s) {
        return Apmm.matmulInto(s.a, s.w, s.out, s.request);
    }

    /** OpenBLAS from the system library path, or empty. */
    static Optional<MethodHandle> openBlasSgemm() {
        try {
            SymbolLookup lib = SymbolLookup.libraryLookup("libopenblas.so.0", Arena.global());
            return lib.find("cblas_sgemm").map(addr -> Linker.nativeLinker().downcallHandle(addr,
                    FunctionDescriptor.ofVoid(ValueLayout.JAVA_INT, ValueLayout.JAVA_INT, ValueLayout.JAVA_INT,
                            ValueLayout.JAVA_INT, ValueLayout.JAVA_INT, ValueLayout.JAVA_INT, ValueLayout.JAVA_FLOAT,
                            ValueLayout.ADDRESS, ValueLayout.JAVA_INT, ValueLayout.ADDRESS, ValueLayout.JAVA_INT,
                            ValueLayout.JAVA_FLOAT, ValueLayout.ADDRESS, ValueLayout.JAVA_INT)));
        } catch (IllegalArgumentException e) {
            return Optional.empty();  // not installed
        }
    }

    @State(Scope.Benchmark)
    public static class SgemmState {
        @Param("4096x4096")
        public String shape;

        @Param("1")
        public int m;

        MethodHandle sgemm;
        Arena arena;
        MemorySegment a, w, c;
        int k, n;

        @Setup(Level.Trial)
        public void setup() {
            sgemm = openBlasSgemm().orElseThrow(() -> new IllegalStateException("libopenblas.so.0 is not installed"));
            long[] kn = parseShape(shape);
            k = (int) kn[0];
            n = (int) kn[1];
            arena = Arena.ofShared();
            a = arena.allocate((long) m * k * 4, 64);
            w = arena.allocate((long) n * k * 4, 64);
            c = arena.allocate((long) m * n * 4, 64);
            SplittableRandom r = new SplittableRandom(3);
            for (long i = 0; i < (long) m * k; i++) {
                a.setAtIndex(ValueLayout.JAVA_FLOAT, i, (float) r.nextGaussian());
            }
            for (long i = 0; i < (long) n * k; i++) {
                w.setAtIndex(ValueLayout.JAVA_FLOAT, i, (float) r.nextGaussian());
            }
        }

        @TearDown(Level.Trial)
        public void tearDown() {
            arena.close();
        }
    }

    // CblasRowMajor = 101, CblasNoTrans = 111, CblasTrans = 112
    @Benchmark
    public void sgemm(SgemmState s) throws Throwable {
        s.sgemm.invokeExact(101, 111, 112, s.m, s.n, s.k, 1.0f, s.a, s.k, s.w, s.k, 0.0f, s.c, s.n);
    }
}
