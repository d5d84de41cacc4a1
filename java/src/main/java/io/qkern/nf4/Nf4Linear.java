package io.qkern.nf4;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Tensor;
import io.qkern.io.SafetensorsFile;
import io.qkern.io.TensorInfo;
import io.qkern.internal.Floats;
import java.io.IOException;
import java.util.Arrays;

/**
 * A linear layer with a frozen NF4 weight, as in QLoRA: {@link #forward} computes
 * y = x W^T + b and {@link #backwardInput} the gradient dL/dx = dL/dy W that backpropagation
 * sends on to earlier layers (and LoRA adapters). W is never dequantized as a whole; a
 * double-quantized absmax is decoded once, when the layer is made (N*K/blocksize floats).
 *
 * <p>Thread-safe: any number of threads may call forward / backward at once. {@link #close()}
 * is idempotent, and fails while a call is using the layer's tensors rather than freeing them
 * under it.
 */
public final class Nf4Linear implements AutoCloseable {
    private final Nf4Tensor weight;
    private final Tensor absmax;   // float32, owned unless it is the weight's own
    private final boolean ownsAbsmax;
    private final Tensor bias;     // float32 [N] or null; owned
    private final boolean ownsWeight;
    private final int outFeatures;
    private final int inFeatures;

    private Nf4Linear(Nf4Tensor weight, boolean ownsWeight, Tensor bias) {
        long[] s = Nf4Matmul.matrixShape(weight);
        if (s[0] > Integer.MAX_VALUE || s[1] > Integer.MAX_VALUE) {
            throw new IllegalArgumentException("NF4 weight shape " + Arrays.toString(s) + " is too large for a linear layer");
        }
        this.weight = weight;
        this.ownsWeight = ownsWeight;
        this.outFeatures = (int) s[0];
        this.inFeatures = (int) s[1];
        this.ownsAbsmax = weight.isDoubleQuantized();
        this.absmax = ownsAbsmax ? Nf4.absmaxOf(weight) : weight.absmax();
        this.bias = bias;
    }

    /**
     * A layer over an existing NF4 weight [out_features, in_features], which stays the caller's
     * (keep it open while the layer is used). {@code bias} (null, or [out_features] F32/F16/BF16 on
     * the weight's device) is copied to float32.
     */
    public static Nf4Linear of(Nf4Tensor weight, Tensor bias) {
        Tensor b = bias == null ? null : biasF32(bias, Nf4Matmul.matrixShape(weight)[0], weight.device());
        try {
            return new Nf4Linear(weight, false, b);
        } catch (RuntimeException e) {
            if (b != null) {
                b.close();
            }
            throw e;
        }
    }

    /**
     * Loads {@code prefix + ".weight"} (NF4, bitsandbytes layout, with or without double
     * quantization) and {@code prefix + ".bias"} when the file has it, e.g. prefix
     * {@code "model.layers.0.mlp.up_proj"}.
     */
    public static Nf4Linear read(SafetensorsFile file, String prefix, Device device) throws IOException {
        String name = prefix + ".weight";
        if (!Nf4Tensor.isNf4(file, name)) {
            throw new IllegalArgumentException(file.path() + " has no NF4 tensor \"" + name + "\""
                    + (file.contains(name) ? " (it is stored unquantized)" : ""));
        }
        Nf4Tensor w = Nf4Tensor.read(file, name, device);
        Tensor b = null;
        try {
            TensorInfo info = file.contains(prefix + ".bias") ? file.info(prefix + ".bias") : null;
            if (info != null) {
                if (info.numel() > Integer.MAX_VALUE) {
                    throw new IllegalArgumentException(prefix + ".bias has " + info.numel() + " elements");
                }
                float[] values = Floats.widen(file.data(info.name()), info.dtype(), (int) info.numel());
                try (Tensor host = Tensor.ofFloats(values, values.length)) {
                    b = biasF32(host, Nf4Matmul.matrixShape(w)[0], device);
                }
            }
            return new Nf4Linear(w, true, b);
        } catch (RuntimeException e) {
            if (b != null) {
                b.close();
            }
            w.close();
            throw e;
        }
    }

    private static Tensor biasF32(Tensor bias, long n, Device device) {
        if (bias.rank() != 1 || bias.shape()[0] != n) {
            throw new IllegalArgumentException("bias must have shape [" + n + "], got " + Arrays.toString(bias.shape()));
        }
        if (bias.dtype() != DType.F32 && bias.dtype() != DType.F16 && bias.dtype() != DType.BF16) {
            throw new IllegalArgumentException("bias must be F32, F16 or BF16, got " + bias.dtype());
        }
        float[] values = bias.toFloatArray();
        for (int i = 0; i < values.length; i++) {
            if (!Float.isFinite(values[i])) {
                throw new IllegalArgumentException("bias[" + i + "] is " + values[i]);
            }
        }
        try (Tensor host = Tensor.ofFloats(values, values.length)) {
            return host.copyTo(device);
        }
    }

    public int inFeatures() {
        return inFeatures;
    }

    public int outFeatures() {
        return outFeatures;
    }

    public Nf4Tensor weight() {
        return weight;
    }

    public Device device() {
        return weight.device();
    }

    /** y[M, N] = x[M, K] W^T + b, in x's dtype. */
    public Tensor forward(Tensor x) {
        return forward(x, x.dtype());
    }

    /** y[M, N] = x[M, K] W^T + b, as {@code outDtype} (F32 or x's dtype). */
    public Tensor forward(Tensor x, DType outDtype) {
        return Nf4Matmul.forward(x, weight, absmax, bias, outDtype);
    }

    public void forwardInto(Tensor x, Tensor y) {
        Nf4Matmul.forwardInto(x, weight, absmax, bias, y);
    }

    /** dx[M, K] = dy[M, N] W, in dy's dtype. */
    public Tensor backwardInput(Tensor dy) {
        return backwardInput(dy, dy.dtype());
    }

    /** dx[M, K] = dy[M, N] W, as {@code outDtype} (F32 or dy's dtype). */
    public Tensor backwardInput(Tensor dy, DType outDtype) {
        return Nf4Matmul.inputGrad(dy, weight, absmax, outDtype);
    }

    public void backwardInputInto(Tensor dy, Tensor dx) {
        Nf4Matmul.inputGradInto(dy, weight, absmax, dx);
    }

    /** Bytes of weight storage: packed codes, scales and bias as held on the device. */
    public long storageBytes() {
        return weight.storageBytes() + (ownsAbsmax ? absmax.byteSize() : 0) + (bias == null ? 0 : bias.byteSize());
    }

    @Override
    public synchronized void close() {
        if (ownsAbsmax) {
            absmax.close();
        }
        if (bias != null) {
            bias.close();
        }
        if (ownsWeight) {
            weight.close();
        }
    }

    @Override
    public String toString() {
        return "Nf4Linear[" + outFeatures + " x " + inFeatures + ", blocksize " + weight.blocksize()
                + (weight.isDoubleQuantized() ? ", double quant" : "") + (bias != null ? ", bias" : "") + ", "
                + device() + "]";
    }
}
