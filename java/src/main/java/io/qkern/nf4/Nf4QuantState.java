package io.qkern.nf4;

import io.qkern.DType;
import io.qkern.io.Json;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * The JSON bitsandbytes stores as {@code P.weight.quant_state.bitsandbytes__nf4}: the original
 * dtype and shape, the blocksize and, with double quantization, the nested parameters.
 * Written exactly as bitsandbytes writes it (Python {@code json.dumps}, its key order, no extra
 * keys: its loaders reject unknown ones — and so does {@link #parse}).
 */
public record Nf4QuantState(int blocksize, DType dtype, long[] shape, boolean doubleQuant, float nestedOffset) {
    private static final Set<String> PLAIN_KEYS = Set.of("quant_type", "blocksize", "dtype", "shape");
    private static final Set<String> NESTED_KEYS = Set.of("nested_blocksize", "nested_dtype", "nested_offset");

    public Nf4QuantState {
        Nf4Format.checkBlocksize(blocksize);
        if (dtype != DType.F32 && dtype != DType.F16 && dtype != DType.BF16) {
            throw new IllegalArgumentException("NF4 quant state dtype must be float32, float16 or bfloat16, got " + dtype);
        }
        shape = shape.clone();
        for (long d : shape) {
            if (d < 0) {
                throw new IllegalArgumentException("negative dimension in NF4 shape " + Arrays.toString(shape));
            }
        }
        if (doubleQuant && !Float.isFinite(nestedOffset)) {
            throw new IllegalArgumentException("nested_offset must be finite, got " + nestedOffset);
        }
    }

    @Override
    public long[] shape() {
        return shape.clone();
    }

    /** Element count of the original tensor. */
    public long numel() {
        long n = 1;
        for (long d : shape) {
            n = Math.multiplyExact(n, d);
        }
        return n;
    }

    /** The JSON text, byte for byte as bitsandbytes writes it. */
    public String toJson() {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("quant_type", "nf4");
        m.put("blocksize", (long) blocksize);
        m.put("dtype", dtype.torchName());
        List<Object> s = new ArrayList<>();
        for (long d : shape) {
            s.add(d);
        }
        m.put("shape", s);
        if (doubleQuant) {
            m.put("nested_blocksize", (long) Nf4Format.NESTED_BLOCKSIZE);
            m.put("nested_dtype", "float32");
            m.put("nested_offset", (double) nestedOffset);
        }
        return Json.writePython(m);
    }

    /** Parses and validates; every problem is an IllegalArgumentException naming it. */
    public static Nf4QuantState parse(String json) {
        Object root = Json.parse(json, 1 << 16);
        if (!(root instanceof Map<?, ?> m)) {
            throw new IllegalArgumentException("NF4 quant state is not a JSON object");
        }
        for (Object k : m.keySet()) {
            if (!PLAIN_KEYS.contains(k) && !NESTED_KEYS.contains(k)) {
                throw new IllegalArgumentException("NF4 quant state has an unknown key \"" + k + "\"");
            }
        }
        Object type = m.get("quant_type");
        if (!"nf4".equals(type)) {
            throw new IllegalArgumentException("quant_type is " + (type == null ? "missing" : "\"" + type + "\"")
                    + "; only \"nf4\" is supported");
        }
        long blocksize = integer(m, "blocksize");
        DType dtype = switch (string(m, "dtype")) {
            case "float32" -> DType.F32;
            case "float16" -> DType.F16;
            case "bfloat16" -> DType.BF16;
            default -> throw new IllegalArgumentException("NF4 quant state dtype \"" + m.get("dtype")
                    + "\" is not float32, float16 or bfloat16");
        };
        if (!(m.get("shape") instanceof List<?> list)) {
            throw new IllegalArgumentException("NF4 quant state shape is missing or not a list");
        }
        if (list.size() > 8) {
            throw new IllegalArgumentException("NF4 quant state shape has " + list.size() + " dimensions (max 8)");
        }
        long[] shape = new long[list.size()];
        for (int i = 0; i < shape.length; i++) {
            if (!(list.get(i) instanceof Long d) || d < 0) {
                throw new IllegalArgumentException("NF4 quant state shape entry " + list.get(i)
                        + " is not a non-negative integer");
            }
            shape[i] = d;
        }
        boolean nested = m.containsKey("nested_offset") || m.containsKey("nested_blocksize")
                || m.containsKey("nested_dtype");
        float offset = 0f;
        if (nested) {
            if (!NESTED_KEYS.stream().allMatch(m::containsKey)) {
                throw new IllegalArgumentException("NF4 quant state has only some of " + NESTED_KEYS);
            }
            if (integer(m, "nested_blocksize") != Nf4Format.NESTED_BLOCKSIZE) {
                throw new IllegalArgumentException("nested_blocksize " + m.get("nested_blocksize")
                        + " is not supported (bitsandbytes uses " + Nf4Format.NESTED_BLOCKSIZE + ")");
            }
            if (!"float32".equals(m.get("nested_dtype"))) {
                throw new IllegalArgumentException("nested_dtype \"" + m.get("nested_dtype") + "\" is not float32");
            }
            Object o = m.get("nested_offset");
            if (!(o instanceof Number num)) {
                throw new IllegalArgumentException("nested_offset is not a number: " + o);
            }
            offset = (float) num.doubleValue();
        }
        try {
            return new Nf4QuantState(Math.toIntExact(blocksize), dtype, shape, nested, offset);
        } catch (ArithmeticException e) {
            throw new IllegalArgumentException("invalid NF4 blocksize " + blocksize);
        }
    }

    private static long integer(Map<?, ?> m, String key) {
        if (!(m.get(key) instanceof Long v)) {
            throw new IllegalArgumentException("NF4 quant state " + key + " is missing or not an integer: " + m.get(key));
        }
        return v;
    }

    private static String string(Map<?, ?> m, String key) {
        if (!(m.get(key) instanceof String v)) {
            throw new IllegalArgumentException("NF4 quant state " + key + " is missing or not a string: " + m.get(key));
        }
        return v;
    }

    @Override
    public boolean equals(Object o) {
        return o instanceof Nf4QuantState q && q.blocksize == blocksize && q.dtype == dtype
                && Arrays.equals(q.shape, shape) && q.doubleQuant == doubleQuant
                && Float.floatToIntBits(q.nestedOffset) == Float.floatToIntBits(nestedOffset);
    }

    @Override
    public int hashCode() {
        return Arrays.hashCode(shape) * 31 + blocksize;
    }

    @Override
    public String toString() {
        return toJson();
    }
}
