package io.qkern;

/**
 * A failure reported by the native library: the ABI function, its status code and the
 * native thread-local error text ({@code qk_last_error()}).
 */
public class QkernException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    /** Status codes of {@code enum qk_status_code} in include/qkern.h. */
    public enum Status {
        OK(0), INVALID_ARGUMENT(1), UNSUPPORTED(2), OUT_OF_MEMORY(3), BACKEND_UNAVAILABLE(4),
        DEVICE(5), NON_FINITE(6), INTERNAL(7), UNKNOWN(-1);

        private final int code;

        Status(int code) {
            this.code = code;
        }

        public int code() {
            return code;
        }

        public static Status of(int code) {
            for (Status s : values()) {
                if (s.code == code) {
                    return s;
                }
            }
            return UNKNOWN;
        }
    }

    private final Status status;
    private final String function;

    public QkernException(String function, int statusCode, String nativeMessage) {
        super(function + " failed (" + Status.of(statusCode) + "): "
                + (nativeMessage == null || nativeMessage.isEmpty() ? "no message" : nativeMessage));
        this.status = Status.of(statusCode);
        this.function = function;
    }

    /** For failures detected in Java before any native call (e.g. the library is missing). */
    public QkernException(Status status, String message) {
        super(message);
        this.status = status;
        this.function = null;
    }

    public QkernException(Status status, String message, Throwable cause) {
        super(message, cause);
        this.status = status;
        this.function = null;
    }

    public Status status() {
        return status;
    }

    /** The ABI function that failed, or null if the failure was detected in Java. */
    public String function() {
        return function;
    }
}
