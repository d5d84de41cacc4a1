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
        return "collectives over in-process ranks (all-reduce, all-gather, reduce-scatter, broadcast) vs memcpy";
    }

    @Override
    public void run(BenchContext ctx) {
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
