package io.qkern.bench;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Qkern;
import io.qkern.Tensor;
import io.qkern.dist.Communicator;
import io.qkern.dist.DeviceMesh;
import io.qkern.dist.LockstepRanks;
import io.qkern.dist.ReduceOp;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
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
 * Collectives over in-process ranks ({@code io.qkern.dist.InProcessCommunicator}): every
 * invocation is one collective on all {@code ranks} (rank 0 on the benchmark thread, the others on
 * persistent rank threads), over {@code bytes} of F32 per rank. Same-run yardsticks in the same
 * fork: {@code memcpyBaseline} copies one rank's buffer once, {@code readProbe} is the library's
 * read-bandwidth probe over the largest buffer. {@code qkern bench dist} prints the same
 * measurements with bus bandwidth and % of the probe.
 */
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MICROSECONDS)
@Warmup(iterations = 2, time = 1)
@Measurement(iterations = 5, time = 1)
@Fork(value = 1, jvmArgsAppend = {"--enable-native-access=ALL-UNNAMED"})
public class DistCollectivesBenchmark {

    @State(Scope.Benchmark)
    public static class Ranks {
        @Param({"2", "4"})
        public int ranks;

        @Param({"4096", "1048576", "67108864"})
        public long bytes;

        List<Communicator> comms;
        LockstepRanks lockstep;
        final List<Tensor> send = new ArrayList<>();
        final List<Tensor> recv = new ArrayList<>();
        final List<Tensor> gathered = new ArrayList<>();

        @Setup(Level.Trial)
        public void setup() {
            comms = DeviceMesh.cpu(ranks).inProcess(Duration.ofSeconds(120));
            lockstep = new LockstepRanks(comms);
            long n = bytes / 4;
            for (int r = 0; r < ranks; r++) {
                send.add(ones(n));
                recv.add(ones(n));
                gathered.add(ones(n * ranks));
            }
        }

        @TearDown(Level.Trial)
        public void tearDown() {
            lockstep.close();
            comms.forEach(Communicator::close);
            send.forEach(Tensor::close);
            recv.forEach(Tensor::close);
            gathered.forEach(Tensor::close);
        }

        private static Tensor ones(long n) {
            Tensor t = Tensor.allocate(DType.F32, Device.CPU, n);
            t.fillBytes(0x3f); // 0x3f3f3f3f = 0.747..., finite
            return t;
        }
    }

    @Benchmark
    public void allReduce(Ranks s) {
        s.lockstep.step(c -> c.allReduce(s.send.get(c.rank()), s.recv.get(c.rank()), ReduceOp.SUM));
    }

    @Benchmark
    public void allGather(Ranks s) {
        s.lockstep.step(c -> c.allGather(s.send.get(c.rank()), s.gathered.get(c.rank())));
    }

    @Benchmark
    public void reduceScatter(Ranks s) {
        s.lockstep.step(c -> c.reduceScatter(s.gathered.get(c.rank()), s.recv.get(c.rank()), ReduceOp.SUM));
    }

    @Benchmark
    public void broadcast(Ranks s) {
        s.lockstep.step(c -> c.broadcast(s.recv.get(c.rank()), 0));
    }

    @Benchmark
    public void memcpyBaseline(Ranks s) {
        s.recv.get(0).copyFrom(s.send.get(0));
    }

    @Benchmark
    public double readProbe(Ranks s) {
        return Qkern.probeReadBandwidth(s.gathered.get(0), 1).gbps();
    }
}
