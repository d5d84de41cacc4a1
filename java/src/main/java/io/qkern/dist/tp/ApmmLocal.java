package io.qkern.dist.tp;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Tensor;
import io.qkern.apmm.Apmm;
import io.qkern.apmm.ApmmLinear;
import io.qkern.apmm.ApmmMatrix;
import io.qkern.apmm.ApmmPath;
import io.qkern.dist.Communicator;
import io.qkern.dist.ReduceOp;
import java.lang.foreign.MemorySegment;

/**
 * A rank's slice of an APMM weight. Activations are quantized per token on every call, as
 * {@link ApmmLinear} does. When the slice covers only part of K (row-parallel), the ranks agree on
 * each token's quantization range first, so that every rank quantizes its K slice of x exactly as
 * TP = 1 quantizes the whole row:
 * <ol>
 *   <li>each rank takes its rows' max and min (2M floats), and one all-reduce MAX over
 *       [max, -min] gives the whole row's;</li>
 *   <li>the APMM API derives the scale (and zero point) from the row it is given and takes none from
 *       the caller, so the rank quantizes [x_slice | row max | row min]: those two extra columns
 *       make the row's range the global one, hence the scale and the slice's codes equal TP = 1's
 *       bit for bit;</li>
 *   <li>the two extra columns are dropped by unpacking the codes and packing the first K/tp
 *       columns again (native kernels); the scales and zero points are kept.</li>
 * </ol>
 * That costs one small all-reduce (2M floats) and an unpack/pack of the M x K/tp activation codes
 * per call; the partial products then differ from TP = 1 only by the float32 rounding of each
 * rank's partial and of their sum.
 */
final class ApmmLocal implements LocalLinear {
    private final ApmmMatrix weight;
    private final ApmmLinear.Spec spec;
    private final Communicator agreeOver;  // null: the slice covers all of K, quantize locally

    ApmmLocal(ApmmMatrix weight, ApmmLinear.Spec spec, Communicator agreeOver) {
        this.weight = weight;
        this.spec = spec;
        this.agreeOver = agreeOver;
    }

    @Override
    public long outFeatures() {
        return weight.rows();
    }

    @Override
    public long inFeatures() {
        return weight.k();
    }

    @Override
    public Device device() {
        return weight.device();
    }

    @Override
    public Tensor forward(Tensor x) {
        long[] s = x.shape();
        if (s.length != 2 || s[1] != weight.k()) {
            throw new IllegalArgumentException("x has shape " + java.util.Arrays.toString(s) + ", expected [M, "
                    + weight.k() + "]");
        }
        try (ApmmMatrix a = agreeOver == null
                ? Apmm.quantizeActivations(x, spec.activationFormat(), spec.activationBits(), spec.group())
                : quantizeWithAgreedRange(x)) {
            return Apmm.matmul(a, weight, DType.F32, ApmmPath.AUTO).out();
        }
    }

    private ApmmMatrix quantizeWithAgreedRange(Tensor x) {
        long m = x.shape()[0], k = x.shape()[1];
        float[] values = x.toFloatArray();  // exact for F32/F16/BF16
        float[] range = new float[(int) (2 * m)];
        for (int i = 0; i < m; i++) {
            float max = Float.NEGATIVE_INFINITY, min = Float.POSITIVE_INFINITY;
            for (int j = 0; j < k; j++) {
                float v = values[(int) (i * k + j)];
                max = Math.max(max, v);
                min = Math.min(min, v);
            }
            range[i] = max;
            range[(int) (m + i)] = -min;
        }
        try (Tensor r = Tensor.ofFloats(range, 2 * m); Tensor rd = r.copyTo(agreeOver.device())) {
            agreeOver.allReduce(rd, ReduceOp.MAX);
            range = rd.toFloatArray();
        }
        // [x | global max | global min]: every value of the row lies between the two extra columns
        float[] aug = new float[(int) (m * (k + 2))];
        for (int i = 0; i < m; i++) {
            System.arraycopy(values, (int) (i * k), aug, (int) (i * (k + 2)), (int) k);
            aug[(int) (i * (k + 2) + k)] = range[i];
            aug[(int) (i * (k + 2) + k + 1)] = -range[(int) (m + i)];
        }
        try (Tensor augHost = Tensor.ofFloats(aug, m, k + 2); Tensor augDev = augHost.copyTo(x.device());
                ApmmMatrix quantized = Apmm.quantizeActivations(augDev, spec.activationFormat(), spec.activationBits(),
                        spec.group());
                Tensor codesAug = quantized.codes();
                Tensor codesHost = codesAug.copyTo(Device.CPU);
                Tensor codes = Tensor.allocate(DType.I32, Device.CPU, m, k)) {
            MemorySegment src = codesHost.segment();
            for (long i = 0; i < m; i++) {
                MemorySegment.copy(src, i * (k + 2) * 4, codes.segment(), i * k * 4, k * 4);
            }
            try (Tensor codesDev = codes.copyTo(x.device());
                    ApmmMatrix packed = Apmm.pack(codesDev, spec.activationFormat(), spec.activationBits(),
                            spec.group())) {
                Tensor planes = packed.planes().copyTo(x.device());
                Tensor sums = null, scales = null, zeros = null;
                try {
                    sums = packed.sums().copyTo(x.device());
                    scales = quantized.scales().copyTo(x.device());
                    zeros = quantized.zeroPoints() == null ? null : quantized.zeroPoints().copyTo(x.device());
                    return ApmmMatrix.of(spec.activationFormat(), spec.activationBits(), m, k, spec.group(), 0, planes,
                            sums, scales, zeros);
                } catch (RuntimeException e) {
                    for (Tensor t : new Tensor[] {planes, sums, scales, zeros}) {
                        if (t != null) {
                            t.close();
                        }
                    }
                    throw e;
                }
            }
        }
    }

    @Override
    public Tensor backwardInput(Tensor dy) {
        throw new UnsupportedOperationException("APMM layers are inference-only: no input gradient (the weight is"
                + " integer codes; use NF4 for QLoRA-style training)");
    }

    @Override
    public long storageBytes() {
        long b = weight.planes().byteSize() + weight.sums().byteSize() + weight.scales().byteSize();
        return b + (weight.zeroPoints() == null ? 0 : weight.zeroPoints().byteSize());
    }

    @Override
    public String describe() {
        return "APMM W" + spec.weightBits() + spec.weightFormat().lowerName() + " A" + spec.activationBits()
                + spec.activationFormat().lowerName() + " " + weight.rows() + " x " + weight.k()
                + (spec.group() == 0 ? "" : " group " + spec.group());
    }

    @Override
    public void close() {
        weight.close();
    }
}
