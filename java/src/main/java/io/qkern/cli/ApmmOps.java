package io.qkern.cli;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Tensor;
import io.qkern.apmm.Apmm;
import io.qkern.apmm.ApmmFormat;
import io.qkern.apmm.ApmmLinear;
import io.qkern.apmm.ApmmMatrix;
import io.qkern.apmm.ApmmPath;
import java.util.Arrays;
import java.util.List;
import java.util.Locale;
import java.util.Map;

/** The APMM ops of {@code qkern run}: the exact integer matmul of codes, and the quantized linear layer. */
final class ApmmOps {
    private ApmmOps() {}

    static ApmmPath path(Params p) {
        String v = p.string("path").toUpperCase(Locale.ROOT);
        try {
            return ApmmPath.valueOf(v);
        } catch (IllegalArgumentException e) {
            throw new IllegalArgumentException("path \"" + p.string("path") + "\" is not one of auto, bitserial, int8");
        }
    }

    static int bits(Params p, String name) {
        long v = p.integer(name);
        if (v < ApmmFormat.MIN_BITS || v > ApmmFormat.MAX_BITS) {
            throw new IllegalArgumentException(name + " " + v + " is outside 1..8");
        }
        return (int) v;
    }

    static void requireMatrix(String name, Tensor t) {
        if (t.rank() != 2) {
            throw new IllegalArgumentException("input \"" + name + "\" must be 2-d, got shape "
                    + Arrays.toString(t.shape()));
        }
    }

    static final class Matmul implements Op {
        @Override
        public String name() {
            return "apmm.matmul";
        }

        @Override
        public String summary() {
            return "exact integer C = A W^T of q-bit by p-bit codes (bit-plane decomposition)";
        }

        @Override
        public List<Slot> inputs() {
            return List.of(new Slot("a", "I8 [M, K] codes (U8 or I16 for codes outside -128..127)"),
                    new Slot("w", "I8 [N, K] codes (U8 or I16 for codes outside -128..127); for bipolar the odd"
                            + " values themselves"));
        }

        @Override
        public List<Slot> outputs() {
            return List.of(new Slot("c", "I32 [M, N]"));
        }

        @Override
        public List<Param> params() {
            return List.of(new Param("a_bits", null, "activation bits, 1..8"),
                    new Param("w_bits", null, "weight bits, 1..8"),
                    new Param("format", "signed", "bipolar, signed or unsigned (both operands)"),
                    new Param("path", "auto", "auto, bitserial or int8"));
        }

        @Override
        public Map<String, Tensor> run(Map<String, Tensor> in, Params p, Device device) {
            Tensor a = in.get("a"), w = in.get("w");
            requireMatrix("a", a);
            requireMatrix("w", w);
            if (a.shape()[1] != w.shape()[1]) {
                throw new IllegalArgumentException("a has K = " + a.shape()[1] + " columns but w has "
                        + w.shape()[1]);
            }
            ApmmFormat format = ApmmFormat.parse(p.string("format"));
            int q = bits(p, "a_bits"), pb = bits(p, "w_bits");
            try (ApmmMatrix pa = Apmm.pack(a, format, q, 0); ApmmMatrix pw = Apmm.pack(w, format, pb, 0)) {
                return Map.of("c", Apmm.matmul(pa, pw, DType.I32, path(p)).out());
            }
        }
    }

    static final class Linear implements Op {
        @Override
        public String name() {
            return "apmm.linear";
        }

        @Override
        public String summary() {
            return "y = x W^T with W and x quantized to w_bits / a_bits (per-token activation scales)";
        }

        @Override
        public List<Slot> inputs() {
            return List.of(new Slot("x", "F32, F16 or BF16 [M, K]"), new Slot("w", "F32, F16 or BF16 [N, K]"));
        }

        @Override
        public List<Slot> outputs() {
            return List.of(new Slot("y", "F32 [M, N]"));
        }

        @Override
        public List<Param> params() {
            return List.of(new Param("w_bits", "4", "weight bits, 1..8"),
                    new Param("a_bits", "8", "activation bits, 1..8"),
                    new Param("format", "signed", "bipolar, signed or unsigned (both operands)"),
                    new Param("group", "0", "weight scale group along K: 0 (per row), 32, 64 or 128"),
                    new Param("path", "auto", "auto, bitserial or int8"));
        }

        @Override
        public Map<String, Tensor> run(Map<String, Tensor> in, Params p, Device device) {
            Tensor x = in.get("x"), w = in.get("w");
            requireMatrix("x", x);
            requireMatrix("w", w);
            ApmmFormat format = ApmmFormat.parse(p.string("format"));
            ApmmLinear.Spec spec = new ApmmLinear.Spec(format, bits(p, "w_bits"), format, bits(p, "a_bits"),
                    p.integer("group"));
            try (ApmmLinear lin = ApmmLinear.quantize(w, spec)) {
                return Map.of("y", lin.path(path(p)).forward(x));
            }
        }
    }
}
