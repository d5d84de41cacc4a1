package io.qkern.nf4;

import io.qkern.QkernException;
import java.util.Arrays;

/** NaN or Inf found in a tensor that must be finite; names the tensor and the element. */
public final class NonFiniteException extends QkernException {
    private static final long serialVersionUID = 1L;

    private final String tensorName;
    private final long flatIndex;
    private final long[] index;

    public NonFiniteException(String tensorName, long[] shape, long flatIndex, QkernException cause) {
        super(Status.NON_FINITE, "tensor \"" + tensorName + "\" has a non-finite value at element "
                + Arrays.toString(unravel(shape, flatIndex)) + " (flat index " + flatIndex + "): "
                + detail(cause.getMessage()), cause);
        this.tensorName = tensorName;
        this.flatIndex = flatIndex;
        this.index = unravel(shape, flatIndex);
    }

    public String tensorName() {
        return tensorName;
    }

    public long flatIndex() {
        return flatIndex;
    }

    /** The element's index in the tensor's shape. */
    public long[] index() {
        return index.clone();
    }

    private static String detail(String nativeMessage) {
        int i = nativeMessage.lastIndexOf(" is ");
        return i >= 0 ? nativeMessage.substring(i + 4) : nativeMessage;
    }

    static long[] unravel(long[] shape, long flat) {
        long[] idx = new long[shape.length];
        for (int d = shape.length - 1; d >= 0; d--) {
            long s = Math.max(shape[d], 1);
            idx[d] = flat % s;
            flat /= s;
        }
        return idx;
    }
}
