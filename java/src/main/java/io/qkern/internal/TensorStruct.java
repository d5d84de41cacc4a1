package io.qkern.internal;

import static java.lang.foreign.ValueLayout.ADDRESS;
import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;

import java.lang.foreign.Arena;
import java.lang.foreign.MemoryLayout;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.StructLayout;

/** The {@code qk_tensor} struct of include/qkern.h. */
public final class TensorStruct {
    public static final int MAX_DIMS = 8;

    public static final StructLayout LAYOUT = MemoryLayout.structLayout(
            ADDRESS.withName("data"),
            JAVA_LONG.withName("nbytes"),
            JAVA_INT.withName("dtype"),
            JAVA_INT.withName("device_kind"),
            JAVA_INT.withName("device_index"),
            JAVA_INT.withName("ndim"),
            MemoryLayout.sequenceLayout(MAX_DIMS, JAVA_LONG).withName("shape"),
            MemoryLayout.sequenceLayout(MAX_DIMS, JAVA_LONG).withName("strides"));

    private static final long SHAPE_OFFSET = LAYOUT.byteOffset(MemoryLayout.PathElement.groupElement("shape"));
    private static final long STRIDES_OFFSET = LAYOUT.byteOffset(MemoryLayout.PathElement.groupElement("strides"));

    private TensorStruct() {}

    /** Row-major strides in elements for {@code shape}. */
    public static long[] contiguousStrides(long[] shape) {
        long[] st = new long[shape.length];
        long s = 1;
        for (int i = shape.length - 1; i >= 0; i--) {
            st[i] = s;
            s *= Math.max(shape[i], 1);
        }
        return st;
    }

    /** Writes a descriptor into memory from {@code arena}. */
    public static MemorySegment write(Arena arena, long address, long nbytes, int dtype, int deviceKind,
            int deviceIndex, long[] shape, long[] strides) {
        if (shape.length > MAX_DIMS) {
            throw new IllegalArgumentException("at most " + MAX_DIMS + " dimensions, got " + shape.length);
        }
        MemorySegment s = arena.allocate(LAYOUT);
        s.set(ADDRESS, 0, MemorySegment.ofAddress(address));
        s.set(JAVA_LONG, 8, nbytes);
        s.set(JAVA_INT, 16, dtype);
        s.set(JAVA_INT, 20, deviceKind);
        s.set(JAVA_INT, 24, deviceIndex);
        s.set(JAVA_INT, 28, shape.length);
        for (int i = 0; i < shape.length; i++) {
            s.set(JAVA_LONG, SHAPE_OFFSET + 8L * i, shape[i]);
            s.set(JAVA_LONG, STRIDES_OFFSET + 8L * i, strides[i]);
        }
        return s;
    }
}
