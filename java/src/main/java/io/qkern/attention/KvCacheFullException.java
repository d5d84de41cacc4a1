package io.qkern.attention;

/** No KV block is free (or admission would eat into the watermark kept for running sequences). */
public final class KvCacheFullException extends IllegalStateException {
    private static final long serialVersionUID = 1L;

    public KvCacheFullException(String message) {
        super(message);
    }
}
