package io.qkern.bench;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Qkern;
import io.qkern.Tensor;
import io.qkern.dist.Communicator;
import io.qkern.dist.DeviceMesh;
import io.qkern.dist.LockstepRanks;
import io.qkern.dist.tp.ParallelMlp;
import io.qkern.io.SafetensorsFile;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collections;
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
 * A tensor-parallel Llama SwiGLU MLP block over NF4 weights (hidden x intermediate, blocksize 64,
 * double quantization), batch {@code m}, over {@code tp} in-process ranks: each rank holds its
 * slices (loaded from a safetensors file written in setup) and the forward ends in one all-reduce.
 * Same-run yardsticks in the same fork: {@code readProbe} (the read-bandwidth probe over a buffer
 * the size of all the NF4 weights) — the forward streams every rank's packed weights once, so its
 * time against the probe's says how close the block runs to memory speed.
 */
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MILLISECONDS)
@Warmup(iterations = 2, time = 1)
@Measurement(iterations = 5, time = 1)
@Fork(value = 1, jvmArgsAppend = {"--enable-native-access=ALL-UNNAMED"})
public class DistTensorParallelBenchmark {

    @State(Scope.Benchmark)
    public static class Mlp {
        @Param({"1", "2"})
        public int tp;

        @Param({"1"})
        public int m;

        @Param({"4096x11008"})
        public String shape;

        Path dir;
        List<Communicator> comms;
        LockstepRanks ranks;
        final List<ParallelMlp> mlps = new ArrayList<>();
        final List<Tensor> xs = new ArrayList<>();
        Tensor probeBuffer;

        @Setup(Level.Trial)
        public void setup() throws IOException {
            String[] hw = shape.split("x");
            int hidden = Integer.parseInt(hw[0]);
            int inter = Integer.parseInt(hw[1]);
            dir = Files.createTempDirectory("qkern-jmh-tp");
            Path file = dir.resolve("mlp.safetensors");
            ParallelMlp.writeSyntheticNf4(file, "mlp", hidden, inter, 7);
            comms = DeviceMesh.cpu(tp).inProcess(Duration.ofSeconds(120));
            ranks = new LockstepRanks(comms);
            mlps.addAll(Collections.nCopies(tp, null));
            long weightBytes;
            try (SafetensorsFile f = SafetensorsFile.open(file)) {
                ranks.step(c -> {
                    try {
                        mlps.set(c.rank(), ParallelMlp.readNf4(f, "mlp", c));
                    } catch (IOException e) {
                        throw new UncheckedIOException(e);
                    }
                });
            }
            weightBytes = mlps.stream().mapToLong(ParallelMlp::storageBytes).sum();
            for (int r = 0; r < tp; r++) {
                Tensor x = Tensor.allocate(DType.F32, Device.CPU, m, hidden);
                x.fillBytes(0x3c); // small finite values
                xs.add(x);
            }
            probeBuffer = Tensor.allocate(DType.U8, Device.CPU, weightBytes);
            probeBuffer.fillBytes(1);
        }

        @TearDown(Level.Trial)
        public void tearDown() throws IOException {
            ranks.close();
            mlps.forEach(ParallelMlp::close);
            xs.forEach(Tensor::close);
            comms.forEach(Communicator::close);
            probeBuffer.close();
            try (var files = Files.list(dir)) {
                for (Path p : files.toList()) {
                    Files.delete(p);
                }
            }
            Files.delete(dir);
        }
    }

    @Benchmark
    public void forward(Mlp s) {
        s.ranks.step(c -> s.mlps.get(c.rank()).forward(s.xs.get(c.rank())).close());
    }

    @Benchmark
    public double readProbe(Mlp s) {
        return Qkern.probeReadBandwidth(s.probeBuffer, 1).gbps();
    }
}
