package io.qkern.dist;

/**
 * A collective that could not complete. {@link #kind()} says why; the message names the
 * collective, the ranks involved and, for timeouts, which ranks never arrived. After any
 * failure other than {@link Kind#INVALID_ARGUMENT} the communicator is aborted: every later call
 * fails at once with {@link Kind#ABORTED}, on every rank that can still be reached.
 */
public class CommunicatorException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    public enum Kind {
        /** Bad arguments on this rank (shape, dtype, peer out of range), detected before any data moved. */
        INVALID_ARGUMENT,
        /** Ranks called the same collective with different shapes, dtypes, roots or operations. */
        MISMATCH,
        /** Some ranks did not arrive within the communicator's timeout. */
        TIMEOUT,
        /** The communicator was aborted earlier (by a failure, an abort() or a rank that closed it). */
        ABORTED,
        /** The backend (MPI, NCCL) reported an error; the message carries its own error string. */
        BACKEND
    }

    private final Kind kind;

    public CommunicatorException(Kind kind, String message) {
        super(message);
        this.kind = kind;
    }

    public CommunicatorException(Kind kind, String message, Throwable cause) {
        super(message, cause);
        this.kind = kind;
    }

    public Kind kind() {
        return kind;
    }
}
