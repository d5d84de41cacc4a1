package io.qkern.bench;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Qkern;
import io.qkern.Tensor;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.time.Instant;
import java.time.temporal.ChronoUnit;
import java.util.ArrayList;
import java.util.Collection;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.TreeMap;
import org.openjdk.jmh.results.RunResult;
import org.openjdk.jmh.runner.Runner;
import org.openjdk.jmh.runner.options.OptionsBuilder;

/**
 * Runs {@link TopkBenchmark} through JMH, measures the read-bandwidth probe in this process before
 * and after, and writes {@code topk-cpu.json} (one JSON object per line) and {@code topk-cpu.md}.
 *
 * <pre>
 * java --enable-native-access=ALL-UNNAMED -cp bench/target/qkern-bench.jar io.qkern.bench.TopkReport [--out DIR] [--quick]
 * </pre>
 * The full sort runs at ratio 0.001 only (its time does not depend on k). {@code --quick}: n = 1e6
 * only (a smoke test, not a result).
 */
public final class TopkReport {
    private TopkReport() {}

    public static void main(String[] args) throws Exception {
        Path outDir = Path.of("bench", "results");
        boolean quick = false;
        for (int i = 0; i < args.length; i++) {
            switch (args[i]) {
                case "--out" -> outDir = Path.of(args[++i]);
                case "--quick" -> quick = true;
                default -> throw new IllegalArgumentException("unknown argument " + args[i] + " (--out DIR, --quick)");
            }
        }
        Qkern.Info info = Qkern.info();
        if (!info.nativeLoaded()) {
            throw new IllegalStateException("native library not loaded: " + info.loadFailure());
        }
        String started = Instant.now().truncatedTo(ChronoUnit.SECONDS).toString();
        String[] ns = quick ? new String[] {"1000000"} : new String[] {"1000000", "10000000", "100000000"};
        List<Double> probes = new ArrayList<>(probe());
        String cls = TopkBenchmark.class.getName();
        Collection<RunResult> main = new Runner(new OptionsBuilder()
                .include(cls + "\\.(radixSelect|nthElement|dgcStep|dgcStepNoCheck|momentumPass)$")
                .param("n", ns).build()).run();
        probes.addAll(probe());
        Collection<RunResult> sort = new Runner(new OptionsBuilder().include(cls + "\\.fullSort$").param("n", ns)
                .param("ratio", "0.001").measurementIterations(2).build()).run();
        probes.addAll(probe());
        double probeGbps = probes.stream().mapToDouble(Double::doubleValue).sorted().toArray()[probes.size() / 2];

        // key "n|ratio" -> benchmark -> ms
        Map<String, Map<String, Double>> ms = new TreeMap<>((a, b) -> {
            String[] x = a.split("\\|"), y = b.split("\\|");
            int c = Long.compare(Long.parseLong(x[0]), Long.parseLong(y[0]));
            return c != 0 ? c : Double.compare(Double.parseDouble(x[1]), Double.parseDouble(y[1]));
        });
        for (Collection<RunResult> rs : List.of(main, sort)) {
            for (RunResult r : rs) {
                String bench = r.getParams().getBenchmark();
                bench = bench.substring(bench.lastIndexOf('.') + 1);
                String key = r.getParams().getParam("n") + "|" + r.getParams().getParam("ratio");
                ms.computeIfAbsent(key, x -> new TreeMap<>()).put(bench, r.getPrimaryResult().getScore());
            }
        }
        StringBuilder json = new StringBuilder();
        StringBuilder md = new StringBuilder();
        md.append("# Top-k / DGC on the CPU\n\n");
        md.append(String.format(Locale.ROOT, "Measured %s, commit-independent run of `TopkReport`. %s, %d qkern threads,"
                + " path `%s`. Read probe (same process, median of %d calls before, between and after): **%.1f GB/s**."
                + " Inputs: Gaussian F32. JMH average time, 1 fork, 1 warm-up + 3 measured 1-s iterations (full"
                + " sort: 2).%n%n", started, System.getProperty("os.arch"), Qkern.cpuThreads(), Qkern.cpuPath(),
                probes.size(), probeGbps));
        md.append("## Exact top-k by |x|\n\n| n | k | radix select ms | G elem/s | GB/s read-equiv. | % of probe |"
                + " nth_element ms | speed-up vs nth_element | full sort ms | speed-up vs sort |\n"
                + "|---|---|---|---|---|---|---|---|---|---|\n");
        for (var e : ms.entrySet()) {
            String[] key = e.getKey().split("\\|");
            long n = Long.parseLong(key[0]);
            double ratio = Double.parseDouble(key[1]);
            Map<String, Double> m = e.getValue();
            Double radix = m.get("radixSelect");
            if (radix == null) {
                continue;
            }
            double ges = n / (radix * 1e-3) / 1e9;
            double gbps = 4.0 * n / (radix * 1e-3) / 1e9;
            Double nth = m.get("nthElement");
            Double full = sortMs(ms, key[0]);
            md.append(String.format(Locale.ROOT, "| %.0e | %d | %.2f | %.2f | %.1f | %.0f%% | %s | %s | %s | %s |%n",
                    (double) n, (long) Math.ceil(n * ratio), radix, ges, gbps, 100 * gbps / probeGbps, fmt(nth),
                    nth == null ? "-" : String.format(Locale.ROOT, "%.1fx", nth / radix), fmt(full),
                    full == null ? "-" : String.format(Locale.ROOT, "%.0fx", full / radix)));
            json.append(String.format(Locale.ROOT, "{\"kernel\":\"topk_magnitude\",\"n\":%d,\"ratio\":%s,\"ms\":%.4f,"
                    + "\"g_elements_per_s\":%.4f,\"probe_gbps\":%.2f,\"pct_of_probe\":%.2f,\"nth_element_ms\":%s,"
                    + "\"full_sort_ms\":%s,\"speedup_vs_nth_element\":%s,\"speedup_vs_full_sort\":%s,\"path\":\"%s\","
                    + "\"threads\":%d,\"measured\":\"%s\"}%n", n, key[1], radix, ges, probeGbps, 100 * gbps / probeGbps,
                    num(nth), num(full), nth == null ? "null" : num(nth / radix), full == null ? "null" : num(full / radix),
                    Qkern.cpuPath(), Qkern.cpuThreads(), started));
        }
        md.append("\n## Whole DGC step (momentum 0.9, exact selection) vs the momentum pass alone\n\n"
                + "| n | k | momentum pass ms | step ms (finite check on) | ratio | step ms (check off) | ratio |"
                + " momentum pass GB/s (20 B/elem) | % of probe |\n|---|---|---|---|---|---|---|---|---|\n");
        for (var e : ms.entrySet()) {
            String[] key = e.getKey().split("\\|");
            long n = Long.parseLong(key[0]);
            Map<String, Double> m = e.getValue();
            Double mom = m.get("momentumPass"), step = m.get("dgcStep"), fast = m.get("dgcStepNoCheck");
            if (mom == null || step == null || fast == null) {
                continue;
            }
            double gbps = 20.0 * n / (mom * 1e-3) / 1e9;
            md.append(String.format(Locale.ROOT, "| %.0e | %d | %.2f | %.2f | %.2fx | %.2f | %.2fx | %.1f | %.0f%% |%n",
                    (double) n, (long) Math.ceil(n * Double.parseDouble(key[1])), mom, step, step / mom, fast,
                    fast / mom, gbps, 100 * gbps / probeGbps));
            json.append(String.format(Locale.ROOT, "{\"kernel\":\"dgc_step\",\"n\":%d,\"ratio\":%s,\"momentum_pass_ms\":%.4f,"
                    + "\"step_ms\":%.4f,\"step_no_check_ms\":%.4f,\"step_over_momentum\":%.4f,"
                    + "\"step_no_check_over_momentum\":%.4f,\"probe_gbps\":%.2f,\"path\":\"%s\",\"threads\":%d,"
                    + "\"measured\":\"%s\"}%n", n, key[1], mom, step, fast, step / mom, fast / mom, probeGbps,
                    Qkern.cpuPath(), Qkern.cpuThreads(), started));
        }
        md.append("\nThe machine is shared with other work; the probe bounds what any pass can read. A step reads g, u, v"
                + " and writes u, v (20 B/element) like the momentum pass, plus one read of g for the NaN/Inf check"
                + " and clipping norm (off in the \"check off\" column) and one read of v for the selection's"
                + " compaction; the first radix pass's histogram is built inside the update pass.\n");
        Files.createDirectories(outDir);
        write(outDir.resolve("topk-cpu.json"), json.toString());
        write(outDir.resolve("topk-cpu.md"), md.toString());
        System.out.println(md);
    }

    private static Double sortMs(Map<String, Map<String, Double>> ms, String n) {
        for (var e : ms.entrySet()) {
            if (e.getKey().startsWith(n + "|") && e.getValue().containsKey("fullSort")) {
                return e.getValue().get("fullSort");
            }
        }
        return null;
    }

    private static String fmt(Double v) {
        return v == null ? "-" : String.format(Locale.ROOT, "%.1f", v);
    }

    private static String num(Double v) {
        return v == null ? "null" : String.format(Locale.ROOT, "%.4f", v);
    }

    private static List<Double> probe() {
        List<Double> g = new ArrayList<>();
        try (Tensor buf = Tensor.allocate(DType.U8, Device.CPU, 512L << 20)) {
            buf.fillBytes(1);
            for (int i = 0; i < 3; i++) {
                g.add(Qkern.probeReadBandwidth(buf, 3).gbps());
            }
        }
        return g;
    }

    private static void write(Path target, String text) throws Exception {
        Path tmp = target.resolveSibling(target.getFileName() + ".tmp");
        Files.writeString(tmp, text, StandardCharsets.UTF_8);
        Files.move(tmp, target, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
    }
}
