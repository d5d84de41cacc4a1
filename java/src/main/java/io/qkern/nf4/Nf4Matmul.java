package io.qkern.nf4;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Tensor;
import io.qkern.internal.Nf4Native;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.Arrays;

/**
 * Matrix products with an NF4 weight W of shape [N, K] (out_features x in_features, the
 * bitsandbytes layout), dequantization fused into the kernel: no full-precision copy of W is
 * made.
 *
 * <ul>
 *   <li>{@link #forward}: y[M, N] = x[M, K] W^T (+ bias[N]);
 *   <li>{@link #inputGrad}: dx[M, K] = dy[M, N] W, the gradient a QLoRA backward pass sends
 *       through the frozen base weight.
 * </ul>
 *
 * Activations are F32, F16 or BF16; outputs F32 or the activations' dtype; W[n, k] means
 * fp32(NF4[code] * absmax), the value {@link Nf4#dequantize} gives as F32, and products and sums
 * are float32. Results equal a dense F32 matmul over the dequantized weights up to float32
 * summation order. The weight's {@code absmax} must be float32: {@link Nf4Linear} decodes a
 * double-quantized one once and keeps it; the methods here take it explicitly.
 */
public final class Nf4Matmul {
    private Nf4Matmul() {}

    /** y = x W^T (+ bias) into a new tensor of {@code outDtype} (F32 or x's dtype). */
    public static Tensor forward(Tensor x, Nf4Tensor weight, Tensor absmax, Tensor bias, DType outDtype) {
        long[] wShape = matrixShape(weight);
        checkMatrix(x, "x");
        Tensor y = Tensor.allocate(outDtype, x.device(), x.shape()[0], wShape[0]);
        try {
            forwardInto(x, weight, absmax, bias, y);
            return y;
        } catch (RuntimeException e) {
            y.close();
            throw e;
        }
    }

    /** y = x W^T (+ bias) into {@code y} [M, N]; {@code bias} may be null. */
    public static void forwardInto(Tensor x, Nf4Tensor weight, Tensor absmax, Tensor bias, Tensor y) {
        long[] w = matrixShape(weight);
        checkMatrix(x, "x");
        checkMatrix(y, "y");
        if (x.shape()[1] != w[1]) {
            throw new IllegalArgumentException("x has " + x.shape()[1] + " columns but the NF4 weight of shape "
                    + Arrays.toString(w) + " has in_features " + w[1]);
        }
        if (y.shape()[0] != x.shape()[0] || y.shape()[1] != w[0]) {
            throw new IllegalArgumentException("y has shape " + Arrays.toString(y.shape()) + " but x W^T has shape ["
                    + x.shape()[0] + ", " + w[0] + "]");
        }
        checkWritable(y, "y");
        Tensor absmaxF32 = checkAbsmax(weight, absmax);
        try (Arena arena = Arena.ofConfined(); Tensor.Lease a = x.acquire(); Tensor.Lease b = weight.packed().acquire();
                Tensor.Lease c = absmaxF32.acquire(); Tensor.Lease d = y.acquire();
                Tensor.Lease e = bias == null ? null : bias.acquire()) {
            Nf4Native.get().nf4Matmul(x.descriptor(arena), weight.packed().descriptor(arena),
                    absmaxF32.descriptor(arena), weight.blocksize(),
                    bias == null ? MemorySegment.NULL : bias.descriptor(arena), y.descriptor(arena), MemorySegment.NULL);
        }
    }

    /** dx = dy W into a new tensor of {@code outDtype} (F32 or dy's dtype). */
    public static Tensor inputGrad(Tensor dy, Nf4Tensor weight, Tensor absmax, DType outDtype) {
        long[] wShape = matrixShape(weight);
        checkMatrix(dy, "dy");
        Tensor dx = Tensor.allocate(outDtype, dy.device(), dy.shape()[0], wShape[1]);
        try {
            inputGradInto(dy, weight, absmax, dx);
            return dx;
        } catch (RuntimeException e) {
            dx.close();
            throw e;
        }
    }

    /** dx = dy W into {@code dx} [M, K]. */
    public static void inputGradInto(Tensor dy, Nf4Tensor weight, Tensor absmax, Tensor dx) {
        long[] w = matrixShape(weight);
        checkMatrix(dy, "dy");
        checkMatrix(dx, "dx");
        if (dy.shape()[1] != w[0]) {
            throw new IllegalArgumentException("dy has " + dy.shape()[1] + " columns but the NF4 weight of shape "
                    + Arrays.toString(w) + " has out_features " + w[0]);
        }
        if (dx.shape()[0] != dy.shape()[0] || dx.shape()[1] != w[1]) {
            throw new IllegalArgumentException("dx has shape " + Arrays.toString(dx.shape()) + " but dy W has shape ["
                    + dy.shape()[0] + ", " + w[1] + "]");
        }
        checkWritable(dx, "dx");
        Tensor absmaxF32 = checkAbsmax(weight, absmax);
        try (Arena arena = Arena.ofConfined(); Tensor.Lease a = dy.acquire(); Tensor.Lease b = weight.packed().acquire();
                Tensor.Lease c = absmaxF32.acquire(); Tensor.Lease d = dx.acquire()) {
            Nf4Native.get().nf4MatmulInputGrad(dy.descriptor(arena), weight.packed().descriptor(arena),
                    absmaxF32.descriptor(arena), weight.blocksize(), dx.descriptor(arena), MemorySegment.NULL);
        }
    }

    /**
     * Dense float32 y[M, N] = x[M, K] w[N, K]^T on the CPU: the baseline the NF4 matmul is
     * measured against (the same tile kernels without the decode step), also usable for small
     * dense weights such as LoRA adapters.
     */
    public static void denseF32Into(Tensor x, Tensor w, Tensor y) {
        checkWritable(y, "y");
        try (Arena arena = Arena.ofConfined(); Tensor.Lease a = x.acquire(); Tensor.Lease b = w.acquire();
                Tensor.Lease c = y.acquire()) {
            Nf4Native.get().matmulF32(x.descriptor(arena), w.descriptor(arena), y.descriptor(arena), MemorySegment.NULL);
        }
    }

    /**
     * The kernel these methods use for {@code m} activation rows on {@code device} with the current
     * CPU path, e.g. {@code cpu-avx2-gemv} (for shapes with K % 64 == 0 and blocksize >= 64; other
     * shapes use the tiled kernel).
     */
    public static String path(long m, Device device, boolean inputGrad) {
        return Nf4Native.get().nf4MatmulPath(m, device.kind().code(), inputGrad);
    }

    static long[] matrixShape(Nf4Tensor weight) {
        long[] s = weight.shape();
        if (s.length != 2) {
            throw new IllegalArgumentException("an NF4 matmul weight must be 2-D [out_features, in_features], got shape "
                    + Arrays.toString(s));
        }
        return s;
    }

    private static void checkMatrix(Tensor t, String what) {
        if (t.rank() != 2) {
            throw new IllegalArgumentException(what + " must be 2-D [rows, features], got shape "
                    + Arrays.toString(t.shape()));
        }
    }

    private static void checkWritable(Tensor t, String what) {
        if (t.isReadOnly()) {  // the kernel would write into read-only (possibly PROT_READ-mapped) memory
            throw new IllegalArgumentException(what + " " + t + " wraps read-only memory");
        }
    }

    private static Tensor checkAbsmax(Nf4Tensor weight, Tensor absmax) {
        Tensor a = absmax != null ? absmax : weight.absmax();
        if (a == null) {
            throw new IllegalArgumentException("the NF4 weight is double-quantized: pass its float32 absmax"
                    + " (Nf4.absmaxOf) or use Nf4Linear, which decodes it once");
        }
        return a;
    }
}
