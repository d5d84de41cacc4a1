package io.qkern.dist.plan;

import java.util.List;
import java.util.Locale;

/**
 * What one accelerator computes and reads: {@code peakFlops} dense BF16 FLOP/s (no sparsity),
 * {@code memoryBandwidth} bytes/s from its memory, and {@code efficiency}, the fraction of peak
 * that large GEMMs reach in practice (the model divides by {@code peakFlops * efficiency}).
 *
 * <p>Presets (vendor datasheets; efficiency 0.7 is a typical large-GEMM fraction on these parts,
 * an assumption, not a measurement): {@link #H100_SXM} 989 TFLOP/s, 3.35 TB/s HBM3;
 * {@link #H200} 989 TFLOP/s, 4.8 TB/s HBM3e; {@link #A100_SXM} 312 TFLOP/s, 2.04 TB/s HBM2e (80 GB).
 * {@link #measured} builds a spec from rates measured on this machine (efficiency 1: the
 * measured rate is already an achieved one).
 */
public record GpuSpec(String name, double peakFlops, double memoryBandwidth, double efficiency, String source) {

    public static final GpuSpec H100_SXM = new GpuSpec("h100", 989e12, 3.35e12, 0.7,
            "H100 SXM datasheet: 989 TFLOP/s dense BF16, 3.35 TB/s HBM3");
    public static final GpuSpec H200 = new GpuSpec("h200", 989e12, 4.8e12, 0.7,
            "H200 SXM datasheet: 989 TFLOP/s dense BF16, 4.8 TB/s HBM3e");
    public static final GpuSpec A100_SXM = new GpuSpec("a100", 312e12, 2.039e12, 0.7,
            "A100 SXM 80GB datasheet: 312 TFLOP/s dense BF16, 2.04 TB/s HBM2e");

    /** The presets by name. */
    public static final List<GpuSpec> PRESETS = List.of(H100_SXM, H200, A100_SXM);

    public GpuSpec {
        if (name == null || name.isBlank()) {
            throw new IllegalArgumentException("a GPU spec needs a name");
        }
        if (!(peakFlops > 0) || !Double.isFinite(peakFlops)) {
            throw new IllegalArgumentException("gpu " + name + ": peakFlops must be finite and > 0, got " + peakFlops);
        }
        if (!(memoryBandwidth > 0) || !Double.isFinite(memoryBandwidth)) {
            throw new IllegalArgumentException("gpu " + name + ": memoryBandwidth must be finite and > 0, got "
                    + memoryBandwidth);
        }
        if (!(efficiency > 0 && efficiency <= 1)) {
            throw new IllegalArgumentException("gpu " + name + ": efficiency must be in (0, 1], got " + efficiency);
        }
        source = source == null ? "" : source;
    }

    /** A spec from rates measured on this machine. */
    public static GpuSpec measured(double flops, double bytesPerSecond, String source) {
        return new GpuSpec("measured", flops, bytesPerSecond, 1.0, source);
    }

    /** A preset by name: h100, h200, a100 (case-insensitive). */
    public static GpuSpec preset(String name) {
        String n = name.toLowerCase(Locale.ROOT);
        for (GpuSpec g : PRESETS) {
            if (g.name.equals(n)) {
                return g;
            }
        }
        throw new IllegalArgumentException("unknown gpu \"" + name + "\" (known: h100, h200, a100, measured)");
    }

    /** The same spec with another efficiency. */
    public GpuSpec withEfficiency(double e) {
        return new GpuSpec(name, peakFlops, memoryBandwidth, e, source);
    }

    /** FLOP/s a large GEMM reaches: peakFlops * efficiency. */
    public double achievedFlops() {
        return peakFlops * efficiency;
    }

    /**
     * The roofline time of a kernel doing {@code flops} while reading {@code bytes}:
     * max(flops / (peak x efficiency), bytes / memory bandwidth).
     */
    public double seconds(double flops, double bytes) {
        return Math.max(flops / achievedFlops(), bytes / memoryBandwidth);
    }

    /** E.g. {@code h100 (989.0 TFLOP/s x 0.70, 3350 GB/s)}; GFLOP/s below 1 TFLOP/s (a CPU). */
    public String describe() {
        String rate = peakFlops >= 1e12 ? String.format(Locale.ROOT, "%.1f TFLOP/s", peakFlops / 1e12)
                : String.format(Locale.ROOT, "%.1f GFLOP/s", peakFlops / 1e9);
        return String.format(Locale.ROOT, "%s (%s x %.2f, %.0f GB/s)", name, rate, efficiency, memoryBandwidth / 1e9);
    }
}
