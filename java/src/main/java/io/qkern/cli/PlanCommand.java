package io.qkern.cli;

import io.qkern.dist.plan.Calibration;
import io.qkern.dist.plan.Fabric;
import io.qkern.dist.plan.GpuSpec;
import io.qkern.dist.plan.LayerPlan;
import io.qkern.dist.plan.LayerPlan.Prediction;
import io.qkern.dist.plan.Link;
import io.qkern.dist.plan.ModelShape;
import io.qkern.io.Json;
import java.io.PrintStream;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Set;

/**
 * {@code qkern plan}: the cost model's predicted per-layer time and scaling efficiency of a model
 * on TP x DP meshes ({@link LayerPlan}), and with {@code --calibrate} the model's inputs measured
 * on this machine ({@link Calibration}) and the plan they give next to the defaults.
 */
final class PlanCommand {
    static final String USAGE = "qkern plan --model NAME|hidden=H,ffn=F,layers=L[,heads=N,kv_heads=K,vocab=V]"
            + " [--gpus 8,64,512,1024] [--tp 8] [--gpu h100|h200|a100|measured] [--intra nvlink|pcie|ib|ethernet|measured]"
            + " [--inter ib|ethernet|nvlink|pcie|measured] [--gpus-per-node 8] [--tokens 16384] [--seq 4096]"
            + " [--weights bf16|nf4] [--dgc RATIO] [--step train|infer] [--efficiency E] [--calibrate [--quick]] [--json]";

    private static final Set<String> FLAGS = Set.of("--json", "--calibrate", "--quick");
    private static final Set<String> VALUED = Set.of("--model", "--gpus", "--tp", "--gpu", "--intra", "--inter",
            "--gpus-per-node", "--tokens", "--seq", "--weights", "--dgc", "--step", "--efficiency");

    private final PrintStream out;
    private final PrintStream err;

    PlanCommand(PrintStream out, PrintStream err) {
        this.out = out;
        this.err = err;
    }

    int run(List<String> argv) throws UsageException {
        Args a = Args.parse(argv, FLAGS, VALUED);
        a.expectPositional(0, USAGE);
        boolean json = a.flag("--json");
        boolean calibrate = a.flag("--calibrate");
        boolean quick = a.flag("--quick");
        if (quick) {
            err.println("qkern plan: --quick calibration (small sizes, fewer runs): a smoke test, not a result");
        }
        String modelSpec = a.option("--model", calibrate ? "7b" : null);
        if (modelSpec == null) {
            throw new UsageException("plan needs --model (7b, 13b, 70b, 405b or hidden=..,ffn=..,layers=..)\nusage: " + USAGE);
        }
        ModelShape model = parse(() -> ModelShape.parse(modelSpec));
        List<Integer> meshes = gpuList(a.option("--gpus", "8,64,512,1024"));
        int tp = positiveInt(a, "--tp", "8");
        int perNode = positiveInt(a, "--gpus-per-node", String.valueOf(Fabric.DEFAULT_GPUS_PER_NODE));
        long tokens = positiveLong(a, "--tokens", "16384");
        int seq = positiveInt(a, "--seq", "4096");
        LayerPlan.Weights weights = parse(() -> LayerPlan.Weights.parse(a.option("--weights", "bf16")));
        LayerPlan.Step step = parse(() -> LayerPlan.Step.parse(a.option("--step", "train")));
        double dgc = a.options.containsKey("--dgc") ? number(a, "--dgc") : 0;
        if (a.options.containsKey("--dgc") && !(dgc > 0 && dgc <= 1)) {
            throw new UsageException("--dgc must be a ratio in (0, 1], got " + a.option("--dgc", ""));
        }
        Double efficiency = null;
        if (a.options.containsKey("--efficiency")) {
            efficiency = number(a, "--efficiency");
            if (!(efficiency > 0 && efficiency <= 1)) {
                throw new UsageException("--efficiency must be in (0, 1], got " + a.option("--efficiency", ""));
            }
        }
        String gpuName = a.option("--gpu", "h100");
        String intraName = a.option("--intra", "nvlink");
        String interName = a.option("--inter", "ib");
        // Check names before any measurement runs.
        GpuSpec gpuPreset = isMeasured(gpuName) ? null : parse(() -> GpuSpec.preset(gpuName));
        Link intraPreset = isMeasured(intraName) ? null : parse(() -> Link.preset(intraName));
        Link interPreset = isMeasured(interName) ? null : parse(() -> Link.preset(interName));
        if (gpuPreset != null && efficiency != null) {
            gpuPreset = gpuPreset.withEfficiency(efficiency);
        }
        final GpuSpec gpuChecked = gpuPreset;
        // Validate every mesh with the presets (or stand-ins) first: a usage error must not wait for a calibration.
        LayerPlan probe = parse(() -> new LayerPlan(model, gpuChecked == null ? GpuSpec.H100_SXM : gpuChecked,
                new Fabric(Link.NVLINK, Link.INFINIBAND, perNode), tp, tokens, seq, weights, step, dgc));
        for (int gpus : meshes) {
            parse(() -> probe.predict(gpus));
        }

        Link measuredLink = null;
        GpuSpec measuredGpu = null;
        if (calibrate || intraPreset == null || interPreset == null) {
            err.println("calibrating links: all-reduce and all-gather over 2 in-process ranks...");
            long[] sizes = quick ? Calibration.QUICK_SIZES : Calibration.DEFAULT_SIZES;
            List<Calibration.CollectiveSample> samples = Calibration.measureCollectives(2, sizes, quick ? 2 : 5,
                    err::println);
            Calibration.LinkFit fit = Calibration.fitLink(samples, "fitted on this machine: 2 in-process ranks, "
                    + "all-reduce and all-gather of " + Calibration.human(sizes[0]) + ".."
                    + Calibration.human(sizes[sizes.length - 1]));
            measuredLink = fit.link();
            if (calibrate) {
                printLinkFit(fit, json);
            }
        }
        if (calibrate || gpuPreset == null) {
            err.println("calibrating compute: read bandwidth, F32 GEMM, GEMV checks...");
            Calibration.ComputeCalibration c = Calibration.measureCompute(quick ? 2048 : 8192, err::println);
            measuredGpu = c.spec();
            if (calibrate) {
                printCompute(c, json);
            }
        }
        GpuSpec gpu = gpuPreset != null ? gpuPreset : measuredGpu;
        Fabric fabric = new Fabric(intraPreset != null ? intraPreset : measuredLink,
                interPreset != null ? interPreset : measuredLink, perNode);
        printPlan(new LayerPlan(model, gpu, fabric, tp, tokens, seq, weights, step, dgc), meshes, json,
                calibrate ? "defaults" : null);
        if (calibrate) {
            Fabric local = new Fabric(measuredLink, fabric.inter(), perNode);
            printPlan(new LayerPlan(model, measuredGpu, local, tp, tokens, seq, weights, step, dgc), meshes, json,
                    "calibrated for this machine (measured compute and intra-node link; inter-node " + fabric.inter().name()
                            + ")");
        }
        return 0;
    }

    private void printPlan(LayerPlan plan, List<Integer> meshes, boolean json, String title) {
        if (!json) {
            out.println();
            if (title != null) {
                out.println("== " + title);
            }
            out.printf(Locale.ROOT, "model %s: %.1f M weights per layer%n", plan.model().describe(),
                    plan.model().layerParameters() / 1e6);
            out.println("gpu " + plan.gpu().describe() + "; " + plan.fabric().describe());
            out.printf(Locale.ROOT, "%s step, %d tokens per replica, seq %d, %s weights, %s gradients%n",
                    plan.step() == LayerPlan.Step.TRAINING ? "training" : "inference", plan.tokens(), plan.seq(),
                    plan.weights().name().toLowerCase(Locale.ROOT),
                    plan.step() == LayerPlan.Step.INFERENCE ? "no"
                            : plan.dgcRatio() > 0 ? "DGC ratio " + java.math.BigDecimal.valueOf(plan.dgcRatio())
                                    .stripTrailingZeros().toPlainString() + " (or dense)" : "dense");
            out.printf(Locale.ROOT, "%6s %4s %5s %5s %12s %12s %12s %12s %10s%n", "gpus", "tp", "dp", "nodes",
                    "compute ms", "tp comm ms", "dp comm ms", "total ms", "efficiency");
        }
        for (int gpus : meshes) {
            Prediction p = plan.predict(gpus);
            if (json) {
                Map<String, Object> o = new LinkedHashMap<>();
                o.put("model", plan.model().name());
                o.put("gpus", p.gpus());
                o.put("tp", p.tp());
                o.put("dp", p.dp());
                o.put("nodes", p.nodes());
                o.put("gpu", plan.gpu().name());
                o.put("intra", plan.fabric().intra().name());
                o.put("inter", plan.fabric().inter().name());
                o.put("gpus_per_node", plan.fabric().gpusPerNode());
                o.put("step", plan.step() == LayerPlan.Step.TRAINING ? "train" : "infer");
                o.put("tokens", plan.tokens());
                o.put("seq", plan.seq());
                o.put("weights", plan.weights().name().toLowerCase(Locale.ROOT));
                o.put("dgc_ratio", plan.dgcRatio());
                o.put("compute_s", p.computeSeconds());
                o.put("tp_comm_s", p.tpComm().seconds());
                o.put("dp_comm_s", p.dpComm().seconds());
                o.put("total_s", p.totalSeconds());
                o.put("single_gpu_s", p.singleGpuSeconds());
                o.put("ideal_s", p.idealSeconds());
                o.put("efficiency", p.efficiency());
                o.put("tp_algorithm", p.tpComm().algorithm());
                o.put("dp_algorithm", p.dpComm().algorithm());
                out.println(json(o));
            } else {
                out.printf(Locale.ROOT, "%6d %4d %5d %5d %12.3f %12.3f %12.3f %12.3f %9.1f%%%n", p.gpus(), p.tp(), p.dp(),
                        p.nodes(), p.computeSeconds() * 1e3, p.tpComm().seconds() * 1e3, p.dpComm().seconds() * 1e3,
                        p.totalSeconds() * 1e3, p.efficiency() * 100);
            }
        }
        if (!json) {
            out.println("times per layer and step; efficiency = (1-GPU time of the same global step / gpus) / total;"
                    + " no compute/communication overlap assumed");
        }
    }

    private void printLinkFit(Calibration.LinkFit fit, boolean json) {
        if (json) {
            for (Calibration.Row r : fit.rows()) {
                Map<String, Object> o = new LinkedHashMap<>();
                o.put("calibration", "collective");
                o.put("collective", r.collective().name().toLowerCase(Locale.ROOT));
                o.put("ranks", r.ranks());
                o.put("bytes", r.bytes());
                o.put("measured_s", r.measuredSeconds());
                o.put("predicted_s", r.predictedSeconds());
                o.put("error_pct", r.errorPercent());
                o.put("algorithm", r.algorithm());
                out.println(json(o));
            }
            Map<String, Object> o = new LinkedHashMap<>();
            o.put("calibration", "link");
            o.put("alpha_s", fit.link().alpha());
            o.put("beta_bytes_per_s", fit.link().beta());
            o.put("rms_relative_error", fit.fit().rmsRelativeError());
            out.println(json(o));
            return;
        }
        out.println("== link calibration: 2 in-process ranks (threads), F32, best batch average per size");
        out.printf(Locale.ROOT, "%-15s %9s %12s %12s %8s  %s%n", "collective", "bytes", "measured us", "predicted us",
                "error", "model's algorithm");
        for (Calibration.Row r : fit.rows()) {
            out.printf(Locale.ROOT, "%-15s %9s %12.2f %12.2f %7.1f%%  %s%n",
                    r.collective().name().toLowerCase(Locale.ROOT).replace('_', '-'), Calibration.human(r.bytes()),
                    r.measuredSeconds() * 1e6, r.predictedSeconds() * 1e6, r.errorPercent(), r.algorithm());
        }
        out.printf(Locale.ROOT, "fitted link: %s; rms relative error %.1f%%%n", fit.link().describe(),
                100 * fit.fit().rmsRelativeError());
    }

    private void printCompute(Calibration.ComputeCalibration c, boolean json) {
        if (json) {
            Map<String, Object> o = new LinkedHashMap<>();
            o.put("calibration", "compute");
            o.put("gemm_flops", c.gemmFlops());
            o.put("read_bytes_per_s", c.readBytesPerSecond());
            o.put("probe_pattern", c.probePattern());
            o.put("device_read_bytes_per_s", c.deviceReadBytesPerSecond());
            out.println(json(o));
            for (Calibration.ComputeCheck k : c.checks()) {
                Map<String, Object> r = new LinkedHashMap<>();
                r.put("calibration", "kernel");
                r.put("kernel", k.kernel());
                r.put("shape", k.shape());
                r.put("flops", k.flops());
                r.put("bytes", k.bytes());
                r.put("measured_s", k.measuredSeconds());
                r.put("predicted_s", k.predictedSeconds());
                r.put("error_pct", k.errorPercent());
                out.println(json(r));
            }
            return;
        }
        out.println();
        out.printf(Locale.ROOT, "== compute calibration: measured spec %s%n", c.spec().describe());
        out.printf(Locale.ROOT, "F32 GEMM %.1f GFLOP/s, read bandwidth %.1f GB/s (%s)%s%n", c.gemmFlops() / 1e9,
                c.readBytesPerSecond() / 1e9, c.probePattern(), Double.isNaN(c.deviceReadBytesPerSecond()) ? ""
                        : String.format(Locale.ROOT, ", cuda:0 read %.1f GB/s", c.deviceReadBytesPerSecond() / 1e9));
        out.printf(Locale.ROOT, "%-26s %-16s %12s %12s %8s%n", "roofline check", "shape", "measured ms", "predicted ms",
                "error");
        for (Calibration.ComputeCheck k : c.checks()) {
            out.printf(Locale.ROOT, "%-26s %-16s %12.3f %12.3f %7.1f%%%n", k.kernel(), k.shape(), k.measuredSeconds() * 1e3,
                    k.predictedSeconds() * 1e3, k.errorPercent());
        }
    }

    private static boolean isMeasured(String name) {
        return name.equalsIgnoreCase("measured");
    }

    @FunctionalInterface
    private interface Parse<T> {
        T get();
    }

    /** Turns the model's IllegalArgumentException (bad value) into a usage error. */
    private static <T> T parse(Parse<T> p) throws UsageException {
        try {
            return p.get();
        } catch (IllegalArgumentException e) {
            throw new UsageException(e.getMessage());
        }
    }

    private static List<Integer> gpuList(String s) throws UsageException {
        List<Integer> list = new ArrayList<>();
        for (String part : s.split(",", -1)) {
            int v;
            try {
                v = Integer.parseInt(part.trim());
            } catch (NumberFormatException e) {
                throw new UsageException("--gpus takes a comma-separated list of GPU counts, got \"" + s + "\"");
            }
            if (v < 1) {
                throw new UsageException("--gpus counts must be >= 1, got " + v);
            }
            list.add(v);
        }
        return list;
    }

    private static int positiveInt(Args a, String name, String fallback) throws UsageException {
        long v = positiveLong(a, name, fallback);
        if (v > Integer.MAX_VALUE) {
            throw new UsageException(name + " is too large: " + v);
        }
        return (int) v;
    }

    private static long positiveLong(Args a, String name, String fallback) throws UsageException {
        String s = a.option(name, fallback);
        long v;
        try {
            v = Long.parseLong(s.trim());
        } catch (NumberFormatException e) {
            throw new UsageException(name + " must be a whole number, got \"" + s + "\"");
        }
        if (v < 1) {
            throw new UsageException(name + " must be >= 1, got " + v);
        }
        return v;
    }

    private static double number(Args a, String name) throws UsageException {
        String s = a.option(name, "");
        try {
            return Double.parseDouble(s.trim());
        } catch (NumberFormatException e) {
            throw new UsageException(name + " must be a number, got \"" + s + "\"");
        }
    }

    /** One JSON object per line (a NaN, e.g. no device measured, as null). */
    static String json(Map<String, Object> fields) {
        Map<String, Object> clean = new LinkedHashMap<>();
        fields.forEach((k, v) -> clean.put(k, v instanceof Double d && !Double.isFinite(d) ? Json.NULL : v));
        return Json.writeCompact(clean);
    }
}
