package io.qkern;

import java.util.Locale;

/** Element types. {@link #code()} is the value of {@code enum qk_dtype} in include/qkern.h. */
public enum DType {
    F32(0, 4, "F32"),
    F16(1, 2, "F16"),
    BF16(2, 2, "BF16"),
    F64(3, 8, "F64"),
    U8(4, 1, "U8"),
    I8(5, 1, "I8"),
    I16(6, 2, "I16"),
    I32(7, 4, "I32"),
    I64(8, 8, "I64"),
    BOOL(9, 1, "BOOL");

    private final int code;
    private final int byteSize;
    private final String safetensorsName;

    DType(int code, int byteSize, String safetensorsName) {
        this.code = code;
        this.byteSize = byteSize;
        this.safetensorsName = safetensorsName;
    }

    /** The ABI code ({@code QK_F32}, ...). */
    public int code() {
        return code;
    }

    public int byteSize() {
        return byteSize;
    }

    /** The dtype string safetensors headers use ("F32", "BF16", ...). */
    public String safetensorsName() {
        return safetensorsName;
    }

    public boolean isFloatingPoint() {
        return this == F32 || this == F16 || this == BF16 || this == F64;
    }

    /** Parses a safetensors dtype string; throws naming the value if unknown. */
    public static DType fromSafetensorsName(String name) {
        for (DType t : values()) {
            if (t.safetensorsName.equals(name)) {
                return t;
            }
        }
        throw new IllegalArgumentException("unknown safetensors dtype \"" + name + "\"");
    }

    /** Parses a user-facing name: f32, float32, f16, float16, half, bf16, bfloat16 (any case). */
    public static DType parse(String name) {
        String n = name.toLowerCase(Locale.ROOT);
        return switch (n) {
            case "f32", "float32", "float" -> F32;
            case "f16", "float16", "half" -> F16;
            case "bf16", "bfloat16" -> BF16;
            case "f64", "float64", "double" -> F64;
            case "u8", "uint8" -> U8;
            case "i8", "int8" -> I8;
            case "i16", "int16" -> I16;
            case "i32", "int32" -> I32;
            case "i64", "int64" -> I64;
            case "bool" -> BOOL;
            default -> throw new IllegalArgumentException("unknown dtype \"" + name
                    + "\" (expected one of f32, f16, bf16, f64, u8, i8, i16, i32, i64, bool)");
        };
    }

    /** The torch-style name bitsandbytes records in its quant state ("float32", "bfloat16", ...). */
    public String torchName() {
        return switch (this) {
            case F32 -> "float32";
            case F16 -> "float16";
            case BF16 -> "bfloat16";
            case F64 -> "float64";
            case U8 -> "uint8";
            case I8 -> "int8";
            case I16 -> "int16";
            case I32 -> "int32";
            case I64 -> "int64";
            case BOOL -> "bool";
        };
    }
}
