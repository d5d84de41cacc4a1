package io.qkern.dist.plan;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Qkern;
import io.qkern.Tensor;
import io.qkern.dist.Communicator;
import io.qkern.dist.DeviceMesh;
import io.qkern.dist.ReduceOp;
import io.qkern.dist.plan.CollectiveCost.Algorithm;
import io.qkern.dist.plan.CollectiveCost.Collective;
import io.qkern.nf4.Nf4;
import io.qkern.nf4.Nf4Matmul;
import io.qkern.nf4.Nf4Tensor;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.SplittableRandom;
import java.util.function.Consumer;

/**
 * Checks the cost model's inputs against this machine.
 *
 * <p><b>Links</b> ({@link #measureCollectives}, {@link #fitLink}): all-reduce and all-gather of
 * F32 buffers over the in-process communicator (ranks as threads, {@link DeviceMesh#cpu}) at
 * several sizes. Each size is timed as batches of back-to-back calls (as nccl-tests does), and the
 * best batch average of several counts: other processes on a shared machine only ever add time.
 * Alpha and beta are then fitted ({@link AlphaBetaFit}) with each sample's coefficients taken
 * from the algorithm the model itself picks for it (refitted until those picks stop changing), so
 * the fitted link, put back into {@link CollectiveCost}, predicts exactly what was measured
 * where the model holds; the per-size error says where it does not.
 *
 * <p><b>Compute</b> ({@link #measureCompute}): the read bandwidth from
 * {@link Qkern#probeReadBandwidth} and the FLOP rate of the dense F32 matmul
 * ({@code qk_matmul_f32}, the CPU's GEMM) fill a {@link GpuSpec#measured} spec; the spec's
 * roofline is then checked against kernels it did not come from: the dense F32 GEMV (weight-read
 * bound), the NF4 GEMV (4.5 bits per weight) and a smaller GEMM.
 */
public final class Calibration {
    private Calibration() {}

    /** Sizes {@code qkern plan --calibrate} measures: 4 KiB to 64 MiB. */
    public static final long[] DEFAULT_SIZES = {4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20,
        64 << 20};

    /** Sizes of a quick calibration (a smoke test, not a result): 4 KiB to 1 MiB. */
    public static final long[] QUICK_SIZES = {4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20};

    /** One measured collective: its model size {@code bytes} (buffer, or all-gather output) and time. */
    public record CollectiveSample(Collective collective, int ranks, long bytes, double seconds) {}

    /** One size's measured time next to the fitted model's prediction. */
    public record Row(Collective collective, int ranks, long bytes, double measuredSeconds, double predictedSeconds,
            String algorithm) {
        /** (predicted - measured) / measured, in percent. */
        public double errorPercent() {
            return 100 * (predictedSeconds - measuredSeconds) / measuredSeconds;
        }
    }

    /** The fitted link and every sample's measured and predicted time. */
    public record LinkFit(Link link, AlphaBetaFit.Result fit, List<Row> rows) {}

    /** One kernel's measured time next to the measured spec's roofline prediction. */
    public record ComputeCheck(String kernel, String shape, double flops, double bytes, double measuredSeconds,
            double predictedSeconds) {
        public double errorPercent() {
            return 100 * (predictedSeconds - measuredSeconds) / measuredSeconds;
        }
    }

    /** The measured spec, the rates it came from, and the checks of its roofline. */
    public record ComputeCalibration(GpuSpec spec, double gemmFlops, double readBytesPerSecond, String probePattern,
            List<ComputeCheck> checks, double deviceReadBytesPerSecond) {}

    /**
     * Times all-reduce (SUM) and all-gather of each size among {@code ranks} in-process ranks.
     * {@code sizes} are bytes, multiples of 4 * ranks; {@code trials} batches per size, each of
     * enough calls to move about 64 MiB (at least 3).
     */
    public static List<CollectiveSample> measureCollectives(int ranks, long[] sizes, int trials,
            Consumer<String> progress) {
        if (ranks < 2) {
            throw new IllegalArgumentException("calibrating a link needs at least 2 ranks, got " + ranks);
        }
        if (trials < 1) {
            throw new IllegalArgumentException("trials must be >= 1, got " + trials);
        }
        for (long s : sizes) {
            if (s <= 0 || s % (4L * ranks) != 0) {
                throw new IllegalArgumentException("calibration sizes must be positive multiples of 4 x ranks ("
                        + 4 * ranks + " bytes), got " + s);
            }
        }
        DeviceMesh mesh = DeviceMesh.cpu(ranks);
        List<Communicator> comms = mesh.inProcess(Duration.ofSeconds(60));
        try {
            List<List<CollectiveSample>> perRank = mesh.run(comms, comm -> {
                List<CollectiveSample> out = new ArrayList<>();
                // JIT warm-up of the whole collective path before the first timing (a count, not a
                // time: every rank must make the same calls)
                try (Tensor a = Tensor.allocate(DType.F32, Device.CPU, ranks);
                        Tensor b = Tensor.allocate(DType.F32, Device.CPU, ranks)) {
                    a.fillBytes(0);
                    for (int i = 0; i < 5000; i++) {
                        comm.allReduce(a, b, ReduceOp.SUM);
                    }
                }
                for (long bytes : sizes) {
                    long n = bytes / 4;
                    int batch = (int) Math.max(3, Math.min(2000, (64L << 20) / bytes));
                    try (Tensor send = Tensor.allocate(DType.F32, Device.CPU, n);
                            Tensor recv = Tensor.allocate(DType.F32, Device.CPU, n);
                            Tensor piece = Tensor.allocate(DType.F32, Device.CPU, n / ranks)) {
                        // Touch every page before timing: first-touch faults are not the link.
                        send.fillBytes(0);
                        recv.fillBytes(0);
                        piece.fillBytes(0);
                        for (Collective c : List.of(Collective.ALL_REDUCE, Collective.ALL_GATHER)) {
                            Runnable call = c == Collective.ALL_REDUCE
                                    ? () -> comm.allReduce(send, recv, ReduceOp.SUM)
                                    : () -> comm.allGather(piece, recv);
                            // warm-up, one untimed batch: first touch of the pages, and the JIT
                            // (a single call left small sizes timed partly in the interpreter)
                            for (int i = 0; i < batch; i++) {
                                call.run();
                            }
                            double best = Double.POSITIVE_INFINITY;
                            for (int t = 0; t < trials; t++) {
                                comm.barrier();
                                long t0 = System.nanoTime();
                                for (int i = 0; i < batch; i++) {
                                    call.run();
                                }
                                best = Math.min(best, (System.nanoTime() - t0) / 1e9 / batch);
                            }
                            out.add(new CollectiveSample(c, ranks, bytes, best));
                            if (comm.rank() == 0) {
                                progress.accept(String.format(Locale.ROOT, "  %s %s: %.2f us",
                                        CollectiveCost.name(c), human(bytes), best * 1e6));
                            }
                        }
                    }
                }
                return out;
            });
            // Rank 0 waited for everyone in each batch's last call, so its times are the group's.
            return perRank.get(0);
        } finally {
            comms.forEach(Communicator::close);
        }
    }

    /**
     * Fits alpha and beta to {@code samples} (all among the same number of ranks), choosing each
     * sample's algorithm as the model does and refitting until the choices are stable.
     */
    public static LinkFit fitLink(List<CollectiveSample> samples, String source) {
        if (samples.isEmpty()) {
            throw new IllegalArgumentException("no samples to fit");
        }
        List<Algorithm> chosen = new ArrayList<>();
        for (CollectiveSample s : samples) {
            chosen.add(s.collective().algorithms().get(0));
        }
        AlphaBetaFit.Result fit = null;
        Link link = null;
        for (int iteration = 0; iteration < 10; iteration++) {
            List<AlphaBetaFit.Sample> fitSamples = new ArrayList<>();
            for (int i = 0; i < samples.size(); i++) {
                CollectiveSample s = samples.get(i);
                fitSamples.add(AlphaBetaFit.Sample.of(chosen.get(i), s.ranks(), s.bytes(), s.seconds()));
            }
            fit = AlphaBetaFit.fit(fitSamples);
            link = fit.link(source);
            boolean changed = false;
            for (int i = 0; i < samples.size(); i++) {
                Algorithm best = cheapest(samples.get(i), link);
                if (best != chosen.get(i)) {
                    chosen.set(i, best);
                    changed = true;
                }
            }
            if (!changed) {
                break;
            }
        }
        List<Row> rows = new ArrayList<>();
        for (CollectiveSample s : samples) {
            CollectiveCost.Cost predicted = CollectiveCost.cost(s.collective(), link, s.ranks(), s.bytes());
            rows.add(new Row(s.collective(), s.ranks(), s.bytes(), s.seconds(), predicted.seconds(),
                    cheapest(s, link).label()));
        }
        return new LinkFit(link, fit, rows);
    }

    private static Algorithm cheapest(CollectiveSample s, Link link) {
        Algorithm best = null;
        double bestSeconds = Double.POSITIVE_INFINITY;
        for (Algorithm a : s.collective().algorithms()) {
            double t = a.seconds(link, s.ranks(), s.bytes());
            if (t < bestSeconds) {
                bestSeconds = t;
                best = a;
            }
        }
        return best;
    }

    /**
     * Measures this machine's read bandwidth and F32 GEMM rate on the CPU, builds the measured
     * spec and checks its roofline on a GEMV (dense F32 and NF4) and a smaller GEMM of
     * {@code size} x {@code size} weights (8192 in {@code qkern plan}; smaller sizes fit in cache
     * and make the bandwidth checks meaningless). With CUDA usable, also probes device 0's read
     * bandwidth (a device read kernel); otherwise that field is NaN.
     */
    public static ComputeCalibration measureCompute(int size, Consumer<String> progress) {
        if (size < 256 || size % 256 != 0) {
            throw new IllegalArgumentException("the compute calibration size must be a multiple of 256, got " + size);
        }
        Device cpu = Device.CPU;
        double readBps;
        String pattern;
        try (Tensor probe = Tensor.allocate(DType.U8, cpu, 256L << 20)) {
            probe.fillBytes(1);
            Qkern.Bandwidth b = Qkern.probeReadBandwidth(probe, 5);
            readBps = b.gbps() * 1e9;
            pattern = b.pattern();
        }
        progress.accept(String.format(Locale.ROOT, "  read bandwidth: %.1f GB/s (%s)", readBps / 1e9, pattern));

        SplittableRandom rnd = new SplittableRandom(7);
        int gemmM = 256;
        int gemmK = 1024;
        double gemmFlops;
        List<ComputeCheck> checks = new ArrayList<>();
        try (Tensor x = random(rnd, gemmM, gemmK); Tensor w = random(rnd, gemmK, gemmK);
                Tensor y = Tensor.allocate(DType.F32, cpu, gemmM, gemmK)) {
            double t = best(() -> Nf4Matmul.denseF32Into(x, w, y), 7);
            gemmFlops = 2.0 * gemmM * gemmK * gemmK / t;
        }
        progress.accept(String.format(Locale.ROOT, "  F32 GEMM %dx%dx%d: %.1f GFLOP/s", gemmM, gemmK, gemmK,
                gemmFlops / 1e9));
        GpuSpec spec = GpuSpec.measured(gemmFlops, readBps, String.format(Locale.ROOT,
                "this machine's CPU: F32 GEMM %.1f GFLOP/s (qk_matmul_f32, %dx%dx%d), read %.1f GB/s (%s)",
                gemmFlops / 1e9, gemmM, gemmK, gemmK, readBps / 1e9, pattern));

        long n = size;
        try (Tensor w = random(rnd, n, n); Tensor x1 = random(rnd, 1, n); Tensor y1 = Tensor.allocate(DType.F32, cpu, 1, n);
                Nf4Tensor q = Nf4.quantize("w", w, Nf4.Options.DEFAULT)) {
            double flops = 2.0 * n * n;
            double t = best(() -> Nf4Matmul.denseF32Into(x1, w, y1), 5);
            checks.add(new ComputeCheck("f32 gemv", "1x" + n + "x" + n, flops, 4.0 * n * n, t,
                    spec.seconds(flops, 4.0 * n * n)));
            double nf4Bytes = q.packed().byteSize() + q.absmax().byteSize();
            t = best(() -> Nf4Matmul.forwardInto(x1, q, q.absmax(), null, y1), 5);
            checks.add(new ComputeCheck("nf4 gemv (" + Nf4Matmul.path(1, cpu, false) + ")", "1x" + n + "x" + n, flops,
                    nf4Bytes, t, spec.seconds(flops, nf4Bytes)));
            int m = 64;
            long k = n / 4;
            try (Tensor xm = random(rnd, m, k); Tensor wm = random(rnd, k, k); Tensor ym = Tensor.allocate(DType.F32, cpu, m, k)) {
                double f = 2.0 * m * k * k;
                t = best(() -> Nf4Matmul.denseF32Into(xm, wm, ym), 5);
                checks.add(new ComputeCheck("f32 gemm", m + "x" + k + "x" + k, f, 4.0 * k * k, t,
                        spec.seconds(f, 4.0 * k * k)));
            }
        }
        double deviceRead = Double.NaN;
        if (Qkern.cudaAvailable()) {
            // Never run on this project's machines so far (no GPU); the probe is the library's own device read kernel.
            try (Tensor d = Tensor.allocate(DType.U8, Device.cuda(0), 1L << 30)) {
                deviceRead = Qkern.probeReadBandwidth(d, 5).gbps() * 1e9;
            }
            progress.accept(String.format(Locale.ROOT, "  cuda:0 read bandwidth: %.1f GB/s", deviceRead / 1e9));
        }
        return new ComputeCalibration(spec, gemmFlops, readBps, pattern, checks, deviceRead);
    }

    private static Tensor random(SplittableRandom rnd, long rows, long cols) {
        Tensor t = Tensor.allocate(DType.F32, Device.CPU, rows, cols);
        MemorySegment s = t.segment();
        for (long i = 0; i < t.numel(); i++) {
            s.setAtIndex(ValueLayout.JAVA_FLOAT, i, (float) (rnd.nextDouble() * 2 - 1));
        }
        return t;
    }

    /** The fastest of {@code runs} timed runs after one warm-up. */
    private static double best(Runnable r, int runs) {
        r.run();
        double best = Double.POSITIVE_INFINITY;
        for (int i = 0; i < runs; i++) {
            long t0 = System.nanoTime();
            r.run();
            best = Math.min(best, (System.nanoTime() - t0) / 1e9);
        }
        return best;
    }

    /** A byte count as "4 KiB", "16 MiB" or "1000 B" (exact multiples only). */
    public static String human(long bytes) {
        if (bytes >= 1 << 20 && bytes % (1 << 20) == 0) {
            return (bytes >> 20) + " MiB";
        }
        if (bytes >= 1 << 10 && bytes % (1 << 10) == 0) {
            return (bytes >> 10) + " KiB";
        }
        return bytes + " B";
    }
}
