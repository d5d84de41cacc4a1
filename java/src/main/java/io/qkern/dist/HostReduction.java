package io.qkern.dist;

import io.qkern.DType;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.List;

/**
 * Element-wise reduction of host buffers, in blocks through Java arrays (which the JIT
 * vectorizes). Sources are combined in list order, so floating sums are deterministic. Each block
 * is read completely before it is written, so a destination may alias a source (in-place
 * collectives). F16/BF16 are combined in float and rounded once, to nearest even. Integer sums
 * wrap (two's complement). MAX/MIN propagate NaN.
 */
final class HostReduction {
    private static final int BLOCK = 2048;

    private HostReduction() {
    }

    /**
     * For {@code count} elements: every {@code dsts[j]} at element {@code dstOffset + i} becomes
     * {@code op} over {@code srcs[s]} at element {@code srcOffset + i}.
     */
    static void reduce(DType dtype, ReduceOp op, List<MemorySegment> srcs, long srcOffset, List<MemorySegment> dsts,
            long dstOffset, long count) {
        switch (dtype) {
            case F32, F16, BF16 -> reduceFloat(dtype, op, srcs, srcOffset, dsts, dstOffset, count);
            case F64 -> reduceDouble(op, srcs, srcOffset, dsts, dstOffset, count);
            case I32 -> reduceInt(op, srcs, srcOffset, dsts, dstOffset, count);
            case I64 -> reduceLong(op, srcs, srcOffset, dsts, dstOffset, count);
            default -> throw new IllegalArgumentException("cannot reduce " + dtype);
        }
    }

    private static void reduceFloat(DType dtype, ReduceOp op, List<MemorySegment> srcs, long srcOffset,
            List<MemorySegment> dsts, long dstOffset, long count) {
        float[] acc = new float[BLOCK];
        float[] in = new float[BLOCK];
        for (long done = 0; done < count; done += BLOCK) {
            int n = (int) Math.min(BLOCK, count - done);
            readFloats(dtype, srcs.get(0), srcOffset + done, acc, n);
            for (int s = 1; s < srcs.size(); s++) {
                readFloats(dtype, srcs.get(s), srcOffset + done, in, n);
                switch (op) {
                    case SUM -> {
                        for (int i = 0; i < n; i++) {
                            acc[i] += in[i];
                        }
                    }
                    case MAX -> {
                        for (int i = 0; i < n; i++) {
                            acc[i] = Math.max(acc[i], in[i]);
                        }
                    }
                    case MIN -> {
                        for (int i = 0; i < n; i++) {
                            acc[i] = Math.min(acc[i], in[i]);
                        }
                    }
                }
            }
            for (MemorySegment d : dsts) {
                writeFloats(dtype, d, dstOffset + done, acc, n);
            }
        }
    }

    private static void readFloats(DType dtype, MemorySegment s, long at, float[] out, int n) {
        switch (dtype) {
            case F32 -> MemorySegment.copy(s, ValueLayout.JAVA_FLOAT_UNALIGNED, at * 4, out, 0, n);
            case F16 -> {
                for (int i = 0; i < n; i++) {
                    out[i] = Float.float16ToFloat(s.get(ValueLayout.JAVA_SHORT_UNALIGNED, (at + i) * 2));
                }
            }
            default -> {
                for (int i = 0; i < n; i++) {
                    out[i] = Float.intBitsToFloat((s.get(ValueLayout.JAVA_SHORT_UNALIGNED, (at + i) * 2) & 0xffff) << 16);
                }
            }
        }
    }

    private static void writeFloats(DType dtype, MemorySegment d, long at, float[] in, int n) {
        switch (dtype) {
            case F32 -> MemorySegment.copy(in, 0, d, ValueLayout.JAVA_FLOAT_UNALIGNED, at * 4, n);
            case F16 -> {
                for (int i = 0; i < n; i++) {
                    d.set(ValueLayout.JAVA_SHORT_UNALIGNED, (at + i) * 2, Float.floatToFloat16(in[i]));
                }
            }
            default -> {
                for (int i = 0; i < n; i++) {
                    d.set(ValueLayout.JAVA_SHORT_UNALIGNED, (at + i) * 2, toBfloat16(in[i]));
                }
            }
        }
    }

    /** Round to nearest even; NaN stays a (quiet) NaN. */
    static short toBfloat16(float f) {
        int bits = Float.floatToRawIntBits(f);
        if (Float.isNaN(f)) {
            return (short) ((bits >>> 16) | 0x40);
        }
        int rounded = bits + 0x7fff + ((bits >>> 16) & 1);
        return (short) (rounded >>> 16);
    }

    private static void reduceDouble(ReduceOp op, List<MemorySegment> srcs, long srcOffset, List<MemorySegment> dsts,
            long dstOffset, long count) {
        double[] acc = new double[BLOCK];
        double[] in = new double[BLOCK];
        for (long done = 0; done < count; done += BLOCK) {
            int n = (int) Math.min(BLOCK, count - done);
            MemorySegment.copy(srcs.get(0), ValueLayout.JAVA_DOUBLE_UNALIGNED, (srcOffset + done) * 8, acc, 0, n);
            for (int s = 1; s < srcs.size(); s++) {
                MemorySegment.copy(srcs.get(s), ValueLayout.JAVA_DOUBLE_UNALIGNED, (srcOffset + done) * 8, in, 0, n);
                for (int i = 0; i < n; i++) {
                    acc[i] = switch (op) {
                        case SUM -> acc[i] + in[i];
                        case MAX -> Math.max(acc[i], in[i]);
                        case MIN -> Math.min(acc[i], in[i]);
                    };
                }
            }
            for (MemorySegment d : dsts) {
                MemorySegment.copy(acc, 0, d, ValueLayout.JAVA_DOUBLE_UNALIGNED, (dstOffset + done) * 8, n);
            }
        }
    }

    private static void reduceInt(ReduceOp op, List<MemorySegment> srcs, long srcOffset, List<MemorySegment> dsts,
            long dstOffset, long count) {
        int[] acc = new int[BLOCK];
        int[] in = new int[BLOCK];
        for (long done = 0; done < count; done += BLOCK) {
            int n = (int) Math.min(BLOCK, count - done);
            MemorySegment.copy(srcs.get(0), ValueLayout.JAVA_INT_UNALIGNED, (srcOffset + done) * 4, acc, 0, n);
            for (int s = 1; s < srcs.size(); s++) {
                MemorySegment.copy(srcs.get(s), ValueLayout.JAVA_INT_UNALIGNED, (srcOffset + done) * 4, in, 0, n);
                for (int i = 0; i < n; i++) {
                    acc[i] = switch (op) {
                        case SUM -> acc[i] + in[i];
                        case MAX -> Math.max(acc[i], in[i]);
                        case MIN -> Math.min(acc[i], in[i]);
                    };
                }
            }
            for (MemorySegment d : dsts) {
                MemorySegment.copy(acc, 0, d, ValueLayout.JAVA_INT_UNALIGNED, (dstOffset + done) * 4, n);
            }
        }
    }

    private static void reduceLong(ReduceOp op, List<MemorySegment> srcs, long srcOffset, List<MemorySegment> dsts,
            long dstOffset, long count) {
        long[] acc = new long[BLOCK];
        long[] in = new long[BLOCK];
        for (long done = 0; done < count; done += BLOCK) {
            int n = (int) Math.min(BLOCK, count - done);
            MemorySegment.copy(srcs.get(0), ValueLayout.JAVA_LONG_UNALIGNED, (srcOffset + done) * 8, acc, 0, n);
            for (int s = 1; s < srcs.size(); s++) {
                MemorySegment.copy(srcs.get(s), ValueLayout.JAVA_LONG_UNALIGNED, (srcOffset + done) * 8, in, 0, n);
                for (int i = 0; i < n; i++) {
                    acc[i] = switch (op) {
                        case SUM -> acc[i] + in[i];
                        case MAX -> Math.max(acc[i], in[i]);
                        case MIN -> Math.min(acc[i], in[i]);
                    };
                }
            }
            for (MemorySegment d : dsts) {
                MemorySegment.copy(acc, 0, d, ValueLayout.JAVA_LONG_UNALIGNED, (dstOffset + done) * 8, n);
            }
        }
    }
}
