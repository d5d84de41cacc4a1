package io.qkern.apmm;

/** Which kernel family {@link Apmm#matmul} should run; {@link #AUTO} picks per (p, q, M) and device. */
public enum ApmmPath {
    AUTO(0),
    /** AND + popcount over bit planes (p*q binary products), recovered with 2^(i+j). */
    BITSERIAL(1),
    /** Planes unpacked to bytes, 8-bit integer dot products. */
    INT8(2);

    private final int code;

    ApmmPath(int code) {
        this.code = code;
    }

    /** The value of {@code enum qk_apmm_path_request}. */
    public int code() {
        return code;
    }
}
