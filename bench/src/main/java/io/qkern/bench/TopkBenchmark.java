package io.qkern.bench;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Tensor;
import io.qkern.topk.Dgc;
import io.qkern.topk.TopK;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
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
 * Exact top-k by |x| (radix select) and the whole DGC step on the CPU, beside their yardsticks:
 * <ul>
 *   <li>{@link #radixSelect}: {@code TopK.select} (all threads, the run-time SIMD path);
 *   <li>{@link #nthElement}: the std::nth_element baseline ({@code TopK.baseline}, one thread, as the
 *       standard library runs);
 *   <li>{@link #fullSort}: std::sort of every (|x|, index) pair (one thread);
 *   <li>{@link #dgcStep}: {@code Dgc.step} with momentum (finite check on, exact selection) and
 *       {@link #dgcStepNoCheck} (the check off: one read of g less);
 *   <li>{@link #momentumPass}: the momentum pass alone, the step's yardstick.
 * </ul>
 * Inputs are Gaussian; {@link TopkReport} adds the read-bandwidth probe measured in the same process.
 */
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MILLISECONDS)
@Warmup(iterations = 1, time = 1)
@Measurement(iterations = 3, time = 1)
@Fork(value = 1, jvmArgsAppend = {"--enable-native-access=ALL-UNNAMED"})
public class TopkBenchmark {

    static Tensor gaussian(long n, long seed) {
        Tensor t = Tensor.allocate(DType.F32, Device.CPU, n);
        MemorySegment s = t.segment();
        SplittableRandom r = new SplittableRandom(seed);
        for (long i = 0; i < n; i++) {
            s.setAtIndex(ValueLayout.JAVA_FLOAT, i, (float) gaussian(r));
        }
        return t;
    }

    private static double gaussian(SplittableRandom r) {  // Box-Muller; SplittableRandom has no nextGaussian on 17
        double u = 1.0 - r.nextDouble(), v = r.nextDouble();
        return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
    }

    @State(Scope.Benchmark)
    public static class Select {
        @Param({"1000000", "10000000", "100000000"})
        public long n;

        @Param({"0.001", "0.01"})
        public double ratio;

        Tensor x;
        long k;

        @Setup(Level.Trial)
        public void setup() {
            x = gaussian(n, 1);
            k = TopK.kFor(n, ratio);
        }

        @TearDown(Level.Trial)
        public void tearDown() {
            x.close();
        }
    }

    @Benchmark
    public long radixSelect(Select s) {
        try (TopK.Result r = TopK.select(s.x, s.k)) {
            return r.k();
        }
    }

    @Benchmark
    public long nthElement(Select s) {
        try (TopK.Result r = TopK.baseline(s.x, s.k, TopK.Baseline.NTH_ELEMENT)) {
            return r.k();
        }
    }

    @Benchmark
    public long fullSort(Select s) {
        try (TopK.Result r = TopK.baseline(s.x, s.k, TopK.Baseline.FULL_SORT)) {
            return r.k();
        }
    }

    @State(Scope.Benchmark)
    public static class Step {
        @Param({"1000000", "10000000", "100000000"})
        public long n;

        @Param({"0.001", "0.01"})
        public double ratio;

        Tensor g, u, v, idx, val;

        @Setup(Level.Trial)
        public void setup() {
            g = gaussian(n, 2);
            u = Tensor.allocate(DType.F32, Device.CPU, n);
            v = Tensor.allocate(DType.F32, Device.CPU, n);
            u.fillBytes(0);
            v.fillBytes(0);
            long k = TopK.kFor(n, ratio);
            idx = Tensor.allocate(DType.I32, Device.CPU, k);
            val = Tensor.allocate(DType.F32, Device.CPU, k);
        }

        @TearDown(Level.Trial)
        public void tearDown() {
            for (Tensor t : new Tensor[] {g, u, v, idx, val}) {
                t.close();
            }
        }
    }

    @Benchmark
    public long dgcStep(Step s) {
        return Dgc.step("g", s.g, s.u, s.v, Dgc.Options.DEFAULT, s.idx, s.val);
    }

    @Benchmark
    public long dgcStepNoCheck(Step s) {
        return Dgc.step("g", s.g, s.u, s.v, NO_CHECK, s.idx, s.val);
    }

    static final Dgc.Options NO_CHECK = Dgc.Options.DEFAULT.withCheckFinite(false);

    @Benchmark
    public void momentumPass(Step s) {
        Dgc.momentumPassBaseline(s.g, s.u, s.v, 0.9f);
    }
}
