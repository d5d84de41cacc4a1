package io.qkern.cli;

import io.qkern.DType;
import io.qkern.Tensor;
import io.qkern.dist.Communicator;
import io.qkern.dist.DeviceMesh;
import io.qkern.dist.LockstepRanks;
import io.qkern.dist.ReduceOp;
import java.time.Duration;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * {@code qkern bench dist}: collectives over in-process ranks (threads sharing this machine's
 * memory), beside a same-run baseline — one memcpy of the same buffer — and the read probe.
 *
 * <p>Counted traffic ({@code gbps}, {@code pct_of_probe}) is the memory traffic the in-process
 * algorithm must make: all-reduce reads every rank's input and writes every rank's output
 * (2 P n bytes), all-gather and broadcast read n and write P n ((P + 1) n), reduce-scatter reads P n
 * and writes n. {@code algbw_gbps} is NCCL's algorithm bandwidth (n / t) and {@code busbw_gbps} its
 * bus bandwidth (algbw x 2 (P-1)/P for all-reduce, x (P-1)/P for the others), so rows compare with
 * nccl-tests output.
 */
final class DistBench implements BenchSuite {
    @Override
    public String name() {
        return "dist";
    }

    @Override
    public String summary() {
        return "collectives over in-process ranks vs memcpy, and an NF4 tensor-parallel MLP block at TP = 1, 2";
    }

    @Override
    public void run(BenchContext ctx) throws java.io.IOException {
        if (!ctx.device().isCpu()) {
            ctx.note("dist suite: in-process ranks are CPU only; skipped on " + ctx.device());
            return;
        }
        int[] rankCounts = ctx.quick() ? new int[] {2} : new int[] {2, 4};
        long[] sizes = ctx.quick() ? new long[] {1L << 12, 1L << 20} : new long[] {1L << 12, 1L << 20, 64L << 20};
        for (int p : rankCounts) {
            List<Communicator> comms = DeviceMesh.cpu(p).inProcess(Duration.ofSeconds(120));
            try (LockstepRanks ranks = new LockstepRanks(comms)) {
                for (long bytes : sizes) {
                    if (p > 2 && bytes < (64L << 20) && !ctx.quick()) {
                        continue; // more ranks than cores: only the bandwidth-bound size says anything
                    }
                    measure(ctx, ranks, p, bytes);
                }
            } finally {
                comms.forEach(Communicator::close);
            }
        }
        tensorParallelMlp(ctx);
    }

    /**
     * A Llama SwiGLU MLP block over NF4 weights (blocksize 64, double quantization), batch 1, at
     * TP = 1 and TP = 2 over in-process ranks: each rank loads only its slices and the block ends in
     * one all-reduce. Counted traffic: every rank's NF4 bytes (the whole packed MLP).
     * {@code scaling_efficiency} = t(TP=1) / (TP x t(TP)); on a machine with fewer cores than
     * ranks x kernel threads the ranks share cores, so it says what the communication and
     * partitioning cost here, not what separate GPUs would reach.
     */
    private static void tensorParallelMlp(BenchContext ctx) throws java.io.IOException {
        int hidden = ctx.quick() ? 512 : 4096;
        int inter = ctx.quick() ? 1024 : 11008;
        java.nio.file.Path dir = java.nio.file.Files.createTempDirectory("qkern-bench-tp");
        java.nio.file.Path file = dir.resolve("mlp.safetensors");
        try {
            writeNf4Mlp(file, hidden, inter);
            double t1 = Double.NaN;
            for (int tp : new int[] {1, 2}) {
                List<Communicator> comms = DeviceMesh.cpu(tp).inProcess(Duration.ofSeconds(120));
                List<io.qkern.dist.tp.ParallelMlp> mlps = new ArrayList<>(java.util.Collections.nCopies(tp, null));
                List<Tensor> xs = new ArrayList<>();
                try (io.qkern.io.SafetensorsFile f = io.qkern.io.SafetensorsFile.open(file);
                        LockstepRanks ranks = new LockstepRanks(comms)) {
                    ranks.step(c -> {
                        try {
                            mlps.set(c.rank(), io.qkern.dist.tp.ParallelMlp.readNf4(f, "mlp", c));
                        } catch (java.io.IOException e) {
                            throw new java.io.UncheckedIOException(e);
                        }
                    });
                    for (int r = 0; r < tp; r++) {
                        try (Tensor flat = filled(hidden, 1)) {
                            xs.add(Tensor.ofBytes(flat.toByteArray(), DType.F32, 1, hidden));
                        }
                    }
                    long nf4Bytes = 0;
                    for (var m : mlps) {
                        nf4Bytes += m.storageBytes();
                    }
                    double t = ctx.seconds(() -> ranks.step(c -> mlps.get(c.rank()).forward(xs.get(c.rank())).close()));
                    if (tp == 1) {
                        t1 = t;
                    }
                    Map<String, Object> e = new LinkedHashMap<>();
                    e.put("tp", tp);
                    e.put("m", 1);
                    e.put("g_weights_per_s", Math.round(3.0 * hidden * inter / t / 1e7) / 100.0);
                    e.put("scaling_efficiency", Math.round(t1 / (tp * t) * 1000) / 1000.0);
                    ctx.emit("tp_mlp_forward_nf4", hidden + "x" + inter, "f32", "in-process", t, nf4Bytes, e);
                } finally {
                    mlps.forEach(m -> {
                        if (m != null) {
                            m.close();
                        }
                    });
                    xs.forEach(Tensor::close);
                    comms.forEach(Communicator::close);
                }
            }
        } finally {
            java.nio.file.Files.deleteIfExists(file);
            java.nio.file.Files.deleteIfExists(dir);
        }
    }

    private static void writeNf4Mlp(java.nio.file.Path file, int hidden, int inter) throws java.io.IOException {
        List<AutoCloseable> keep = new ArrayList<>();
        try {
            io.qkern.io.SafetensorsWriter w = io.qkern.io.SafetensorsWriter.create(file);
            String[][] layers = {{"gate_proj", "i"}, {"up_proj", "i"}, {"down_proj", "h"}};
            java.util.SplittableRandom rnd = new java.util.SplittableRandom(7);
            for (String[] l : layers) {
                long rows = l[1].equals("i") ? inter : hidden;
                long cols = l[1].equals("i") ? hidden : inter;
                try (Tensor dense = Tensor.allocate(DType.F32, io.qkern.Device.CPU, rows, cols)) {
                    float[] row = new float[(int) cols];
                    for (long r = 0; r < rows; r++) {
                        for (int i = 0; i < row.length; i++) {
                            row[i] = (float) (rnd.nextDouble() - 0.5) * 0.05f;
                        }
                        java.lang.foreign.MemorySegment.copy(row, 0, dense.segment(),
                                java.lang.foreign.ValueLayout.JAVA_FLOAT, 4 * r * cols, row.length);
                    }
                    io.qkern.nf4.Nf4Tensor q = io.qkern.nf4.Nf4.quantize("mlp." + l[0] + ".weight", dense,
                            new io.qkern.nf4.Nf4.Options(64, true));
                    keep.add(q);
                    keep.addAll(q.addTo(w, "mlp." + l[0] + ".weight"));
                }
            }
            w.write();
        } finally {
            for (AutoCloseable c : keep.reversed()) {
                try {
                    c.close();
                } catch (Exception e) {
                    // closing host tensors does not fail
                }
            }
        }
    }

    private static void measure(BenchContext ctx, LockstepRanks ranks, int p, long bytes) {
        long n = bytes / 4;
        List<Tensor> send = new ArrayList<>();
        List<Tensor> recv = new ArrayList<>();
        List<Tensor> gathered = new ArrayList<>();
        try {
            for (int r = 0; r < p; r++) {
                send.add(filled(n, r + 1));
                recv.add(filled(n, 0));
                gathered.add(filled(n * p, 0));
            }
            String shape = size(bytes) + "x" + p;
            double memcpy = ctx.seconds(() -> recv.get(0).copyFrom(send.get(0)));
            row(ctx, "all_reduce_sum", shape, p, bytes, 2.0 * p * bytes, 2.0 * (p - 1) / p, memcpy,
                    ctx.seconds(() -> ranks.step(c -> c.allReduce(send.get(c.rank()), recv.get(c.rank()), ReduceOp.SUM))));
            row(ctx, "all_gather", shape, p, bytes * p, (p + 1.0) * bytes, (p - 1.0) / p, memcpy,
                    ctx.seconds(() -> ranks.step(c -> c.allGather(send.get(c.rank()), gathered.get(c.rank())))));
            row(ctx, "reduce_scatter_sum", shape, p, bytes * p, (p + 1.0) * bytes * p / p, (p - 1.0) / p, memcpy,
                    ctx.seconds(() -> ranks.step(c -> c.reduceScatter(gathered.get(c.rank()), send.get(c.rank()),
                            ReduceOp.SUM))));
            row(ctx, "broadcast", shape, p, bytes, (p + 1.0) * bytes, (p - 1.0) / p, memcpy,
                    ctx.seconds(() -> ranks.step(c -> c.broadcast(send.get(c.rank()), 0))));
            ctx.emit("memcpy_baseline", size(bytes), "f32", "cpu-java", memcpy, 2.0 * bytes, new LinkedHashMap<>());
        } finally {
            send.forEach(Tensor::close);
            recv.forEach(Tensor::close);
            gathered.forEach(Tensor::close);
        }
    }

    private static void row(BenchContext ctx, String kernel, String shape, int p, long algBytes, double traffic,
            double busFactor, double memcpySeconds, double seconds) {
        Map<String, Object> e = new LinkedHashMap<>();
        e.put("ranks", p);
        e.put("algbw_gbps", Math.round(algBytes / seconds / 1e6) / 1e3);
        e.put("busbw_gbps", Math.round(algBytes * busFactor / seconds / 1e6) / 1e3);
        e.put("x_memcpy", Math.round(seconds / memcpySeconds * 100) / 100.0);
        ctx.emit(kernel, shape, "f32", "in-process", seconds, traffic, e);
    }

    private static Tensor filled(long n, int value) {
        Tensor t = Tensor.allocate(DType.F32, io.qkern.Device.CPU, n);
        float[] block = new float[(int) Math.min(n, 1 << 16)];
        java.util.Arrays.fill(block, value);
        for (long i = 0; i < n; i += block.length) {
            int len = (int) Math.min(block.length, n - i);
            java.lang.foreign.MemorySegment.copy(block, 0, t.segment(), java.lang.foreign.ValueLayout.JAVA_FLOAT, 4 * i, len);
        }
        return t;
    }

    private static String size(long bytes) {
        return bytes >= (1L << 20) ? (bytes >> 20) + "MiB" : (bytes >> 10) + "KiB";
    }
}
