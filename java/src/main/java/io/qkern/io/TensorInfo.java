package io.qkern.io;

import io.qkern.DType;
import java.util.Arrays;
import java.util.Objects;

/**
 * One tensor's entry in a safetensors header.
 *
 * <p>The record is consistent by construction: the shape's element count times the dtype's size equals
 * {@code end - begin}. The shape array is copied on the way in and on the way out, so instances are immutable.
 *
 * @param name  the tensor's name, never empty
 * @param dtype its element type
 * @param shape its dimensions (empty for a scalar), each non-negative
 * @param begin the offset of its first byte, relative to the start of the data section
 * @param end   the offset just past its last byte, relative to the start of the data section
 */
public record TensorInfo(String name, DType dtype, long[] shape, long begin, long end) {

    /**
     * Validates and copies the arguments.
     *
     * @throws IllegalArgumentException if the name is empty, a dimension or offset is negative, the offsets are
     *                                  reversed, or the byte range does not hold exactly the shape's elements
     * @throws ArithmeticException      if the shape's byte size overflows a long
     */
    public TensorInfo {
        Objects.requireNonNull(name, "name");
        Objects.requireNonNull(dtype, "dtype");
        shape = shape.clone();
        if (name.isEmpty()) {
            throw new IllegalArgumentException("tensor name is empty");
        }
        for (long d : shape) {
            if (d < 0) {
                throw new IllegalArgumentException("tensor \"" + name + "\": negative dimension in shape "
                        + Arrays.toString(shape));
            }
        }
        if (begin < 0 || begin > end) {
            throw new IllegalArgumentException("tensor \"" + name + "\": invalid byte range [" + begin + ", " + end
                    + "]");
        }
        long needed = Math.multiplyExact(elementCount(shape), dtype.byteSize());
        if (needed != end - begin) {
            throw new IllegalArgumentException("tensor \"" + name + "\": shape " + Arrays.toString(shape) + " of "
                    + dtype + " needs " + needed + " bytes but the range [" + begin + ", " + end + "] covers "
                    + (end - begin));
        }
    }

    /** A copy of the dimensions. */
    @Override
    public long[] shape() {
        return shape.clone();
    }

    /** The number of dimensions. */
    public int rank() {
        return shape.length;
    }

    /** The number of elements: the product of the dimensions, 1 for a scalar. */
    public long numel() {
        return elementCount(shape);
    }

    /** The number of bytes the tensor occupies, {@code end - begin}. */
    public long byteSize() {
        return end - begin;
    }

    /**
     * The product of {@code shape}, 1 for an empty shape.
     *
     * @throws ArithmeticException if the product of the non-zero dimensions overflows a long: such a shape is
     *                             rejected even when another dimension is zero, since strides computed from it
     *                             would overflow too (the Rust safetensors crate rejects it as well)
     */
    static long elementCount(long[] shape) {
        long n = 1;
        boolean empty = false;
        for (long d : shape) {
            if (d == 0) {
                empty = true;
            } else {
                n = Math.multiplyExact(n, d);
            }
        }
        return empty ? 0 : n;
    }

    @Override
    public boolean equals(Object o) {
        return o instanceof TensorInfo t && name.equals(t.name) && dtype == t.dtype && Arrays.equals(shape, t.shape)
                && begin == t.begin && end == t.end;
    }

    @Override
    public int hashCode() {
        return Objects.hash(name, dtype, Arrays.hashCode(shape), begin, end);
    }

    @Override
    public String toString() {
        return "TensorInfo[name=" + name + ", dtype=" + dtype + ", shape=" + Arrays.toString(shape) + ", begin="
                + begin + ", end=" + end + "]";
    }
}
