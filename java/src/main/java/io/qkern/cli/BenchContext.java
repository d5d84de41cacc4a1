package io.qkern.cli;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Qkern;
import io.qkern.Tensor;
import io.qkern.io.Json;
import java.io.PrintStream;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;

/**
 * What a {@link BenchSuite} measures with: a timer that reports the median of several samples,
 * and a read-bandwidth probe re-measured at most {@link #PROBE_MAX_AGE_NANOS} before every
 * reported row, so each row's {@code pct_of_probe} compares against this machine's bandwidth at
 * that moment (shared machines drift; an old probe would flatter or shame the kernel).
 *
 * <p>Rows go to the output as they are measured: an aligned table, or with {@code --json} one
 * JSON object per line with the fields {@code kernel, shape, dtype, backend, seconds, gbps,
 * pct_of_probe, probe_gbps} followed by the suite's extra fields.
 */
final class BenchContext implements AutoCloseable {
    static final long PROBE_MAX_AGE_NANOS = 15_000_000_000L;
    private static final long PROBE_BYTES = 256L << 20;

    private final PrintStream out;
    private final PrintStream err;
    private final boolean json;
    private final boolean quick;
    private final Device device;
    private Tensor probeBuffer;
    private double probeGbps = Double.NaN;
    private long probeAt;
    private double fmaPeakGflops = Double.NaN;
    private boolean headerPrinted;

    BenchContext(PrintStream out, PrintStream err, boolean json, boolean quick, Device device) {
        this.out = out;
        this.err = err;
        this.json = json;
        this.quick = quick;
        this.device = device;
    }

    /** A short run: fewer shapes and samples, for smoke tests (its numbers are not results). */
    boolean quick() {
        return quick;
    }

    Device device() {
        return device;
    }

    /** {@code cpu-avx2}, {@code cpu-avx512}, {@code cpu-scalar} or {@code cuda:N}. */
    String backend() {
        return device.kind() == Device.Kind.CPU ? "cpu-" + Qkern.cpuPath() : device.toString();
    }

    /** A progress note on stderr (never mixed into the JSON lines). */
    void note(String message) {
        err.println("qkern bench: " + message);
    }

    /**
     * The median seconds per call of {@code op}: warm-up calls, then samples of enough back-to-back
     * calls to last at least a few milliseconds each (timer resolution), 7 samples (3 quick).
     * A CUDA suite must synchronize inside {@code op}.
     */
    double seconds(Runnable op) {
        int repeats = warmUp(op);
        double[] samples = new double[quick ? 3 : 7];
        for (int s = 0; s < samples.length; s++) {
            samples[s] = sample(op, repeats);
        }
        Arrays.sort(samples);
        return samples[samples.length / 2];
    }

    /** Median seconds per call of two operations timed in alternation, and the median of their ratios. */
    record Paired(double firstSeconds, double secondSeconds, double medianRatio) {}

    /**
     * Times {@code first} and {@code second} as {@link #seconds} does, but in alternating samples
     * (first, second, second, first, ...), so that load from other processes on a shared machine
     * falls on both alike; {@code medianRatio} is the median over sample pairs of
     * second's time / first's time.
     */
    Paired secondsPaired(Runnable first, Runnable second) {
        int repeats = warmUp(() -> {
            first.run();
            second.run();
        });
        int pairs = quick ? 3 : 9;
        double[] a = new double[pairs];
        double[] b = new double[pairs];
        double[] ratio = new double[pairs];
        for (int s = 0; s < pairs; s++) {
            if (s % 2 == 0) {
                a[s] = sample(first, repeats);
                b[s] = sample(second, repeats);
            } else {
                b[s] = sample(second, repeats);
                a[s] = sample(first, repeats);
            }
            ratio[s] = b[s] / a[s];
        }
        Arrays.sort(a);
        Arrays.sort(b);
        Arrays.sort(ratio);
        return new Paired(a[pairs / 2], b[pairs / 2], ratio[pairs / 2]);
    }

    /**
     * Warm-up calls of {@code op} (at least 2, for 300 ms; 50 ms quick); returns how many
     * back-to-back calls make one sample last a few milliseconds (timer resolution).
     */
    private int warmUp(Runnable op) {
        long warmupUntil = System.nanoTime() + (quick ? 50_000_000L : 300_000_000L);
        int calls = 0;
        long t0 = System.nanoTime();
        do {
            op.run();
            calls++;
        } while (calls < 2 || System.nanoTime() < warmupUntil);
        double perCall = (System.nanoTime() - t0) / 1e9 / calls;
        double sampleSeconds = quick ? 0.005 : 0.05;
        return (int) Math.max(1, Math.min(1_000_000, Math.ceil(sampleSeconds / Math.max(perCall, 1e-9))));
    }

    /** Seconds per call of {@code repeats} back-to-back calls. */
    private static double sample(Runnable op, int repeats) {
        long start = System.nanoTime();
        for (int r = 0; r < repeats; r++) {
            op.run();
        }
        return (System.nanoTime() - start) / 1e9 / repeats;
    }

    /** The CPU's float32 FMA peak in GFLOP/s ({@link Qkern#probeFmaPeak}), measured once per process. */
    double fmaPeakGflops() {
        if (Double.isNaN(fmaPeakGflops)) {
            fmaPeakGflops = Qkern.probeFmaPeak(quick ? 2 : 5);
        }
        return fmaPeakGflops;
    }

    /** The read bandwidth measured no longer than 15 s ago, re-measuring if needed. */
    double probeGbps() {
        if (Double.isNaN(probeGbps) || System.nanoTime() - probeAt > PROBE_MAX_AGE_NANOS) {
            if (probeBuffer == null) {
                probeBuffer = Tensor.allocate(DType.U8, device, PROBE_BYTES);
                probeBuffer.fillBytes(1);
            }
            probeGbps = Qkern.probeReadBandwidth(probeBuffer, quick ? 2 : 5).gbps();
            probeAt = System.nanoTime();
        }
        return probeGbps;
    }

    /**
     * Reports one measurement. {@code bytes} is the traffic the kernel must move (what the suite
     * documents, e.g. the packed weights plus activations); {@code extra} holds suite-specific
     * fields, printed after the common ones in insertion order.
     */
    void emit(String kernel, String shape, String dtype, String backend, double seconds, double bytes,
            Map<String, Object> extra) {
        double probe = probeGbps();
        double gbps = bytes / seconds / 1e9;
        Map<String, Object> row = new LinkedHashMap<>();
        row.put("kernel", kernel);
        row.put("shape", shape);
        row.put("dtype", dtype);
        row.put("backend", backend);
        row.put("seconds", seconds);
        row.put("gbps", round(gbps));
        row.put("pct_of_probe", round(100 * gbps / probe));
        row.put("probe_gbps", round(probe));
        row.putAll(extra);
        if (json) {
            out.println(Json.writeCompact(row));
        } else {
            if (!headerPrinted) {
                out.printf(Locale.ROOT, "%-26s %-12s %-5s %-11s %11s %8s %7s %7s  %s%n", "kernel", "shape", "dtype",
                        "backend", "time", "GB/s", "%probe", "probe", "");
                headerPrinted = true;
            }
            List<String> more = new ArrayList<>();
            extra.forEach((k, v) -> more.add(k + "=" + (v instanceof Double d ? String.format(Locale.ROOT, "%.3g", d) : v)));
            out.printf(Locale.ROOT, "%-26s %-12s %-5s %-11s %11s %8.2f %6.1f%% %7.1f  %s%n", kernel, shape, dtype,
                    backend, time(seconds), gbps, 100 * gbps / probe, probe, String.join(" ", more));
        }
        out.flush();
    }

    private static double round(double v) {
        return Math.round(v * 1000.0) / 1000.0;
    }

    static String time(double seconds) {
        if (seconds >= 1) {
            return String.format(Locale.ROOT, "%.3f s", seconds);
        }
        if (seconds >= 1e-3) {
            return String.format(Locale.ROOT, "%.3f ms", seconds * 1e3);
        }
        return String.format(Locale.ROOT, "%.2f us", seconds * 1e6);
    }

    @Override
    public void close() {
        if (probeBuffer != null) {
            probeBuffer.close();
            probeBuffer = null;
        }
    }
}
