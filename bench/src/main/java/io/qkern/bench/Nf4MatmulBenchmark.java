package io.qkern.bench;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Qkern;
import io.qkern.Tensor;
import io.qkern.nf4.Nf4;
import io.qkern.nf4.Nf4Matmul;
import io.qkern.nf4.Nf4Tensor;
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
 * The fused NF4 matmul on the CPU beside its yardsticks, in one class so one JMH run measures
 * them together: weight [rows, cols] = [N, K] (out x in features), blocksize 64, F32 activations.
 *
 * <ul>
 *   <li>{@link #nf4Forward}: y[M, N] = x W^T through the NF4 kernel (GEMV for M &lt;= 16, tiled beyond).
 *       NF4 bytes: N*K/2 packed + N*K/16 absmax.
 *   <li>{@link #nf4InputGrad}: dx[M, K] = dy W.
 *   <li>{@link #denseF32}: the same product over the dequantized F32 weights (qkern's tile kernels
 *       without the decode): 4*N*K bytes of weights, the "keep the weights dense" baseline.
 *   <li>{@link #openblasSgemm}: OpenBLAS cblas_sgemm on the dequantized weights (fails in setup,
 *       saying so, where OpenBLAS is not installed).
 *   <li>{@link #probeRead}: the read-bandwidth probe over 512 MiB, printed in GB/s at the end of the
 *       trial (its JMH time is the probe call's own duration).
 * </ul>
 *
 * <p>Targets on a 2-core CPU (issue 3): M = 1 at >= 50% of the probe on the NF4 bytes, >= 3x the
 * dense F32 GEMV. Run: {@code java --enable-native-access=ALL-UNNAMED -jar bench/target/qkern-bench.jar
 * Nf4Matmul -p shape=4096x4096 -p m=1}.
 */
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MILLISECONDS)
@Warmup(iterations = 3, time = 1)
@Measurement(iterations = 5, time = 1)
@Fork(value = 1, jvmArgsAppend = {"--enable-native-access=ALL-UNNAMED"})
public class Nf4MatmulBenchmark {

    @State(Scope.Benchmark)
    public static class Layer {
        @Param({"4096x4096", "4096x11008", "11008x4096", "14336x4096"})
        public String shape;

        @Param({"1", "16", "64"})
        public int m;

        Nf4Tensor q;
        Tensor dense;
        Tensor x;
        Tensor y;
        Tensor dy;
        Tensor dx;

        @Setup(Level.Trial)
        public void setUp() {
            long[] s = Nf4DequantBenchmark.parseShape(shape);
            try (Tensor w = Tensor.allocate(DType.F32, Device.CPU, s[0], s[1])) {
                Nf4DequantBenchmark.fillNormal(w, 1);
                q = Nf4.quantize("w", w, new Nf4.Options(64, false));
            }
            dense = Nf4.dequantize(q, DType.F32);
            x = Tensor.allocate(DType.F32, Device.CPU, m, s[1]);
            Nf4DequantBenchmark.fillNormal(x, 2);
            y = Tensor.allocate(DType.F32, Device.CPU, m, s[0]);
            dy = Tensor.allocate(DType.F32, Device.CPU, m, s[0]);
            Nf4DequantBenchmark.fillNormal(dy, 3);
            dx = Tensor.allocate(DType.F32, Device.CPU, m, s[1]);
        }

        @TearDown(Level.Trial)
        public void tearDown() {
            for (AutoCloseable c : new AutoCloseable[] {q, dense, x, y, dy, dx}) {
                try {
                    c.close();
                } catch (Exception e) {
                    throw new IllegalStateException(e);
                }
            }
        }
    }

    @State(Scope.Benchmark)
    public static class Blas {
        OpenBlas blas;

        @Setup(Level.Trial)
        public void setUp() {
            blas = OpenBlas.find().orElseThrow(() -> new IllegalStateException(
                    "OpenBLAS (libopenblas.so.0) is not installed: apt-get install libopenblas0-pthread"));
        }
    }

    @State(Scope.Benchmark)
    public static class Probe {
        Tensor buffer;
        double best;

        @Setup(Level.Trial)
        public void setUp() {
            buffer = Tensor.allocate(DType.U8, Device.CPU, 512L << 20);
            buffer.fillBytes(1);
        }

        @TearDown(Level.Trial)
        public void tearDown() {
            System.out.printf("%nread probe: best %.2f GB/s%n", best);
            buffer.close();
        }
    }

    @Benchmark
    public Tensor nf4Forward(Layer l) {
        Nf4Matmul.forwardInto(l.x, l.q, l.q.absmax(), null, l.y);
        return l.y;
    }

    @Benchmark
    public Tensor nf4InputGrad(Layer l) {
        Nf4Matmul.inputGradInto(l.dy, l.q, l.q.absmax(), l.dx);
        return l.dx;
    }

    @Benchmark
    public Tensor denseF32(Layer l) {
        Nf4Matmul.denseF32Into(l.x, l.dense, l.y);
        return l.y;
    }

    @Benchmark
    public Tensor openblasSgemm(Layer l, Blas b) {
        long[] s = l.dense.shape();
        b.blas.matmulTransposed(l.x.segment(), l.dense.segment(), l.y.segment(), l.m, (int) s[0], (int) s[1]);
        return l.y;
    }

    @Benchmark
    public double probeRead(Probe p) {
        double g = Qkern.probeReadBandwidth(p.buffer, 1).gbps();
        p.best = Math.max(p.best, g);
        return g;
    }
}
