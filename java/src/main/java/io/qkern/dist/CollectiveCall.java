package io.qkern.dist;

import io.qkern.DType;
import io.qkern.Tensor;
import java.util.Arrays;
import java.util.List;
import java.util.Locale;

/**
 * What one rank asked a collective to do: checked locally before anything is issued, then compared
 * across ranks (every backend exchanges these, {@link #ENCODED_LONGS} longs per rank, before data
 * moves) so mismatched calls fail with a message naming the ranks instead of corrupting memory.
 */
record CollectiveCall(Op op, ReduceOp reduce, DType dtype, long[] shape, int rootOrPeer) {

    enum Op {
        ALL_REDUCE, ALL_GATHER, REDUCE_SCATTER, BROADCAST, BARRIER, SEND, RECV, SPLIT;

        String label() {
            return name().toLowerCase(Locale.ROOT).replace('_', '-');
        }
    }

    static final int MAX_DIMS = 8;
    static final int ENCODED_LONGS = 5 + MAX_DIMS;

    /** Reductions are defined for these element types (F16/BF16 sum in float, rounded once). */
    static final List<DType> REDUCIBLE = List.of(DType.F32, DType.F64, DType.F16, DType.BF16, DType.I32, DType.I64);

    static CollectiveCall barrier() {
        return new CollectiveCall(Op.BARRIER, null, null, new long[0], -1);
    }

    static CollectiveCall split(int color, int key) {
        return new CollectiveCall(Op.SPLIT, null, null, new long[] {color, key}, -1);
    }

    static CollectiveCall allReduce(Communicator c, Tensor send, Tensor recv, ReduceOp op) {
        String what = "allReduce";
        requireOp(what, op);
        checkTensor(c, what, "send", send);
        checkTensor(c, what, "recv", recv);
        checkWritable(c, what, "recv", recv);
        checkReducible(what, send.dtype(), op);
        sameDtype(what, send, recv);
        if (!Arrays.equals(send.shape(), recv.shape())) {
            throw invalid(c, what + ": recv shape " + Arrays.toString(recv.shape()) + " differs from send shape "
                    + Arrays.toString(send.shape()));
        }
        return new CollectiveCall(Op.ALL_REDUCE, op, send.dtype(), send.shape(), -1);
    }

    static CollectiveCall allGather(Communicator c, Tensor send, Tensor recv) {
        String what = "allGather";
        checkTensor(c, what, "send", send);
        checkTensor(c, what, "recv", recv);
        checkWritable(c, what, "recv", recv);
        sameDtype(what, send, recv);
        checkStacked(c, what, "recv", recv, "send", send);
        return new CollectiveCall(Op.ALL_GATHER, null, send.dtype(), send.shape(), -1);
    }

    static CollectiveCall reduceScatter(Communicator c, Tensor send, Tensor recv, ReduceOp op) {
        String what = "reduceScatter";
        requireOp(what, op);
        checkTensor(c, what, "send", send);
        checkTensor(c, what, "recv", recv);
        checkWritable(c, what, "recv", recv);
        checkReducible(what, send.dtype(), op);
        sameDtype(what, send, recv);
        checkStacked(c, what, "send", send, "recv", recv);
        return new CollectiveCall(Op.REDUCE_SCATTER, op, send.dtype(), recv.shape(), -1);
    }

    static CollectiveCall broadcast(Communicator c, Tensor buffer, int root) {
        String what = "broadcast";
        checkTensor(c, what, "buffer", buffer);
        checkRank(c, what, "root", root, true);
        if (root != c.rank()) {
            checkWritable(c, what, "buffer", buffer);
        }
        return new CollectiveCall(Op.BROADCAST, null, buffer.dtype(), buffer.shape(), root);
    }

    static CollectiveCall send(Communicator c, Tensor buffer, int peer) {
        checkTensor(c, "send", "buffer", buffer);
        checkRank(c, "send", "peer", peer, false);
        return new CollectiveCall(Op.SEND, null, buffer.dtype(), buffer.shape(), peer);
    }

    static CollectiveCall recv(Communicator c, Tensor buffer, int peer) {
        checkTensor(c, "recv", "buffer", buffer);
        checkRank(c, "recv", "peer", peer, false);
        checkWritable(c, "recv", "buffer", buffer);
        return new CollectiveCall(Op.RECV, null, buffer.dtype(), buffer.shape(), peer);
    }

    long numel() {
        long n = 1;
        for (long d : shape) {
            n *= d;
        }
        return n;
    }

    long bytes() {
        return dtype == null ? 0 : numel() * dtype.byteSize();
    }

    /** The fixed-size form exchanged between processes. */
    long[] encode() {
        long[] e = new long[ENCODED_LONGS];
        e[0] = op.ordinal();
        e[1] = reduce == null ? -1 : reduce.ordinal();
        e[2] = dtype == null ? -1 : dtype.ordinal();
        e[3] = rootOrPeer;
        e[4] = shape.length;
        System.arraycopy(shape, 0, e, 5, shape.length);
        return e;
    }

    static CollectiveCall decode(long[] e, int offset) {
        int ndim = (int) e[offset + 4];
        if (e[offset] < 0 || e[offset] >= Op.values().length || ndim < 0 || ndim > MAX_DIMS) {
            throw new CommunicatorException(CommunicatorException.Kind.MISMATCH,
                    "a rank sent an unreadable collective description (different qkern versions?)");
        }
        return new CollectiveCall(Op.values()[(int) e[offset]],
                e[offset + 1] < 0 ? null : ReduceOp.values()[(int) e[offset + 1]],
                e[offset + 2] < 0 ? null : DType.values()[(int) e[offset + 2]],
                Arrays.copyOfRange(e, offset + 5, offset + 5 + ndim), (int) e[offset + 3]);
    }

    /** Whether every rank's call agrees with {@code calls.get(0)}; SPLIT and SEND/RECV are compared elsewhere. */
    static void requireAgreement(String backend, List<CollectiveCall> calls) {
        CollectiveCall first = calls.get(0);
        for (int r = 1; r < calls.size(); r++) {
            CollectiveCall other = calls.get(r);
            if (!first.agreesWith(other)) {
                StringBuilder sb = new StringBuilder("mismatched collective across ranks (").append(backend)
                        .append("): ");
                for (int i = 0; i < calls.size(); i++) {
                    sb.append(i == 0 ? "" : "; ").append("rank ").append(i).append(' ')
                            .append(calls.get(i).describe());
                }
                throw new CommunicatorException(CommunicatorException.Kind.MISMATCH, sb.toString());
            }
        }
    }

    /** A sender's SEND and the receiver's RECV describe the same message. */
    static void requirePair(String backend, int sender, CollectiveCall send, int receiver, CollectiveCall recv) {
        if (send.dtype != recv.dtype || !Arrays.equals(send.shape, recv.shape)) {
            throw new CommunicatorException(CommunicatorException.Kind.MISMATCH, "mismatched send/recv (" + backend
                    + "): rank " + sender + " sends " + send.describe() + ", rank " + receiver + " receives "
                    + recv.describe());
        }
    }

    boolean agreesWith(CollectiveCall o) {
        if (op != o.op) {
            return false;
        }
        return switch (op) {
            case BARRIER, SPLIT -> true;
            default -> reduce == o.reduce && dtype == o.dtype && rootOrPeer == o.rootOrPeer
                    && Arrays.equals(shape, o.shape);
        };
    }

    String describe() {
        StringBuilder sb = new StringBuilder(op.label());
        if (op == Op.BARRIER || op == Op.SPLIT) {
            return sb.toString();
        }
        sb.append(' ').append(dtype).append(Arrays.toString(shape));
        if (reduce != null) {
            sb.append(' ').append(reduce);
        }
        if (op == Op.BROADCAST) {
            sb.append(" root ").append(rootOrPeer);
        } else if (op == Op.SEND || op == Op.RECV) {
            sb.append(op == Op.SEND ? " to " : " from ").append(rootOrPeer);
        }
        return sb.toString();
    }

    @Override
    public boolean equals(Object o) {
        return o instanceof CollectiveCall c && op == c.op && reduce == c.reduce && dtype == c.dtype
                && rootOrPeer == c.rootOrPeer && Arrays.equals(shape, c.shape);
    }

    @Override
    public int hashCode() {
        return Arrays.hashCode(shape) * 31 + op.hashCode();
    }

    @Override
    public String toString() {
        return describe();
    }

    // ---- local checks ---------------------------------------------------------------------------

    private static void requireOp(String what, ReduceOp op) {
        if (op == null) {
            throw new CommunicatorException(CommunicatorException.Kind.INVALID_ARGUMENT, what + ": op is null");
        }
    }

    private static void checkReducible(String what, DType dtype, ReduceOp op) {
        if (!REDUCIBLE.contains(dtype)) {
            throw new CommunicatorException(CommunicatorException.Kind.INVALID_ARGUMENT, what + ": cannot "
                    + op + "-reduce " + dtype + " tensors (supported: " + REDUCIBLE + ")");
        }
    }

    private static void checkTensor(Communicator c, String what, String name, Tensor t) {
        if (t == null) {
            throw invalid(c, what + ": " + name + " is null");
        }
        if (t.isClosed()) {
            throw invalid(c, what + ": " + name + " is closed");
        }
        if (!t.device().equals(c.device())) {
            throw invalid(c, what + ": " + name + " is on " + t.device() + " but this communicator's rank "
                    + c.rank() + " is on " + c.device());
        }
        if (t.rank() > MAX_DIMS) {
            throw invalid(c, what + ": " + name + " has " + t.rank() + " dimensions (at most " + MAX_DIMS + ")");
        }
    }

    private static void checkWritable(Communicator c, String what, String name, Tensor t) {
        if (t.isReadOnly()) {
            throw invalid(c, what + ": " + name + " is read-only");
        }
    }

    private static void sameDtype(String what, Tensor a, Tensor b) {
        if (a.dtype() != b.dtype()) {
            throw new CommunicatorException(CommunicatorException.Kind.INVALID_ARGUMENT, what + ": dtypes differ ("
                    + a.dtype() + " vs " + b.dtype() + ")");
        }
    }

    /** {@code big} is {@code size} copies of {@code small} stacked along dimension 0. */
    private static void checkStacked(Communicator c, String what, String bigName, Tensor big, String smallName,
            Tensor small) {
        long[] b = big.shape();
        long[] s = small.shape();
        boolean ok;
        if (s.length == 0 || b.length == 0) {
            ok = big.numel() == small.numel() * c.size();
        } else {
            ok = b.length == s.length && b[0] == s[0] * c.size()
                    && Arrays.equals(Arrays.copyOfRange(b, 1, b.length), Arrays.copyOfRange(s, 1, s.length));
        }
        if (!ok) {
            throw invalid(c, what + ": " + bigName + " shape " + Arrays.toString(b) + " must be " + smallName
                    + " shape " + Arrays.toString(s) + " with dimension 0 multiplied by " + c.size() + " ranks");
        }
    }

    private static void checkRank(Communicator c, String what, String name, int r, boolean selfAllowed) {
        if (r < 0 || r >= c.size()) {
            throw invalid(c, what + ": " + name + " " + r + " is out of range [0, " + c.size() + ")");
        }
        if (!selfAllowed && r == c.rank()) {
            throw invalid(c, what + ": " + name + " " + r + " is this rank itself");
        }
    }

    private static CommunicatorException invalid(Communicator c, String message) {
        return new CommunicatorException(CommunicatorException.Kind.INVALID_ARGUMENT, "rank " + c.rank() + ": "
                + message);
    }
}
