package io.qkern.bench;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Qkern;
import io.qkern.Tensor;
import io.qkern.apmm.Apmm;
import io.qkern.apmm.ApmmMatrix;
import io.qkern.apmm.ApmmPath;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Instant;
import java.time.temporal.ChronoUnit;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import org.openjdk.jmh.results.RunResult;
import org.openjdk.jmh.runner.Runner;
import org.openjdk.jmh.runner.options.OptionsBuilder;

/**
 * Runs {@link ApmmBenchmark} over the spec's shapes (a plan sized for a 2-core machine: about
 * 8 minutes), measures the read-bandwidth probe in this process before and after, and writes
 * {@code apmm-cpu.json} (one object per line) and {@code apmm-cpu.md}.
 *
 * <pre>
 * java --enable-native-access=ALL-UNNAMED -cp bench/target/qkern-bench.jar io.qkern.bench.ApmmReport [--out DIR] [--quick]
 * </pre>
 */
public final class ApmmReport {
    private ApmmReport() {}

    record Config(String shape, int m, int wBits, int aBits, String path) {}

    record Row(Config c, String ran, double seconds, double tops, double packedBytes, double gbps, double pctProbe) {}

    static final String[] SHAPES = {"4096x4096", "4096x11008", "11008x4096", "4096x14336", "12288x14336",
        "8192x28672"};

    static List<Config> plan(boolean quick) {
        List<Config> p = new ArrayList<>();
        if (quick) {
            p.add(new Config("4096x4096", 1, 4, 8, "auto"));
            p.add(new Config("4096x4096", 512, 1, 1, "auto"));
            p.add(new Config("4096x4096", 512, 1, 1, "int8"));
            return p;
        }
        for (String s : SHAPES) {
            for (int w : new int[] {2, 3, 4}) {
                p.add(new Config(s, 1, w, 8, "auto"));
            }
        }
        for (int[] wa : new int[][] {{4, 4}, {2, 2}, {1, 1}}) {
            p.add(new Config("4096x4096", 1, wa[0], wa[1], "auto"));
        }
        for (int[] wa : new int[][] {{2, 8}, {4, 8}, {2, 2}}) {
            p.add(new Config("4096x4096", 8, wa[0], wa[1], "auto"));
        }
        for (int[] wa : new int[][] {{4, 8}, {2, 2}, {1, 1}}) {
            p.add(new Config("4096x4096", 64, wa[0], wa[1], "auto"));
        }
        for (int[] wa : new int[][] {{1, 1}, {2, 2}, {1, 2}, {3, 3}, {4, 8}, {8, 8}}) {
            p.add(new Config("4096x4096", 512, wa[0], wa[1], "auto"));
        }
        for (int[] wa : new int[][] {{1, 1}, {2, 2}}) {
            p.add(new Config("4096x4096", 512, wa[0], wa[1], "int8"));
        }
        p.add(new Config("4096x11008", 512, 1, 1, "auto"));
        p.add(new Config("4096x11008", 512, 4, 8, "auto"));
        p.add(new Config("4096x4096", 2048, 1, 1, "auto"));
        p.add(new Config("4096x4096", 2048, 4, 8, "auto"));
        return p;
    }

    static List<String[]> sgemmPlan(boolean quick) {
        if (quick) {
            List<String[]> one = new ArrayList<>();
            one.add(new String[] {"4096x4096", "1"});
            return one;
        }
        return List.of(new String[] {"4096x4096", "1"}, new String[] {"4096x14336", "1"},
                new String[] {"12288x14336", "1"}, new String[] {"4096x4096", "64"},
                new String[] {"4096x4096", "512"});
    }

    public static void main(String[] args) throws Exception {
        Path outDir = Path.of("bench", "results");
        boolean quick = false;
        for (int i = 0; i < args.length; i++) {
            switch (args[i]) {
                case "--out" -> outDir = Path.of(args[++i]);
                case "--quick" -> quick = true;
                default -> throw new IllegalArgumentException("unknown argument \"" + args[i] + "\" (--out DIR, --quick)");
            }
        }
        Files.createDirectories(outDir);
        Qkern.Bandwidth probeBefore = probe();
        List<Row> rows = new ArrayList<>();
        for (Config c : plan(quick)) {
            double us = run(options("apmm").param("shape", c.shape()).param("m", Integer.toString(c.m()))
                    .param("wBits", Integer.toString(c.wBits())).param("aBits", Integer.toString(c.aBits()))
                    .param("path", c.path()));
            long[] kn = ApmmBenchmark.parseShape(c.shape());
            double s = us * 1e-6;
            double packed = (double) kn[1] * c.wBits() * ApmmMatrix.wordsPerPlane(kn[0]) * 8;
            String ran = Apmm.choosePath(c.aBits(), c.wBits(), c.m(), Device.CPU,
                    ApmmPath.valueOf(c.path().toUpperCase(Locale.ROOT)));
            rows.add(new Row(c, ran, s, 2.0 * c.m() * kn[0] * kn[1] / s / 1e12, packed, packed / s / 1e9, 0));
            System.out.printf(Locale.ROOT, "%s M=%d W%dA%d %s: %.1f us%n", c.shape(), c.m(), c.wBits(), c.aBits(), ran,
                    us);
        }
        Map<String, Double> sgemm = new LinkedHashMap<>();
        if (ApmmBenchmark.openBlasSgemm().isPresent()) {
            for (String[] sm : sgemmPlan(quick)) {
                sgemm.put(sm[0] + "/" + sm[1], run(options("sgemm").param("shape", sm[0]).param("m", sm[1]))
                        * 1e-6);
            }
        }
        Qkern.Bandwidth probeAfter = probe();
        double probe = Math.max(probeBefore.gbps(), probeAfter.gbps());
        String pattern = probe == probeBefore.gbps() ? probeBefore.pattern() : probeAfter.pattern();
        write(outDir, rows, sgemm, probe, pattern, probeBefore.gbps(), probeAfter.gbps());
    }

    static OptionsBuilder options(String method) {
        OptionsBuilder o = new OptionsBuilder();
        o.include(ApmmBenchmark.class.getName() + "\\." + method + "$");
        return o;
    }

    static double run(org.openjdk.jmh.runner.options.ChainedOptionsBuilder o) throws Exception {
        RunResult r = new Runner(o.build()).runSingle();
        return r.getPrimaryResult().getScore();  // microseconds per call
    }

    static Qkern.Bandwidth probe() {
        try (Tensor buf = Tensor.allocate(DType.U8, Device.CPU, 512L << 20)) {
            buf.fillBytes(1);
            return Qkern.probeReadBandwidth(buf, 5);
        }
    }

    static void write(Path dir, List<Row> rows, Map<String, Double> sgemm, double probe, String pattern, double before,
            double after) throws Exception {
        StringBuilder json = new StringBuilder();
        String backend = "cpu-" + Qkern.cpuPath();
        int threads = Qkern.cpuThreads();
        for (Row r : rows) {
            long[] kn = ApmmBenchmark.parseShape(r.c().shape());
            boolean streaming = r.c().m() <= 16;
            Double base = sgemm.get(r.c().shape() + "/" + r.c().m());
            json.append(String.format(Locale.ROOT, "{\"kernel\": \"apmm_matmul\", \"shape\": \"%s\", \"m\": %d,"
                    + " \"k\": %d, \"n\": %d, \"w_bits\": %d, \"a_bits\": %d, \"format\": \"signed\", \"path\": \"%s\","
                    + " \"requested\": \"%s\", \"backend\": \"%s\", \"threads\": %d, \"seconds\": %.9g, \"tops\": %.6g,"
                    + " \"packed_weight_bytes\": %.0f, \"gbps\": %s, \"pct_of_probe\": %s, \"probe_gbps\": %.6g,"
                    + " \"probe_pattern\": \"%s\", \"sgemm_seconds_over_seconds\": %s}%n",
                    r.c().shape(), r.c().m(), kn[0], kn[1], r.c().wBits(), r.c().aBits(), r.ran(), r.c().path(),
                    backend, threads, r.seconds(), r.tops(), r.packedBytes(),
                    streaming ? String.format(Locale.ROOT, "%.6g", r.gbps()) : "null",
                    streaming ? String.format(Locale.ROOT, "%.6g", 100 * r.gbps() / probe) : "null", probe, pattern,
                    base == null ? "null" : String.format(Locale.ROOT, "%.6g", base / r.seconds())));
        }
        for (Map.Entry<String, Double> e : sgemm.entrySet()) {
            String[] sm = e.getKey().split("/");
            long[] kn = ApmmBenchmark.parseShape(sm[0]);
            int m = Integer.parseInt(sm[1]);
            json.append(String.format(Locale.ROOT, "{\"kernel\": \"openblas_sgemm\", \"shape\": \"%s\", \"m\": %d,"
                    + " \"seconds\": %.9g, \"tops\": %.6g, \"weight_gbps\": %.6g, \"probe_gbps\": %.6g}%n", sm[0], m,
                    e.getValue(), 2.0 * m * kn[0] * kn[1] / e.getValue() / 1e12,
                    4.0 * kn[0] * kn[1] / e.getValue() / 1e9, probe));
        }
        Files.writeString(dir.resolve("apmm-cpu.json"), json.toString());

        StringBuilder md = new StringBuilder();
        md.append("# APMM matmul on the CPU\n\n");
        md.append(String.format(Locale.ROOT, "Measured %s by `io.qkern.bench.ApmmReport` (JMH: AverageTime, 2 warmup +"
                + " 3 measurement iterations of 1 s, 1 fork per row). Backend %s, %d threads, CPU features: %s."
                + " Read-bandwidth probe in the same process: %.1f GB/s (%s; %.1f before, %.1f after the runs)."
                + " Operands: random signed codes, exact I32 output; A is packed beforehand (not timed)."
                + " Dense baseline: OpenBLAS cblas_sgemm (system libopenblas.so.0, F32)%s.%n%n",
                Instant.now().truncatedTo(ChronoUnit.SECONDS), backend, threads, Qkern.info().cpuFeatures(), probe,
                pattern, before, after, sgemm.isEmpty() ? " - not installed, not measured" : ""));
        md.append("Rows are measured one after another; on a shared machine the load changes between them. The"
                + " issue's targets are measured interleaved (every contender once per round) by"
                + " `io.qkern.bench.ApmmTargets`: see `apmm-cpu-targets.md`.\n\n");
        md.append("## M = 1 (weight streaming)\n\n| K x N | W/A bits | path | us | packed W GB/s | % of probe |"
                + " TOPS | sgemm time / APMM time |\n|---|---|---|---|---|---|---|---|\n");
        for (Row r : rows) {
            if (r.c().m() <= 16) {
                Double base = sgemm.get(r.c().shape() + "/" + r.c().m());
                md.append(String.format(Locale.ROOT, "| %s%s | W%dA%d | %s | %.0f | %.2f | %.1f%% | %.3f | %s |%n",
                        r.c().shape(), r.c().m() == 1 ? "" : " (M=" + r.c().m() + ")", r.c().wBits(), r.c().aBits(),
                        r.ran(), r.seconds() * 1e6, r.gbps(), 100 * r.gbps() / probe, r.tops(),
                        base == null ? "-" : String.format(Locale.ROOT, "%.2fx", base / r.seconds())));
            }
        }
        Map<String, Double> int8Tops = new LinkedHashMap<>();
        for (Row r : rows) {
            if (r.ran().contains("int8") && r.c().m() == 512 && r.c().shape().equals("4096x4096")) {
                int8Tops.merge("best", r.tops(), Math::max);
                int8Tops.put("W" + r.c().wBits() + "A" + r.c().aBits(), r.tops());
            }
        }
        md.append("\n## M >= 64 (compute)\n\n| K x N | M | W/A bits | path | ms | TOPS | vs best int8-path TOPS"
                + " (M=512, 4096x4096) | sgemm time / APMM time |\n|---|---|---|---|---|---|---|---|\n");
        for (Row r : rows) {
            if (r.c().m() > 16) {
                Double base = sgemm.get(r.c().shape() + "/" + r.c().m());
                Double best = int8Tops.get("best");
                md.append(String.format(Locale.ROOT, "| %s | %d | W%dA%d | %s | %.2f | %.3f | %s | %s |%n",
                        r.c().shape(), r.c().m(), r.c().wBits(), r.c().aBits(), r.ran(), r.seconds() * 1e3, r.tops(),
                        best == null ? "-" : String.format(Locale.ROOT, "%.2fx", r.tops() / best),
                        base == null ? "-" : String.format(Locale.ROOT, "%.2fx", base / r.seconds())));
            }
        }
        if (!sgemm.isEmpty()) {
            md.append("\n## OpenBLAS sgemm (F32 weights)\n\n| K x N | M | ms | TOPS | weight GB/s |\n|---|---|---|---|---|\n");
            for (Map.Entry<String, Double> e : sgemm.entrySet()) {
                String[] sm = e.getKey().split("/");
                long[] kn = ApmmBenchmark.parseShape(sm[0]);
                int m = Integer.parseInt(sm[1]);
                md.append(String.format(Locale.ROOT, "| %s | %d | %.2f | %.3f | %.1f |%n", sm[0], m, e.getValue() * 1e3,
                        2.0 * m * kn[0] * kn[1] / e.getValue() / 1e12, 4.0 * kn[0] * kn[1] / e.getValue() / 1e9));
            }
        }
        Files.writeString(dir.resolve("apmm-cpu.md"), md.toString());
    }
}
