package io.qkern.bench;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Tensor;
import io.qkern.dist.Communicator;
import io.qkern.dist.MpiCommunicator;
import io.qkern.dist.ReduceOp;
import java.time.Duration;
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
 * Collectives over MPI processes ({@code io.qkern.dist.MpiCommunicator}), for JMH under mpirun:
 * <pre>
 * mpirun -np 2 java --enable-native-access=ALL-UNNAMED -Djmh.ignoreLock=true \
 *     -jar bench/target/qkern-bench.jar DistMpiCollectivesBenchmark
 * </pre>
 * Every rank runs the same harness, so the op counts must not depend on timing: SingleShotTime
 * with fixed batches (each rank makes exactly the same calls), and no fork (mpirun started the
 * processes; a forked JVM would not be an MPI rank; {@code -Djmh.ignoreLock=true} lets the ranks'
 * harnesses run side by side). A score is the time of one batch of 20 calls (divide by 20). Each
 * rank prints its own timings; rank 0's are
 * the result. The in-process version with its yardsticks is {@link DistCollectivesBenchmark}; the
 * memcpy and probe yardsticks of an MPI run come from {@code mpirun ... ./qkern bench dist}.
 */
@BenchmarkMode(Mode.SingleShotTime)
@OutputTimeUnit(TimeUnit.MICROSECONDS)
@Warmup(iterations = 3, batchSize = 20)
@Measurement(iterations = 7, batchSize = 20)
@Fork(0)
public class DistMpiCollectivesBenchmark {

    @State(Scope.Benchmark)
    public static class World {
        @Param({"4096", "1048576", "67108864"})
        public long bytes;

        Communicator world;
        Tensor send;
        Tensor recv;
        Tensor gathered;

        @Setup(Level.Trial)
        public void setup() {
            if (!MpiCommunicator.launchedByMpirun()) {
                throw new IllegalStateException("run under mpirun: mpirun -np 2 java ... -jar qkern-bench.jar"
                        + " DistMpiCollectivesBenchmark");
            }
            world = worldOnce();
            long n = bytes / 4;
            send = filled(n);
            recv = filled(n);
            gathered = filled(n * world.size());
        }

        @TearDown(Level.Trial)
        public void tearDown() {
            send.close();
            recv.close();
            gathered.close();
            // the world stays open: closing the last MPI communicator finalizes MPI, and the next
            // trial needs it (qkern finalizes MPI at JVM exit)
        }

        private static Communicator shared;

        private static synchronized Communicator worldOnce() {
            if (shared == null) {
                shared = MpiCommunicator.world(Duration.ofSeconds(120));
            }
            return shared;
        }

        private static Tensor filled(long n) {
            Tensor t = Tensor.allocate(DType.F32, Device.CPU, n);
            t.fillBytes(0x3f);
            return t;
        }
    }

    @Benchmark
    public void allReduce(World w) {
        w.world.allReduce(w.send, w.recv, ReduceOp.SUM);
    }

    @Benchmark
    public void allGather(World w) {
        w.world.allGather(w.send, w.gathered);
    }

    @Benchmark
    public void reduceScatter(World w) {
        w.world.reduceScatter(w.gathered, w.recv, ReduceOp.SUM);
    }

    @Benchmark
    public void broadcast(World w) {
        w.world.broadcast(w.recv, 0);
    }
}
