package io.qkern.cli;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Tensor;
import io.qkern.nf4.Nf4;
import io.qkern.nf4.Nf4Format;
import io.qkern.nf4.Nf4QuantState;
import io.qkern.nf4.Nf4Tensor;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/** Every op {@code qkern run} knows, registered by kernel family. */
final class Ops {
    private Ops() {}

    static List<Op> all() {
        return List.of(new Nf4Quantize(), new Nf4Dequantize(), new ApmmOps.Matmul(), new ApmmOps.Linear(),
                new TopkOps.Select(), new TopkOps.DgcStep(), new AttentionOps.PagedDecode(), new AttentionOps.Merge());
    }

    static Op find(String name) throws UsageException {
        for (Op op : all()) {
            if (op.name().equals(name)) {
                return op;
            }
        }
        throw new UsageException("unknown op \"" + name + "\"; `qkern run --list` shows them");
    }

    // ---- NF4 ----------------------------------------------------------------------------------------

    static final class Nf4Quantize implements Op {
        @Override
        public String name() {
            return "nf4.quantize";
        }

        @Override
        public String summary() {
            return "blockwise NF4 quantization (bitsandbytes layout)";
        }

        @Override
        public List<Slot> inputs() {
            return List.of(new Slot("x", "F32, F16 or BF16, any shape (flattened row-major)"));
        }

        @Override
        public List<Slot> outputs() {
            return List.of(new Slot("packed", "U8 [(n+1)/2], first element in the high nibble"),
                    new Slot("absmax", "F32 [blocks]; with double_quant: U8 [blocks] codes"),
                    new Slot("nested_absmax", "F32 [ceil(blocks/256)] (double_quant only)"),
                    new Slot("nested_quant_map", "F32 [256] (double_quant only)"),
                    new Slot("nested_offset", "F32 [1] (double_quant only)"));
        }

        @Override
        public List<Param> params() {
            return List.of(new Param("blocksize", "64", "power of two, 32..4096"),
                    new Param("double_quant", "false", "also quantize absmax to 8 bits"));
        }

        @Override
        public Map<String, Tensor> run(Map<String, Tensor> in, Params p, Device device) {
            Nf4.Options options = new Nf4.Options((int) checkedInt(p.integer("blocksize")), p.bool("double_quant"));
            Map<String, Tensor> out = new LinkedHashMap<>();
            Nf4Tensor q = Nf4.quantize("x", in.get("x"), options);
            out.put("packed", q.packed());
            if (!q.isDoubleQuantized()) {
                out.put("absmax", q.absmax());
            } else {
                out.put("absmax", q.doubleQuant().codes());
                out.put("nested_absmax", q.doubleQuant().nestedAbsmax());
                out.put("nested_quant_map", q.doubleQuant().nestedMap());
                out.put("nested_offset", Tensor.ofFloats(new float[] {q.doubleQuant().offset()}, 1));
            }
            return out;
        }
    }

    static final class Nf4Dequantize implements Op {
        @Override
        public String name() {
            return "nf4.dequantize";
        }

        @Override
        public String summary() {
            return "NF4 back to F32/F16/BF16: round(NF4[code] * absmax)";
        }

        @Override
        public List<Slot> inputs() {
            return List.of(new Slot("packed", "U8 [(n+1)/2]"),
                    new Slot("absmax", "F32 [blocks]; or U8 [blocks] codes with the three nested inputs"),
                    new Slot("nested_absmax", "F32 [ceil(blocks/256)] (double quantization only)", false),
                    new Slot("nested_quant_map", "F32 [256] (double quantization only)", false),
                    new Slot("nested_offset", "F32 [1] (double quantization only)", false));
        }

        @Override
        public List<Slot> outputs() {
            return List.of(new Slot("out", "dtype and shape as set"));
        }

        @Override
        public List<Param> params() {
            return List.of(new Param("shape", null, "the original shape, e.g. 4096,11008"),
                    new Param("blocksize", "64", "power of two, 32..4096"),
                    new Param("dtype", "f32", "f32, f16 or bf16"));
        }

        @Override
        public Map<String, Tensor> run(Map<String, Tensor> in, Params p, Device device) {
            int blocksize = Nf4Format.checkBlocksize(p.integer("blocksize"));
            DType dtype = DType.parse(p.string("dtype"));
            long[] shape = p.shape("shape");
            Tensor absmax = in.get("absmax");
            boolean dq = absmax.dtype() == DType.U8;
            Nf4Tensor.DoubleQuant parts = null;
            float offset = 0f;
            if (dq) {
                for (String name : List.of("nested_absmax", "nested_quant_map", "nested_offset")) {
                    if (!in.containsKey(name)) {
                        throw new IllegalArgumentException("nf4.dequantize: U8 absmax codes need input \"" + name + "\"");
                    }
                }
                float[] off = in.get("nested_offset").toFloatArray();
                if (off.length != 1) {
                    throw new IllegalArgumentException("nf4.dequantize: nested_offset must hold one value");
                }
                offset = off[0];
                parts = new Nf4Tensor.DoubleQuant(absmax, in.get("nested_absmax"), in.get("nested_quant_map"), offset);
            }
            Nf4QuantState state = new Nf4QuantState(blocksize, dtype, shape, dq, offset);
            // the inputs belong to the caller: dequantize without handing them to an owning Nf4Tensor
            Nf4Tensor q = Nf4Tensor.of(state, in.get("packed"), dq ? null : absmax, parts);
            return Map.of("out", Nf4.dequantize(q, dtype));
        }
    }

    static long checkedInt(long v) {
        if (v < Integer.MIN_VALUE || v > Integer.MAX_VALUE) {
            throw new IllegalArgumentException("value " + v + " is out of range");
        }
        return v;
    }
}
