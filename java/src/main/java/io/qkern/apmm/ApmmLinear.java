package io.qkern.apmm;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Tensor;
import io.qkern.io.SafetensorsFile;
import java.io.IOException;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.Map;

/**
 * A linear layer y = x W^T with W quantized once to p-bit codes (per-row or per-group scales) and
 * x quantized per token to q-bit codes on every call, the product taken by {@link Apmm#matmul}.
 * Saved and loaded as one safetensors file (the packed weight plus the activation settings).
 */
public final class ApmmLinear implements AutoCloseable {
    /** The formats and bit widths of both operands and the weight scale group (0, 32, 64, 128). */
    public record Spec(ApmmFormat weightFormat, int weightBits, ApmmFormat activationFormat, int activationBits,
            long group) {
        public Spec {
            if (weightFormat == null || activationFormat == null) {
                throw new IllegalArgumentException("formats are required");
            }
            ApmmFormat.checkBits("weight bits", weightBits);
            ApmmFormat.checkBits("activation bits", activationBits);
            ApmmFormat.checkGroup("group", group);
        }
    }

    private final ApmmMatrix weight;
    private final Spec spec;
    private ApmmPath path = ApmmPath.AUTO;
    private volatile String lastPath = "";

    private ApmmLinear(ApmmMatrix weight, Spec spec) {
        this.weight = weight;
        this.spec = spec;
    }

    /** Quantizes {@code weight} (F32, F16 or BF16 [out_features, in_features]). */
    public static ApmmLinear quantize(Tensor weight, Spec spec) {
        return new ApmmLinear(Apmm.quantize(weight, spec.weightFormat(), spec.weightBits(), spec.group()), spec);
    }

    public Spec spec() {
        return spec;
    }

    public ApmmMatrix weight() {
        return weight;
    }

    public long inFeatures() {
        return weight.k();
    }

    public long outFeatures() {
        return weight.rows();
    }

    /** Forces a kernel family (default AUTO). */
    public ApmmLinear path(ApmmPath path) {
        this.path = path;
        return this;
    }

    /** The kernel the last {@link #forward} ran ("" before the first). */
    public String lastPath() {
        return lastPath;
    }

    /** y = x W^T as F32 [M, out_features] for x F32/F16/BF16 [M, in_features]. */
    public Tensor forward(Tensor x) {
        return forward(x, DType.F32);
    }

    public Tensor forward(Tensor x, DType out) {
        long[] s = x.shape();
        if (s.length != 2 || s[1] != inFeatures()) {
            throw new IllegalArgumentException("x has shape " + Arrays.toString(s) + ", expected [M, " + inFeatures()
                    + "]");
        }
        try (ApmmMatrix a = Apmm.quantizeActivations(x, spec.activationFormat(), spec.activationBits(),
                spec.group())) {
            Apmm.Product p = Apmm.matmul(a, weight, out, path);
            lastPath = p.path();
            return p.out();
        }
    }

    public void save(Path target) throws IOException {
        weight.save(target, Map.of("activation_format", spec.activationFormat().lowerName(), "activation_bits",
                Integer.toString(spec.activationBits())));
    }

    public static ApmmLinear load(Path source, Device device) throws IOException {
        try (SafetensorsFile f = SafetensorsFile.open(source)) {
            Map<String, String> meta = f.metadata();
            String af = meta.get("activation_format"), ab = meta.get("activation_bits");
            if (af == null || ab == null) {
                throw new IllegalArgumentException(source + " is not an APMM linear layer (no activation_format /"
                        + " activation_bits metadata)");
            }
            int bits;
            try {
                bits = Integer.parseInt(ab);
            } catch (NumberFormatException e) {
                throw new IllegalArgumentException(source + ": activation_bits \"" + ab + "\" is not an integer");
            }
            ApmmMatrix w = ApmmMatrix.read(f, device);
            try {
                if (!w.hasScales()) {
                    throw new IllegalArgumentException(source + ": the weight has no scales");
                }
                return new ApmmLinear(w, new Spec(w.format(), w.bits(), ApmmFormat.parse(af), bits, w.group()));
            } catch (RuntimeException e) {
                w.close();
                throw e;
            }
        }
    }

    @Override
    public void close() {
        weight.close();
    }
}
