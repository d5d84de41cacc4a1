package io.qkern.bench;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Qkern;
import io.qkern.Tensor;
import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.AtomicMoveNotSupportedException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.time.Instant;
import java.time.temporal.ChronoUnit;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import org.openjdk.jmh.results.RunResult;
import org.openjdk.jmh.runner.Runner;
import org.openjdk.jmh.runner.options.ChainedOptionsBuilder;
import org.openjdk.jmh.runner.options.OptionsBuilder;
import org.openjdk.jmh.runner.options.TimeValue;

/**
 * Runs {@link Nf4DequantBenchmark} through JMH, one group of forks per shape, measures the
 * read-bandwidth probe in this process before the first group and after every group, and writes
 * {@code nf4-dequant-cpu.json} (one JSON object per line) and
 * {@code nf4-dequant-cpu.md} (tables plus the machine they were measured on).
 *
 * <pre>
 * java --enable-native-access=ALL-UNNAMED -cp bench/target/qkern-bench.jar io.qkern.bench.Nf4DequantReport
 *     [--out DIR] [--quick] [--all-dtypes] [--probe-calls N] [--retries N] [--max-wait SECONDS]
 * </pre>
 *
 * <p>Default plan (about 4-6 minutes on a 2-core machine): BF16 and F32 outputs for all four
 * shapes, F16 for 4096x11008, the copy baseline for BF16-sized and F32-sized outputs and the Java
 * BF16-&gt;F32 widening for every shape. {@code --all-dtypes} adds F16 for every shape;
 * {@code --quick} runs one shape with short iterations (a smoke test, not a result).
 */
public final class Nf4DequantReport {
    private Nf4DequantReport() {}

    static final String[] SHAPES = {"4096x4096", "4096x11008", "11008x4096", "14336x4096"};
    static final String F16_SHAPE = "4096x11008";
    static final int BLOCKSIZE = 64;
    static final String BENCH = Nf4DequantBenchmark.class.getName();

    public static void main(String[] args) throws Exception {
        Path outDir = Path.of("bench", "results");
        boolean quick = false;
        boolean allDtypes = false;
        int probeCalls = 5;
        int retries = 1;
        double maxWait = 10;
        for (int i = 0; i < args.length; i++) {
            switch (args[i]) {
                case "--out" -> outDir = Path.of(value(args, ++i, "--out"));
                case "--quick" -> quick = true;
                case "--all-dtypes" -> allDtypes = true;
                case "--probe-calls" -> probeCalls = Integer.parseInt(value(args, ++i, "--probe-calls"));
                case "--retries" -> retries = Integer.parseInt(value(args, ++i, "--retries"));
                case "--max-wait" -> maxWait = Double.parseDouble(value(args, ++i, "--max-wait"));
                case "-h", "--help" -> {
                    System.out.println("usage: Nf4DequantReport [--out DIR] [--quick] [--all-dtypes] [--probe-calls N]"
                            + " [--retries N] [--max-wait SECONDS]");
                    return;
                }
                default -> throw new IllegalArgumentException("unknown argument \"" + args[i] + "\" (try --help)");
            }
        }
        if (probeCalls < 1) {
            throw new IllegalArgumentException("--probe-calls must be >= 1, got " + probeCalls);
        }
        String[] shapes = quick ? new String[] {F16_SHAPE} : SHAPES;

        Qkern.Info info = Qkern.info();
        if (!info.nativeLoaded()) {
            throw new IllegalStateException("native library not loaded: " + info.loadFailure());
        }
        String started = Instant.now().truncatedTo(ChronoUnit.SECONDS).toString();
        System.out.println(info.format());

        // ---- probe, then per shape: JMH group, probe -------------------------------------------------
        // Grouping by shape keeps each dequant next to its baselines in time, and the probe sets
        // between groups show how the machine's bandwidth drifted (it is shared).
        List<ProbeSet> probes = new ArrayList<>();
        List<Group> groups = new ArrayList<>();
        long t0 = System.nanoTime();
        waitQuiet(maxWait);
        probes.add(probe("before", probeCalls));
        List<Row> rows = new ArrayList<>();
        List<String> f16Shapes = allDtypes ? Arrays.asList(shapes) : List.of(F16_SHAPE);
        for (int g = 0; g < shapes.length; g++) {
            String shape = shapes[g];
            boolean f16 = f16Shapes.contains(shape);
            Attempt kept = runGroup(shape, f16, quick);
            List<Double> others = new ArrayList<>(List.of(kept.otherCores));
            // A group that shared the CPU with other work is run again (while the time budget lasts);
            // the attempt with the least foreign CPU use is kept, and every attempt is listed.
            for (int r = 0; r < retries && kept.otherCores > CONTENDED_CORES
                    && (System.nanoTime() - t0) / 1e9 < RETRY_DEADLINE_S; r++) {
                System.out.printf(Locale.ROOT, "other processes used %.2f cores during %s: running it again%n",
                        kept.otherCores, shape);
                waitQuiet(maxWait);
                Attempt again = runGroup(shape, f16, quick);
                others.add(again.otherCores);
                if (again.otherCores < kept.otherCores) {
                    kept = again;
                }
            }
            groups.add(new Group(shape, kept.otherCores, List.copyOf(others)));
            probes.add(probe("after " + shape, probeCalls));
            double adjacent = median(concat(probes.get(g).gbps, probes.get(g + 1).gbps));
            for (RunResult r : kept.results) {
                rows.add(row(r, adjacent, kept.otherCores));
            }
            if (g + 1 < shapes.length) {
                waitQuiet(maxWait);
            }
        }
        List<Double> all = new ArrayList<>();
        Map<String, Integer> patternCount = new LinkedHashMap<>();
        for (ProbeSet p : probes) {
            all.addAll(p.gbps);
            p.patterns.forEach((k, v) -> patternCount.merge(k, v, Integer::sum));
        }
        double probeGbps = median(all);
        String pattern = mostFrequent(patternCount);

        // ---- rows --------------------------------------------------------------------------------------
        String backend = "cpu-" + Qkern.cpuPath();
        int threads = Qkern.cpuThreads();
        Map<String, Row> copies = new LinkedHashMap<>();   // "shape|bytesPerElement"
        Map<String, Row> widens = new LinkedHashMap<>();   // shape
        List<Row> dequants = new ArrayList<>();
        for (Row r : rows) {
            switch (r.kernel) {
                case "nf4_dequantize" -> dequants.add(r);
                case "copy_output_bytes_java" -> copies.put(r.shape + "|" + r.outBytesPerElement, r);
                case "bf16_to_f32_java" -> widens.put(r.shape, r);
                default -> throw new IllegalStateException(r.kernel);
            }
        }
        dequants.sort((a, b) -> a.shape.equals(b.shape) ? a.dtype.compareTo(b.dtype)
                : Integer.compare(Arrays.asList(SHAPES).indexOf(a.shape), Arrays.asList(SHAPES).indexOf(b.shape)));

        // ---- JSON lines --------------------------------------------------------------------------------
        StringBuilder json = new StringBuilder();
        for (Row d : dequants) {
            Row c = copies.get(d.shape + "|" + d.outBytesPerElement);
            Row w = d.dtype.equals("F32") ? widens.get(d.shape) : null;
            Map<String, Object> extra = new LinkedHashMap<>();
            extra.put("blocksize", BLOCKSIZE);
            if (c != null) {
                extra.put("copy_gbps", round(c.gbps()));
                extra.put("pct_of_copy", round(100 * d.gbps() / c.gbps()));
                extra.put("copy_seconds_over_seconds", round(c.seconds / d.seconds));
            }
            if (w != null) {
                extra.put("java_widen_seconds_over_seconds", round(w.seconds / d.seconds));
            }
            json.append(jsonLine(d, backend, threads, probeGbps, pattern, extra)).append('\n');
        }
        for (Row c : copies.values()) {
            json.append(jsonLine(c, "java-ffm", threads, probeGbps, pattern, Map.of())).append('\n');
        }
        for (Row w : widens.values()) {
            json.append(jsonLine(w, "java-ffm", threads, probeGbps, pattern, Map.of())).append('\n');
        }
        Map<String, Object> probeExtra = new LinkedHashMap<>();
        probeExtra.put("probe_bytes", Nf4DequantBenchmark.PROBE_BYTES);
        probeExtra.put("probe_calls", all.size());
        probeExtra.put("probe_gbps_min", round(all.stream().mapToDouble(Double::doubleValue).min().orElse(Double.NaN)));
        probeExtra.put("probe_gbps_max", round(all.stream().mapToDouble(Double::doubleValue).max().orElse(Double.NaN)));
        for (int i = 0; i < probes.size(); i++) {
            probeExtra.put("probe_set_" + i, probes.get(i).label + ": median " + round(probes.get(i).median()) + " GB/s");
        }
        json.append(jsonObject(List.of(
                entry("kernel", "read_probe"), entry("shape", (Nf4DequantBenchmark.PROBE_BYTES >> 20) + "MiB"),
                entry("dtype", "U8"), entry("backend", backend), entry("threads", threads),
                entry("seconds", round(Nf4DequantBenchmark.PROBE_BYTES / (probeGbps * 1e9))),
                entry("gbps", round(probeGbps)), entry("pct_of_probe", 100.0), entry("probe_gbps", round(probeGbps)),
                entry("probe_pattern", pattern)), probeExtra)).append('\n');

        // ---- Markdown ----------------------------------------------------------------------------------
        String md = markdown(info, started, quick, backend, threads, probes, groups, probeGbps, pattern, dequants,
                copies, widens);

        Files.createDirectories(outDir);
        Path jsonPath = outDir.resolve("nf4-dequant-cpu.json");
        Path mdPath = outDir.resolve("nf4-dequant-cpu.md");
        writeAtomically(jsonPath, json.toString());
        writeAtomically(mdPath, md);
        System.out.println();
        System.out.println(md);
        System.out.println("wrote " + jsonPath + " and " + mdPath);
    }

    // ---- measurement helpers -------------------------------------------------------------------------

    static ChainedOptionsBuilder options(boolean quick) {
        return new OptionsBuilder()
                .warmupIterations(quick ? 1 : 3)
                .warmupTime(TimeValue.seconds(1))
                .measurementIterations(quick ? 2 : 5)
                .measurementTime(TimeValue.seconds(1))
                .forks(1)
                .jvmArgsAppend("--enable-native-access=ALL-UNNAMED")
                .timeUnit(TimeUnit.MILLISECONDS)
                .shouldFailOnError(true);
    }

    /** Foreign CPU use (cores, averaged over a group) above which a group is run again. */
    static final double CONTENDED_CORES = 0.35;
    /** No retries start after this many seconds of the run (keeps the report near 6 minutes). */
    static final double RETRY_DEADLINE_S = 180;

    /** One run of a shape's forks and how much CPU other processes used meanwhile. */
    record Attempt(List<RunResult> results, double otherCores) {}

    /** The attempt kept for a shape, and the foreign CPU use of every attempt. */
    record Group(String shape, double otherCores, List<Double> attempts) {}

    static Attempt runGroup(String shape, boolean f16, boolean quick) throws Exception {
        CpuSample a = CpuSample.now();
        List<RunResult> results = new ArrayList<>(new Runner(options(quick)
                .include(BENCH + "\\.(dequant|copyOutputBytes|widenBf16ToF32Java)$")
                .param("shape", shape)
                .param("dtype", "BF16", "F32")
                .param("blocksize", Integer.toString(BLOCKSIZE))
                .build()).run());
        if (f16) {
            results.addAll(new Runner(options(quick)
                    .include(BENCH + "\\.dequant$")
                    .param("shape", shape)
                    .param("dtype", "F16")
                    .param("blocksize", Integer.toString(BLOCKSIZE))
                    .build()).run());
        }
        return new Attempt(results, CpuSample.otherCores(a, CpuSample.now()));
    }

    /** Waits (at most {@code maxSeconds}) until other processes use less than a quarter of a core. */
    static void waitQuiet(double maxSeconds) throws InterruptedException {
        long end = System.nanoTime() + (long) (maxSeconds * 1e9);
        double busy = Double.NaN;
        while (true) {
            CpuSample a = CpuSample.now();
            Thread.sleep(1000);
            busy = CpuSample.otherCores(a, CpuSample.now());
            if (!(busy >= 0.25) || System.nanoTime() > end) {  // NaN (no /proc) counts as quiet
                break;
            }
        }
        if (busy >= 0.25) {
            System.out.printf(Locale.ROOT, "machine still busy (%.2f cores used by others); going on%n", busy);
        }
    }

    /**
     * CPU time of the whole machine (busy + steal, from /proc/stat) and of this process and its
     * reaped children (the JMH forks, from /proc/self/stat), in clock ticks. Their difference over
     * an interval is what other processes (and the hypervisor) took.
     */
    record CpuSample(long nanos, long machineBusy, long self) {
        static CpuSample now() {
            long nanos = System.nanoTime();
            try {
                String cpu = Files.readAllLines(Path.of("/proc/stat")).get(0);
                String[] f = cpu.trim().split("\\s+");  // cpu user nice system idle iowait irq softirq steal ...
                long busy = 0;
                for (int i : new int[] {1, 2, 3, 6, 7, 8}) {
                    busy += i < f.length ? Long.parseLong(f[i]) : 0;
                }
                String st = Files.readString(Path.of("/proc/self/stat"));
                String[] t = st.substring(st.lastIndexOf(')') + 2).trim().split("\\s+");
                long self = Long.parseLong(t[11]) + Long.parseLong(t[12]) + Long.parseLong(t[13]) + Long.parseLong(t[14]);
                return new CpuSample(nanos, busy, self);
            } catch (IOException | RuntimeException e) {
                return new CpuSample(nanos, -1, -1);
            }
        }

        /** Cores' worth of CPU used by others between two samples (USER_HZ = 100 on Linux). */
        static double otherCores(CpuSample a, CpuSample b) {
            if (a.machineBusy < 0 || b.machineBusy < 0) {
                return Double.NaN;
            }
            double seconds = (b.nanos - a.nanos) / 1e9;
            double ticks = (b.machineBusy - a.machineBusy) - (b.self - a.self);
            return Math.max(0, ticks / 100.0 / seconds);
        }
    }

    /** One set of probe calls: one GB/s per call, the winning patterns, and the load average then. */
    record ProbeSet(String label, String time, String load, List<Double> gbps, Map<String, Integer> patterns) {
        double median() {
            return Nf4DequantReport.median(gbps);
        }
    }

    /** {@code calls} calls of the library probe over 512 MiB, 5 repetitions each, after one warm call. */
    static ProbeSet probe(String label, int calls) {
        String time = Instant.now().truncatedTo(ChronoUnit.SECONDS).toString();
        String load = loadAverage();
        try (Tensor buf = Tensor.allocate(DType.U8, Device.CPU, Nf4DequantBenchmark.PROBE_BYTES)) {
            buf.fillBytes(1);  // fault every page in before timing
            Qkern.probeReadBandwidth(buf, 1);
            List<Double> g = new ArrayList<>();
            Map<String, Integer> patterns = new LinkedHashMap<>();
            for (int i = 0; i < calls; i++) {
                Qkern.Bandwidth b = Qkern.probeReadBandwidth(buf, 5);
                g.add(b.gbps());
                patterns.merge(b.pattern(), 1, Integer::sum);
            }
            ProbeSet p = new ProbeSet(label, time, load, List.copyOf(g), patterns);
            System.out.printf(Locale.ROOT, "read probe %s: median %.2f GB/s (%s), load %s%n", label, p.median(),
                    mostFrequent(patterns), load);
            return p;
        }
    }

    static String mostFrequent(Map<String, Integer> counts) {
        return counts.entrySet().stream().max(Map.Entry.comparingByValue()).map(Map.Entry::getKey).orElse("");
    }

    static List<Double> concat(List<Double> a, List<Double> b) {
        List<Double> r = new ArrayList<>(a);
        r.addAll(b);
        return r;
    }

    /** A JMH result as a row: median seconds per call and the bytes it moves. */
    static Row row(RunResult r, double probeAdjacent, double otherCores) {
        String method = r.getParams().getBenchmark();
        method = method.substring(method.lastIndexOf('.') + 1);
        String shape = r.getParams().getParam("shape");
        long[] s = Nf4DequantBenchmark.parseShape(shape);
        long n = s[0] * s[1];
        var stats = r.getPrimaryResult().getStatistics();
        double toSeconds = secondsPer(r.getPrimaryResult().getScoreUnit());
        double sec = stats.getPercentile(50) * toSeconds;
        double min = stats.getMin() * toSeconds;
        double max = stats.getMax() * toSeconds;
        switch (method) {
            case "dequant" -> {
                DType d = DType.valueOf(r.getParams().getParam("dtype"));
                long blocks = (n + BLOCKSIZE - 1) / BLOCKSIZE;
                long bytes = (n + 1) / 2 + 4 * blocks + n * d.byteSize();
                return new Row("nf4_dequantize", shape, d.name(), d.byteSize(), n, bytes, sec, min, max, stats.getN(),
                        probeAdjacent, otherCores);
            }
            case "copyOutputBytes" -> {
                DType d = DType.valueOf(r.getParams().getParam("dtype"));
                long bytes = 2 * n * d.byteSize();  // read + written
                return new Row("copy_output_bytes_java", shape, d.name(), d.byteSize(), n, bytes, sec, min, max,
                        stats.getN(), probeAdjacent, otherCores);
            }
            case "widenBf16ToF32Java" -> {
                return new Row("bf16_to_f32_java", shape, "BF16->F32", 4, n, 6 * n, sec, min, max, stats.getN(),
                        probeAdjacent, otherCores);
            }
            default -> throw new IllegalStateException("unexpected benchmark " + method);
        }
    }

    static double median(List<Double> v) {
        double[] a = v.stream().mapToDouble(Double::doubleValue).sorted().toArray();
        if (a.length == 0) {
            return Double.NaN;
        }
        return a.length % 2 == 1 ? a[a.length / 2] : (a[a.length / 2 - 1] + a[a.length / 2]) / 2;
    }

    static double secondsPer(String unit) {
        return switch (unit) {
            case "s/op" -> 1;
            case "ms/op" -> 1e-3;
            case "us/op" -> 1e-6;
            case "ns/op" -> 1e-9;
            default -> throw new IllegalStateException("unexpected JMH unit " + unit);
        };
    }

    /** One measured kernel: median seconds per call over the JMH measurement iterations. */
    record Row(String kernel, String shape, String dtype, int outBytesPerElement, long elements, long bytes,
            double seconds, double secondsMin, double secondsMax, long iterations, double probeAdjacent,
            double otherCores) {
        double gbps() {
            return bytes / seconds / 1e9;
        }

        double gElementsPerS() {
            return elements / seconds / 1e9;
        }
    }

    // ---- JSON --------------------------------------------------------------------------------------------

    static Map.Entry<String, Object> entry(String k, Object v) {
        return Map.entry(k, v);
    }

    static String jsonLine(Row r, String backend, int threads, double probeGbps, String pattern,
            Map<String, Object> extra) {
        Map<String, Object> more = new LinkedHashMap<>();
        more.put("elements", r.elements);
        more.put("bytes", r.bytes);
        more.put("seconds_min", round(r.secondsMin));
        more.put("seconds_max", round(r.secondsMax));
        more.put("iterations", r.iterations);
        more.put("probe_gbps_adjacent", round(r.probeAdjacent));
        more.put("pct_of_probe_adjacent", round(100 * r.gbps() / r.probeAdjacent));
        more.put("other_processes_cores", round(r.otherCores));
        more.putAll(extra);
        return jsonObject(List.of(
                entry("kernel", r.kernel), entry("shape", r.shape), entry("dtype", r.dtype), entry("backend", backend),
                entry("threads", threads), entry("seconds", round(r.seconds)), entry("gbps", round(r.gbps())),
                entry("g_elements_per_s", round(r.gElementsPerS())),
                entry("pct_of_probe", round(100 * r.gbps() / probeGbps)), entry("probe_gbps", round(probeGbps)),
                entry("probe_pattern", pattern)), more);
    }

    static String jsonObject(List<Map.Entry<String, Object>> fields, Map<String, Object> more) {
        StringBuilder sb = new StringBuilder("{");
        List<Map.Entry<String, Object>> all = new ArrayList<>(fields);
        all.addAll(more.entrySet());
        for (int i = 0; i < all.size(); i++) {
            if (i > 0) {
                sb.append(", ");
            }
            sb.append(quote(all.get(i).getKey())).append(": ");
            Object v = all.get(i).getValue();
            if (v instanceof Number num) {
                double d = num.doubleValue();
                sb.append(Double.isFinite(d) ? num.toString() : "null");
            } else {
                sb.append(quote(String.valueOf(v)));
            }
        }
        return sb.append('}').toString();
    }

    static String quote(String s) {
        StringBuilder sb = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            switch (c) {
                case '"' -> sb.append("\\\"");
                case '\\' -> sb.append("\\\\");
                case '\n' -> sb.append("\\n");
                case '\r' -> sb.append("\\r");
                case '\t' -> sb.append("\\t");
                default -> {
                    if (c < 0x20) {
                        sb.append(String.format(Locale.ROOT, "\\u%04x", (int) c));
                    } else {
                        sb.append(c);
                    }
                }
            }
        }
        return sb.append('"').toString();
    }

    /** Six significant digits: enough for timings, readable in the file. */
    static double round(double v) {
        if (!Double.isFinite(v) || v == 0) {
            return v;
        }
        return new java.math.BigDecimal(v).round(new java.math.MathContext(6)).doubleValue();
    }

    // ---- Markdown ----------------------------------------------------------------------------------------

    static String markdown(Qkern.Info info, String started, boolean quick, String backend, int threads,
            List<ProbeSet> probes, List<Group> groups, double probeGbps, String pattern, List<Row> dequants,
            Map<String, Row> copies, Map<String, Row> widens) {
        StringBuilder m = new StringBuilder();
        m.append("# NF4 dequantize on the CPU\n\n");
        if (quick) {
            m.append("**--quick smoke run: short iterations, one shape. Not a result.**\n\n");
        }
        m.append("Produced by `io.qkern.bench.Nf4DequantReport` (JMH `Nf4DequantBenchmark`, AverageTime, ")
                .append(quick ? "1 warmup + 2 measurement" : "3 warmup + 5 measurement")
                .append(" iterations of 1 s, 1 fork per configuration), one group of forks per shape (the dequant ")
                .append("next to its baselines in time), with the read-bandwidth probe measured in the same process ")
                .append("before the first group and after every group.\n\n");
        m.append("| | |\n|---|---|\n");
        m.append("| machine | ").append(cpuModel()).append(", ").append(Runtime.getRuntime().availableProcessors())
                .append(" hardware threads").append(l3()).append(", ").append(memTotal()).append(" |\n");
        m.append("| qkern | ").append(info.libraryVersion()).append(", CPU path `").append(info.cpuPath())
                .append("`, features `").append(info.cpuFeatures()).append("`, ").append(threads)
                .append(" worker threads |\n");
        m.append("| JDK | ").append(System.getProperty("java.vm.vendor", "?")).append(' ')
                .append(Runtime.version()).append(" |\n");
        m.append("| commit | ").append(gitCommit()).append(" |\n");
        m.append("| date | ").append(started).append(" |\n\n");

        m.append("## Read-bandwidth probe (the yardstick)\n\n");
        List<Double> all = new ArrayList<>();
        probes.forEach(p -> all.addAll(p.gbps));
        m.append(String.format(Locale.ROOT,
                "`Qkern.probeReadBandwidth` over a 512 MiB buffer (16x the L3), 5 repetitions per call, best of "
                        + "several read patterns (1 stream x 8 accumulators, 4 and 8 interleaved streams) on all %d "
                        + "worker threads. **Probe used below: %.2f GB/s** = median of all %d calls (range %.2f-%.2f); "
                        + "most frequent best pattern: %s.%n%n",
                threads, probeGbps, all.size(), all.stream().mapToDouble(Double::doubleValue).min().orElse(Double.NaN),
                all.stream().mapToDouble(Double::doubleValue).max().orElse(Double.NaN), pattern));
        m.append("| probe set | time (UTC) | load average 1/5/15 min | calls | median GB/s | min-max GB/s |\n");
        m.append("|---|---|---|---:|---:|---|\n");
        for (ProbeSet p : probes) {
            m.append(String.format(Locale.ROOT, "| %s | %s | %s | %d | %.2f | %.2f-%.2f |%n", p.label, p.time, p.load,
                    p.gbps.size(), p.median(), p.gbps.stream().mapToDouble(Double::doubleValue).min().orElse(Double.NaN),
                    p.gbps.stream().mapToDouble(Double::doubleValue).max().orElse(Double.NaN)));
        }
        m.append("\n");

        m.append("CPU used by other processes while each shape's forks ran (cores, averaged; from /proc/stat minus ")
                .append("this process and its forks; a group above ").append(CONTENDED_CORES)
                .append(" cores is run again once and the quieter attempt kept):\n\n");
        m.append("| shape group | other processes (kept attempt) | all attempts |\n|---|---:|---|\n");
        for (Group g : groups) {
            StringBuilder at = new StringBuilder();
            for (double d : g.attempts) {
                at.append(at.isEmpty() ? "" : ", ").append(String.format(Locale.ROOT, "%.2f", d));
            }
            m.append(String.format(Locale.ROOT, "| %s | %.2f | %s |%n", g.shape, g.otherCores, at));
        }
        m.append("\n");

        m.append("## NF4 -> dense (blocksize ").append(BLOCKSIZE).append(", backend `").append(backend)
                .append("`)\n\n");
        m.append("| shape | out | ms (median) | G elem/s | GB/s | % of read probe (run / adjacent) | % of copy GB/s "
                + "| copy time / dequant time | Java BF16->F32 time / dequant time |\n");
        m.append("|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
        for (Row d : dequants) {
            Row c = copies.get(d.shape + "|" + d.outBytesPerElement);
            Row w = d.dtype.equals("F32") ? widens.get(d.shape) : null;
            m.append(String.format(Locale.ROOT, "| %s | %s | %.2f | %.2f | %.1f | %.0f%% / %.0f%% | %s | %s | %s |%n",
                    d.shape, d.dtype, d.seconds * 1e3, d.gElementsPerS(), d.gbps(), 100 * d.gbps() / probeGbps,
                    100 * d.gbps() / d.probeAdjacent,
                    c == null ? "-" : String.format(Locale.ROOT, "%.0f%%", 100 * d.gbps() / c.gbps()),
                    c == null ? "-" : String.format(Locale.ROOT, "%.2fx", c.seconds / d.seconds),
                    w == null ? "-" : String.format(Locale.ROOT, "%.2fx", w.seconds / d.seconds)));
        }
        m.append("\n## Same-run baselines (Java/FFM, split over all cores)\n\n");
        m.append("| baseline | shape | bytes per element | ms (median) | G elem/s | GB/s | % of read probe |\n");
        m.append("|---|---|---|---:|---:|---:|---:|\n");
        for (Row c : copies.values()) {
            m.append(String.format(Locale.ROOT, "| copy of the output's bytes (`MemorySegment.copy`) | %s | %d read + %d "
                    + "written (%s-sized) | %.2f | %.2f | %.1f | %.0f%% |%n", c.shape, c.outBytesPerElement,
                    c.outBytesPerElement, c.dtype, c.seconds * 1e3, c.gElementsPerS(), c.gbps(),
                    100 * c.gbps() / probeGbps));
        }
        for (Row w : widens.values()) {
            m.append(String.format(Locale.ROOT, "| dense BF16 -> F32 widening in Java | %s | 2 read + 4 written "
                    + "| %.2f | %.2f | %.1f | %.0f%% |%n", w.shape, w.seconds * 1e3, w.gElementsPerS(), w.gbps(),
                    100 * w.gbps() / probeGbps));
        }
        m.append("""

                ## How the numbers are computed

                - **ms**: median over the JMH measurement iterations of the mean time per call (each iteration is the
                  mean of as many calls as fit in 1 s). Min/max per iteration are in the JSON (`seconds_min`,
                  `seconds_max`).
                - **G elem/s**: weights dequantized per second (`rows * cols / seconds / 1e9`).
                - **GB/s** counts every byte the kernel must move, read + written: packed NF4 codes (`n/2` bytes) +
                  float32 absmax (`4 * n/64` bytes) read, `n * sizeof(out)` bytes written; divided by the median
                  seconds and 1e9. Per element that is 4.5625 bytes for F32 out, 2.5625 for BF16/F16 out.
                - **% of read probe** = GB/s / probe GB/s. "run": the run-wide probe (median of every call);
                  "adjacent": the median of the two probe sets taken just before and just after this shape's group.
                  The probe is a *read-only* probe; dequantize is mostly *writes* (78-88% of its bytes), and a write
                  costs more memory traffic than a read (a cache line is read for ownership before it is written,
                  unless the store is non-temporal) while a plain read stream is the fastest thing the memory
                  system does. So % of the read probe is a conservative yardstick — honest, never flattering, but
                  it cannot reach 100% for a write-heavy kernel. Read it together with the copy column.
                - **% of copy GB/s** = dequant GB/s / GB/s of a same-run copy of as many bytes as the dequant writes
                  (copy GB/s counts its bytes read + written too). The copy is plain Java/FFM `MemorySegment.copy`,
                  split over all cores in 4 KiB-aligned chunks, so it has the same write traffic as the dequant and
                  a heavier read side. Near or above 100% means the dequant runs at this machine's write bandwidth.
                - **copy time / dequant time**: how much faster the dequant is than merely copying a dense tensor of
                  the output's size (the weight held dense in the output dtype) — above 1x the NF4 weight is
                  cheaper to materialize than a dense copy.
                - **Java BF16->F32 time / dequant time** (F32 rows only): "what you would do without qkern" — keep
                  the weight dense in BF16 and widen it to F32 in a plain Java loop over `MemorySegment`s (split over
                  all cores); above 1x qkern's NF4 -> F32 is faster.
                - The probe runs in this JVM; the JMH benchmarks run in forked JVMs of the same invocation, one
                  shape/dtype per fork, with the same native library and thread count. Outputs are allocated and
                  touched once in setup; random N(0,1) weights are quantized once per fork.
                - The machine may be shared (other builds running): absolute times are noisy, and on 2 cores a
                  kernel whose work is split over both threads waits for the slower half, so one busy core can
                  double a call's time. The probe table above shows the load; the ratios measured in the same run,
                  next to each other in time, are what count.
                """);
        if (dequants.stream().anyMatch(d -> d.shape.equals("4096x4096"))) {
            m.append("- 4096x4096 may be partly cache-resident: its BF16 output (32 MiB) plus codes and absmax\n"
                    + "  (9 MiB) are near the size of a large L3, so repeated calls can beat DRAM bandwidth there.\n");
        }
        return m.toString();
    }

    // ---- machine description -------------------------------------------------------------------------

    static String cpuModel() {
        try {
            for (String line : Files.readAllLines(Path.of("/proc/cpuinfo"))) {
                if (line.startsWith("model name")) {
                    String model = line.substring(line.indexOf(':') + 1).trim();
                    String family = field("cpu family");
                    String mdl = field("model\t");
                    return model + (family.isEmpty() ? "" : " (family " + family + ", model " + mdl + ")");
                }
            }
        } catch (IOException | RuntimeException e) {
            // fall through
        }
        return System.getProperty("os.arch", "unknown CPU");
    }

    private static String field(String prefix) throws IOException {
        for (String line : Files.readAllLines(Path.of("/proc/cpuinfo"))) {
            if (line.startsWith(prefix) && line.contains(":")) {
                return line.substring(line.indexOf(':') + 1).trim();
            }
        }
        return "";
    }

    static String l3() {
        try {
            for (int i = 0; i < 8; i++) {
                Path dir = Path.of("/sys/devices/system/cpu/cpu0/cache/index" + i);
                if (Files.isDirectory(dir) && Files.readString(dir.resolve("level")).trim().equals("3")) {
                    return ", L3 " + Files.readString(dir.resolve("size")).trim();
                }
            }
        } catch (IOException | RuntimeException e) {
            // fall through
        }
        return "";
    }

    static String memTotal() {
        try {
            for (String line : Files.readAllLines(Path.of("/proc/meminfo"))) {
                if (line.startsWith("MemTotal:")) {
                    long kb = Long.parseLong(line.replaceAll("[^0-9]", ""));
                    return String.format(Locale.ROOT, "%.0f GiB RAM", kb / 1048576.0);
                }
            }
        } catch (IOException | RuntimeException e) {
            // fall through
        }
        return "";
    }

    static String loadAverage() {
        try {
            String[] p = Files.readString(Path.of("/proc/loadavg")).trim().split("\\s+");
            return p[0] + " / " + p[1] + " / " + p[2];
        } catch (IOException | RuntimeException e) {
            return "unknown";
        }
    }

    /** {@code git rev-parse --short HEAD}, plus a note when tracked sources differ from it; "unknown" without git. */
    static String gitCommit() {
        String head = run("git", "rev-parse", "--short", "HEAD");
        if (head == null || head.isEmpty()) {
            return "unknown";
        }
        // read-only: --no-optional-locks keeps git from refreshing the index
        String dirty = run("git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no", "--",
                "native", "include", "cuda", "CMakeLists.txt", "java/src/main");
        return "`" + head + "`" + (dirty == null || dirty.isEmpty() ? "" : " (with uncommitted changes to library sources)");
    }

    private static String run(String... cmd) {
        try {
            Process p = new ProcessBuilder(cmd).redirectErrorStream(false).start();
            p.getOutputStream().close();
            byte[] out;
            try (InputStream in = p.getInputStream()) {
                out = in.readAllBytes();
            }
            if (!p.waitFor(10, TimeUnit.SECONDS) || p.exitValue() != 0) {
                p.destroy();
                return null;
            }
            return new String(out, StandardCharsets.UTF_8).trim();
        } catch (IOException | RuntimeException e) {
            return null;
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            return null;
        }
    }

    // ---- files -----------------------------------------------------------------------------------------

    /** Writes to a temp file beside {@code target} and renames it: a failure leaves the old file intact. */
    static void writeAtomically(Path target, String text) throws IOException {
        Path tmp = target.resolveSibling(target.getFileName() + ".tmp");
        Files.writeString(tmp, text, StandardCharsets.UTF_8);
        try {
            Files.move(tmp, target, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
        } catch (AtomicMoveNotSupportedException e) {
            Files.move(tmp, target, StandardCopyOption.REPLACE_EXISTING);
        }
    }

    private static String value(String[] args, int i, String flag) {
        if (i >= args.length) {
            throw new IllegalArgumentException(flag + " needs a value");
        }
        return args[i];
    }
}
