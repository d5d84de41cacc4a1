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
 * memory) — or, when started by {@code mpirun}, over MPI processes — beside a same-run baseline
 * (one memcpy of the same buffer) and the read probe, then an NF4 tensor-parallel MLP block.
 *
 * <p>Counted traffic ({@code gbps}, {@code pct_of_probe}) is the memory traffic the in-process
 * algorithm must make: all-reduce reads every rank's input and writes every rank's output
 * (2 P n bytes for n bytes per rank); all-gather reads each rank's n and writes it to P outputs
 * (P (P + 1) n); reduce-scatter of P n bytes per rank reads every input once and writes n per rank
 * (P (P + 1) n); broadcast reads the root's n and writes P - 1 copies (P n). Rows over MPI use the
 * same counts (their time also includes the MPI transport). {@code algbw_gbps} is NCCL's algorithm bandwidth (n / t) and {@code busbw_gbps} its
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

    /**
     * How a step runs on every rank: in-process (all ranks in this JVM, persistent rank threads) or
     * under mpirun (this process is one rank; every rank runs the same suite in lockstep and only
     * rank 0 prints).
     */
    private interface Ranks extends AutoCloseable {
        int size();

        /** The ranks whose tensors live in this process. */
        List<Integer> local();

        /** Median seconds of one {@code op} on every rank (the slowest rank's time per sample). */
        double seconds(BenchContext ctx, java.util.function.Consumer<Communicator> op);

        /** Runs {@code op} once on every local rank (setup). */
        void once(java.util.function.Consumer<Communicator> op);

        boolean reports();

        String backend();

        /** A path every rank can read, chosen by rank 0. */
        java.nio.file.Path sharedTempDir() throws java.io.IOException;

        @Override
        void close();
    }

    private static final class InProcessRanks implements Ranks {
        final List<Communicator> comms;
        final LockstepRanks lockstep;

        InProcessRanks(int p) {
            comms = DeviceMesh.cpu(p).inProcess(Duration.ofSeconds(120));
            lockstep = new LockstepRanks(comms);
        }

        public int size() {
            return comms.size();
        }

        public List<Integer> local() {
            return java.util.stream.IntStream.range(0, comms.size()).boxed().toList();
        }

        public double seconds(BenchContext ctx, java.util.function.Consumer<Communicator> op) {
            // 64 back-to-back calls per lockstep step: the step's own start/end barrier (thread
            // wake-ups, tens of microseconds) would otherwise be most of a small collective's time
            final int inner = 64;
            return ctx.seconds(() -> lockstep.step(c -> {
                for (int i = 0; i < inner; i++) {
                    op.accept(c);
                }
            })) / inner;
        }

        public void once(java.util.function.Consumer<Communicator> op) {
            lockstep.step(op);
        }

        public boolean reports() {
            return true;
        }

        public String backend() {
            return "in-process";
        }

        public java.nio.file.Path sharedTempDir() throws java.io.IOException {
            return java.nio.file.Files.createTempDirectory("qkern-bench-dist");
        }

        public void close() {
            lockstep.close();
            comms.forEach(Communicator::close);
        }
    }

    private static final class MpiRanks implements Ranks {
        final Communicator world;

        MpiRanks(Communicator world) {
            this.world = world;
        }

        public int size() {
            return world.size();
        }

        public List<Integer> local() {
            return List.of(world.rank());
        }

        public double seconds(BenchContext ctx, java.util.function.Consumer<Communicator> op) {
            // warm up (JIT, MPI connections) for a time all ranks agree on: the slowest rank's clock
            long warmStart = System.nanoTime();
            int warmCalls = 0;
            double warmed;
            do {
                op.accept(world);
                warmCalls++;
                warmed = slowest((System.nanoTime() - warmStart) / 1e9);
            } while (warmed < (ctx.quick() ? 0.05 : 0.3) || warmCalls < 3);
            long t0 = System.nanoTime();
            op.accept(world);
            double first = slowest((System.nanoTime() - t0) / 1e9);
            int repeats = (int) Math.max(1, Math.min(100_000, Math.ceil((ctx.quick() ? 0.005 : 0.05) / first)));
            double[] samples = new double[ctx.quick() ? 3 : 7];
            for (int s = 0; s < samples.length; s++) {
                world.barrier();
                long start = System.nanoTime();
                for (int r = 0; r < repeats; r++) {
                    op.accept(world);
                }
                samples[s] = slowest((System.nanoTime() - start) / 1e9) / repeats;
            }
            java.util.Arrays.sort(samples);
            return samples[samples.length / 2];
        }

        private double slowest(double seconds) {
            try (Tensor t = Tensor.allocate(DType.F64, io.qkern.Device.CPU, 1)) {
                t.segment().set(java.lang.foreign.ValueLayout.JAVA_DOUBLE, 0, seconds);
                world.allReduce(t, ReduceOp.MAX);
                return t.segment().get(java.lang.foreign.ValueLayout.JAVA_DOUBLE, 0);
            }
        }

        public void once(java.util.function.Consumer<Communicator> op) {
            op.accept(world);
        }

        public boolean reports() {
            return world.rank() == 0;
        }

        public String backend() {
            return "mpi";
        }

        public java.nio.file.Path sharedTempDir() throws java.io.IOException {
            try (Tensor name = Tensor.allocate(DType.U8, io.qkern.Device.CPU, 1024)) {
                name.fillBytes(0);
                if (world.rank() == 0) {
                    byte[] path = java.nio.file.Files.createTempDirectory("qkern-bench-dist").toString()
                            .getBytes(java.nio.charset.StandardCharsets.UTF_8);
                    name.segment().copyFrom(java.lang.foreign.MemorySegment.ofArray(path));
                }
                world.broadcast(name, 0);
                return java.nio.file.Path.of(new String(name.toByteArray(), java.nio.charset.StandardCharsets.UTF_8)
                        .replace("\0", ""));
            }
        }

        public void close() {
            // the world communicator belongs to run()
        }
    }

    @Override
    public void run(BenchContext ctx) throws java.io.IOException {
        if (!ctx.device().isCpu()) {
            ctx.note("dist suite: in-process and MPI ranks are CPU only; skipped on " + ctx.device());
            return;
        }
        long[] sizes = ctx.quick() ? new long[] {1L << 12, 1L << 20} : new long[] {1L << 12, 1L << 20, 64L << 20};
        if (io.qkern.dist.MpiCommunicator.launchedByMpirun()) {
            try (Communicator world = io.qkern.dist.MpiCommunicator.world(Duration.ofSeconds(120));
                    Ranks ranks = new MpiRanks(world)) {
                if (world.rank() == 0) {
                    ctx.note("dist suite over MPI: " + world.size() + " processes; rank 0 reports");
                }
                for (long bytes : sizes) {
                    measure(ctx, ranks, bytes);
                }
                tensorParallelMlp(ctx, ranks);
            }
            return;
        }
        int[] rankCounts = ctx.quick() ? new int[] {2} : new int[] {2, 4};
        for (int p : rankCounts) {
            try (Ranks ranks = new InProcessRanks(p)) {
                for (long bytes : sizes) {
                    if (p > 2 && bytes < (64L << 20) && !ctx.quick()) {
                        continue; // more ranks than cores: only the bandwidth-bound size says anything
                    }
                    measure(ctx, ranks, bytes);
                }
            }
        }
        for (int tp : new int[] {1, 2}) {
            try (Ranks ranks = new InProcessRanks(tp)) {
                tensorParallelMlp(ctx, ranks);
            }
        }
    }

    private static double tp1Seconds = Double.NaN;

    /**
     * A Llama SwiGLU MLP block over NF4 weights (blocksize 64, double quantization), batch 1, over
     * the given ranks: each rank loads only its slices and the block ends in one all-reduce. Counted
     * traffic: every rank's NF4 bytes (the whole packed MLP). {@code scaling_efficiency} =
     * t(TP=1) / (TP x t(TP)) against the TP = 1 row of the same run (in-process only); on a machine
     * with fewer cores than ranks x kernel threads the ranks share cores, so it says what the
     * communication and partitioning cost here, not what separate GPUs would reach.
     */
    private static void tensorParallelMlp(BenchContext ctx, Ranks ranks) throws java.io.IOException {
        int hidden = ctx.quick() ? 512 : 4096;
        int inter = ctx.quick() ? 1024 : 11008;
        int tp = ranks.size();
        java.nio.file.Path dir = ranks.sharedTempDir();
        java.nio.file.Path file = dir.resolve("mlp.safetensors");
        List<io.qkern.dist.tp.ParallelMlp> mlps = new ArrayList<>(java.util.Collections.nCopies(tp, null));
        List<Tensor> xs = new ArrayList<>(java.util.Collections.nCopies(tp, null));
        try {
            if (ranks.reports()) {
                io.qkern.dist.tp.ParallelMlp.writeSyntheticNf4(file, "mlp", hidden, inter, 7);
            }
            ranks.once(Communicator::barrier);
            try (io.qkern.io.SafetensorsFile f = io.qkern.io.SafetensorsFile.open(file)) {
                ranks.once(c -> {
                    try {
                        mlps.set(c.rank(), io.qkern.dist.tp.ParallelMlp.readNf4(f, "mlp", c));
                    } catch (java.io.IOException e) {
                        throw new java.io.UncheckedIOException(e);
                    }
                });
            }
            for (int r : ranks.local()) {
                try (Tensor flat = filled(hidden, 1)) {
                    xs.set(r, Tensor.ofBytes(flat.toByteArray(), DType.F32, 1, hidden));
                }
            }
            long nf4Bytes = 0;
            for (int r : ranks.local()) {
                nf4Bytes += mlps.get(r).storageBytes() * (tp / ranks.local().size());
            }
            double t = ranks.seconds(ctx, c -> mlps.get(c.rank()).forward(xs.get(c.rank())).close());
            if (tp == 1) {
                tp1Seconds = t;
            }
            if (ranks.reports()) {
                Map<String, Object> e = new LinkedHashMap<>();
                e.put("tp", tp);
                e.put("m", 1);
                e.put("g_weights_per_s", Math.round(3.0 * hidden * inter / t / 1e7) / 100.0);
                if (ranks.backend().equals("in-process")) {
                    e.put("scaling_efficiency", Math.round(tp1Seconds / (tp * t) * 1000) / 1000.0);
                }
                ctx.emit("tp_mlp_forward_nf4", hidden + "x" + inter, "f32", ranks.backend(), t, nf4Bytes, e);
            }
            ranks.once(Communicator::barrier);
        } finally {
            mlps.forEach(m -> {
                if (m != null) {
                    m.close();
                }
            });
            xs.forEach(x -> {
                if (x != null) {
                    x.close();
                }
            });
            if (ranks.reports()) {
                java.nio.file.Files.deleteIfExists(file);
                java.nio.file.Files.deleteIfExists(dir);
            }
        }
    }

    private static void measure(BenchContext ctx, Ranks ranks, long bytes) {
        long n = bytes / 4;
        int p = ranks.size();
        List<Tensor> send = new ArrayList<>(java.util.Collections.nCopies(p, null));
        List<Tensor> recv = new ArrayList<>(java.util.Collections.nCopies(p, null));
        List<Tensor> gathered = new ArrayList<>(java.util.Collections.nCopies(p, null));
        try {
            for (int r : ranks.local()) {
                send.set(r, filled(n, r + 1));
                recv.set(r, filled(n, 0));
                gathered.set(r, filled(n * p, 0));
            }
            int me = ranks.local().get(0);
            String shape = size(bytes) + "x" + p;
            double memcpy = ctx.seconds(() -> recv.get(me).copyFrom(send.get(me)));
            double allReduce = ranks.seconds(ctx, c -> c.allReduce(send.get(c.rank()), recv.get(c.rank()), ReduceOp.SUM));
            double allGather = ranks.seconds(ctx, c -> c.allGather(send.get(c.rank()), gathered.get(c.rank())));
            double reduceScatter = ranks.seconds(ctx, c -> c.reduceScatter(gathered.get(c.rank()), send.get(c.rank()),
                    ReduceOp.SUM));
            double broadcast = ranks.seconds(ctx, c -> c.broadcast(send.get(c.rank()), 0));
            if (ranks.reports()) {
                String b = ranks.backend();
                row(ctx, b, "all_reduce_sum", shape, p, bytes, 2.0 * p * bytes, 2.0 * (p - 1) / p, memcpy, allReduce);
                row(ctx, b, "all_gather", shape, p, bytes * p, p * (p + 1.0) * bytes, (p - 1.0) / p, memcpy, allGather);
                row(ctx, b, "reduce_scatter_sum", shape, p, bytes * p, p * (p + 1.0) * bytes, (p - 1.0) / p, memcpy,
                        reduceScatter);
                row(ctx, b, "broadcast", shape, p, bytes, (double) p * bytes, (p - 1.0) / p, memcpy, broadcast);
                ctx.emit("memcpy_baseline", size(bytes), "f32", "cpu-java", memcpy, 2.0 * bytes, new LinkedHashMap<>());
            }
        } finally {
            for (List<Tensor> l : List.of(send, recv, gathered)) {
                l.forEach(t -> {
                    if (t != null) {
                        t.close();
                    }
                });
            }
        }
    }

    private static void row(BenchContext ctx, String backend, String kernel, String shape, int p, long algBytes, double traffic,
            double busFactor, double memcpySeconds, double seconds) {
        Map<String, Object> e = new LinkedHashMap<>();
        e.put("ranks", p);
        e.put("algbw_gbps", Math.round(algBytes / seconds / 1e6) / 1e3);
        e.put("busbw_gbps", Math.round(algBytes * busFactor / seconds / 1e6) / 1e3);
        e.put("x_memcpy", Math.round(seconds / memcpySeconds * 100) / 100.0);
        ctx.emit(kernel, shape, "f32", backend, seconds, traffic, e);
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
