package io.qkern.internal;

import io.qkern.DType;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;

/** Exact widening of F32 / F16 / BF16 memory to a float[] (little-endian, any alignment). */
public final class Floats {
    private Floats() {}

    public static float[] widen(MemorySegment s, DType dtype, int n) {
        float[] out = new float[n];
        switch (dtype) {
            case F32 -> MemorySegment.copy(s, ValueLayout.JAVA_FLOAT_UNALIGNED, 0, out, 0, n);
            case F16 -> {
                for (int i = 0; i < n; i++) {
                    out[i] = Float.float16ToFloat(s.get(ValueLayout.JAVA_SHORT_UNALIGNED, 2L * i));
                }
            }
            case BF16 -> {
                for (int i = 0; i < n; i++) {
                    out[i] = Float.intBitsToFloat((s.get(ValueLayout.JAVA_SHORT_UNALIGNED, 2L * i) & 0xffff) << 16);
                }
            }
            default -> throw new IllegalArgumentException("cannot read " + dtype + " as float (F32, F16 or BF16 only)");
        }
        return out;
    }
}
