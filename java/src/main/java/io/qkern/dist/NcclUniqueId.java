package io.qkern.dist;

import io.qkern.internal.NcclNative;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.StructLayout;
import java.lang.foreign.ValueLayout;
import java.util.Arrays;
import java.util.HexFormat;

/**
 * NCCL's {@code ncclUniqueId}: 128 opaque bytes that name one communicator. Rank 0 creates it
 * ({@link #create()}), every rank receives the same bytes (a {@link TcpStore}, an MPI broadcast),
 * and each passes it <em>by value</em> to {@code ncclCommInitRankConfig}. The bytes hold rank 0's
 * bootstrap address, so an id is good for one communicator, created shortly before use.
 */
public final class NcclUniqueId {
    /** {@code struct { char internal[128]; }}, the by-value argument layout of the init calls. */
    public static final StructLayout LAYOUT = NcclNative.UNIQUE_ID;

    public static final int BYTES = NcclNative.UNIQUE_ID_BYTES;

    private final byte[] bytes;

    private NcclUniqueId(byte[] bytes) {
        this.bytes = bytes;
    }

    /** A fresh id from {@code ncclGetUniqueId} (call on rank 0 only). */
    public static NcclUniqueId create() {
        return create(Nccl.library());
    }

    static NcclUniqueId create(NcclNative nccl) {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment id = arena.allocate(LAYOUT);
            int st;
            try {
                st = nccl.getUniqueId(id);
            } catch (UnsupportedOperationException e) {
                throw new CommunicatorException(CommunicatorException.Kind.BACKEND, e.getMessage());
            }
            if (st != NcclNative.SUCCESS) {
                throw new CommunicatorException(CommunicatorException.Kind.BACKEND, "ncclGetUniqueId failed: "
                        + nccl.errorString(st) + " (" + st + ")" + lastErrorSuffix(nccl.lastError(MemorySegment.NULL)));
            }
            return new NcclUniqueId(id.toArray(ValueLayout.JAVA_BYTE));
        }
    }

    /** An id received from rank 0 (exactly {@value #BYTES} bytes). */
    public static NcclUniqueId of(byte[] bytes) {
        if (bytes == null || bytes.length != BYTES) {
            throw new IllegalArgumentException("an ncclUniqueId has exactly " + BYTES + " bytes, got "
                    + (bytes == null ? "null" : bytes.length));
        }
        return new NcclUniqueId(bytes.clone());
    }

    /** A copy of the 128 bytes, to send to the other ranks. */
    public byte[] toBytes() {
        return bytes.clone();
    }

    /** The id laid out as {@link #LAYOUT} in {@code arena}, ready to pass by value. */
    MemorySegment toSegment(Arena arena) {
        MemorySegment s = arena.allocate(LAYOUT);
        MemorySegment.copy(bytes, 0, s, ValueLayout.JAVA_BYTE, 0, BYTES);
        return s;
    }

    static String lastErrorSuffix(String lastError) {
        return lastError == null || lastError.isBlank() ? "" : "; NCCL says: " + lastError.strip();
    }

    @Override
    public boolean equals(Object o) {
        return o instanceof NcclUniqueId other && Arrays.equals(bytes, other.bytes);
    }

    @Override
    public int hashCode() {
        return Arrays.hashCode(bytes);
    }

    /** The first bytes in hex (enough to tell ids apart in logs, not the whole secret-ish address). */
    @Override
    public String toString() {
        return "NcclUniqueId[" + HexFormat.of().formatHex(bytes, 0, 8) + "...]";
    }
}
