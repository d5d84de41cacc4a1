package io.qkern.cli;

import io.qkern.DType;
import io.qkern.Tensor;
import io.qkern.topk.Dgc;
import io.qkern.topk.TopK;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.SplittableRandom;

/**
 * {@code qkern bench topk}: exact top-k by |x| of n F32 values (n = 1e6, 1e7, 1e8; k = 0.1%
 * and 1%) beside std::nth_element and a full sort (single-threaded C++ baselines; the sort only up
 * to 1e7, it takes minutes at 1e8), and a whole DGC step beside the momentum pass alone. CPU.
 *
 * <p>Traffic counted: top-k reads the n inputs once (4n bytes; the kernel's extra passes over
 * candidates are not counted); a DGC step and the momentum pass read g, u, v and write u, v (20n).
 */
final class TopkBench implements BenchSuite {
    @Override
    public String name() {
        return "topk";
    }

    @Override
    public String summary() {
        return "exact top-k (radix select) vs nth_element / sort, and the fused DGC step vs the momentum pass";
    }

    @Override
    public void run(BenchContext ctx) {
        if (!ctx.device().isCpu()) {
            ctx.note("topk suite: CPU only (the CUDA selection has never run on a GPU); skipped on " + ctx.device());
            return;
        }
        long[] sizes = ctx.quick() ? new long[] {1_000_000} : new long[] {1_000_000, 10_000_000, 100_000_000};
        for (long n : sizes) {
            try (Tensor x = random(n, 1)) {
                for (double ratio : new double[] {0.001, 0.01}) {
                    long k = TopK.kFor(n, ratio);
                    String shape = String.valueOf(n);
                    double t = ctx.seconds(() -> TopK.select(x, k).close());
                    double tn = ctx.seconds(() -> TopK.baseline(x, k, TopK.Baseline.NTH_ELEMENT).close());
                    Map<String, Object> e = extra(n, k, ratio, t);
                    e.put("speedup_vs_nth_element", Math.round(tn / t * 10) / 10.0);
                    ctx.emit("topk_exact", shape, "f32", ctx.backend(), t, 4.0 * n, e);
                    ctx.emit("nth_element_baseline", shape, "f32", "cpu-std", tn, 4.0 * n, extra(n, k, ratio, tn));
                    if (n <= 10_000_000) {
                        double ts = ctx.seconds(() -> TopK.baseline(x, k, TopK.Baseline.FULL_SORT).close());
                        ctx.emit("full_sort_baseline", shape, "f32", "cpu-std", ts, 4.0 * n, extra(n, k, ratio, ts));
                    }
                }
            }
            if (n >= 10_000_000 || ctx.quick()) {
                try (Tensor g = random(n, 2); Tensor u = Tensor.allocate(DType.F32, ctx.device(), n);
                        Tensor v = Tensor.allocate(DType.F32, ctx.device(), n)) {
                    u.fillBytes(0);
                    v.fillBytes(0);
                    long k = TopK.kFor(n, 0.001);
                    try (Tensor idx = Tensor.allocate(DType.I32, ctx.device(), k);
                            Tensor val = Tensor.allocate(DType.F32, ctx.device(), k)) {
                        double ts = ctx.seconds(() -> Dgc.step("g", g, u, v, Dgc.Options.DEFAULT, idx, val));
                        double tm = ctx.seconds(() -> Dgc.momentumPassBaseline(g, u, v, 0.9f));
                        Map<String, Object> e = extra(n, k, 0.001, ts);
                        e.put("x_momentum_pass", Math.round(ts / tm * 100) / 100.0);
                        ctx.emit("dgc_step", String.valueOf(n), "f32", ctx.backend(), ts, 20.0 * n, e);
                        ctx.emit("momentum_pass_baseline", String.valueOf(n), "f32", ctx.backend(), tm, 20.0 * n,
                                extra(n, k, 0.001, tm));
                    }
                }
            }
        }
    }

    private static Map<String, Object> extra(long n, long k, double ratio, double seconds) {
        Map<String, Object> e = new LinkedHashMap<>();
        e.put("k", k);
        e.put("ratio", ratio);
        e.put("g_elements_per_s", Math.round(n / seconds / 1e9 * 1000) / 1000.0);
        return e;
    }

    private static Tensor random(long n, long seed) {
        Tensor t = Tensor.allocate(DType.F32, io.qkern.Device.CPU, n);
        MemorySegment s = t.segment();
        SplittableRandom r = new SplittableRandom(seed);
        for (long i = 0; i < n; i++) {
            s.setAtIndex(ValueLayout.JAVA_FLOAT, i, (float) r.nextGaussian());
        }
        return t;
    }
}
