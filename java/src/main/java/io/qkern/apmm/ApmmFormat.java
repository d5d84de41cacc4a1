package io.qkern.apmm;

import java.util.Locale;

/**
 * How the integer codes of one APMM operand read (weights and activations choose independently).
 * Bit widths are 1..8.
 */
public enum ApmmFormat {
    /** The odd integers in [-(2^p-1), 2^p-1]: each bit stands for -1 or +1 (no zero, symmetric). */
    BIPOLAR(0),
    /** Two's complement integers in [-2^(p-1), 2^(p-1)-1]. */
    SIGNED(1),
    /** Integers in [0, 2^p-1], with an integer zero point when quantized from floats. */
    UNSIGNED(2);

    public static final int MIN_BITS = 1;
    public static final int MAX_BITS = 8;

    private final int code;

    ApmmFormat(int code) {
        this.code = code;
    }

    /** The value of {@code enum qk_apmm_format}. */
    public int code() {
        return code;
    }

    /** The smallest code of this format at {@code bits} bits. */
    public int min(int bits) {
        checkBits("bits", bits);
        return switch (this) {
            case BIPOLAR -> -((1 << bits) - 1);
            case SIGNED -> -(1 << (bits - 1));
            case UNSIGNED -> 0;
        };
    }

    /** The largest code of this format at {@code bits} bits. */
    public int max(int bits) {
        checkBits("bits", bits);
        return this == SIGNED ? (1 << (bits - 1)) - 1 : (1 << bits) - 1;
    }

    /** Whether {@code value} is a code of this format at {@code bits} bits. */
    public boolean isCode(int bits, long value) {
        return value >= min(bits) && value <= max(bits) && (this != BIPOLAR || (value & 1) != 0);
    }

    /** "bipolar", "signed" or "unsigned" (any case). */
    public static ApmmFormat parse(String name) {
        for (ApmmFormat f : values()) {
            if (f.name().equalsIgnoreCase(name.trim())) {
                return f;
            }
        }
        throw new IllegalArgumentException("format \"" + name + "\" is not one of bipolar, signed, unsigned");
    }

    public String lowerName() {
        return name().toLowerCase(Locale.ROOT);
    }

    static int checkBits(String what, int bits) {
        if (bits < MIN_BITS || bits > MAX_BITS) {
            throw new IllegalArgumentException(what + " " + bits + " is outside " + MIN_BITS + ".." + MAX_BITS);
        }
        return bits;
    }

    static long checkGroup(String what, long group) {
        if (group != 0 && group != 32 && group != 64 && group != 128) {
            throw new IllegalArgumentException(what + " " + group + " is invalid (0 for whole rows, or 32, 64, 128)");
        }
        return group;
    }
}
