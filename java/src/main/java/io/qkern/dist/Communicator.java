package io.qkern.dist;

import io.qkern.Device;
import io.qkern.Tensor;
import java.time.Duration;

/**
 * Collectives among the ranks of a group, on host or device tensors. Every rank of the group must
 * call the same collectives in the same order; a rank's call returns when its part is done (its
 * output is complete and its input may be reused).
 *
 * <p>Contract shared by every backend (in-process, MPI, NCCL):
 * <ul>
 *   <li>Tensors are contiguous and live on {@link #device()}; outputs are written completely or
 *       the call throws. {@code send == recv} (in place) is allowed where documented.</li>
 *   <li>Before data moves, the ranks' calls are compared (operation, dtype, shape, root, peer); a
 *       mismatch fails on every rank with {@link CommunicatorException.Kind#MISMATCH}, naming the
 *       ranks and their shapes.</li>
 *   <li>A rank that does not arrive within {@link #timeout()} makes the others fail with
 *       {@link CommunicatorException.Kind#TIMEOUT} naming the missing ranks — never a hang.</li>
 *   <li>Every rank gets bit-identical results. The in-process backend adds ranks in order
 *       0..size-1; MPI and NCCL reduce each element once (reduce-scatter, then all-gather) in
 *       their own order. F16/BF16 are summed in float and rounded once.</li>
 *   <li>Inside a {@link CollectiveGroup} calls are only issued; they complete when the group
 *       closes. That is how one thread drives several ranks (one GPU each) without deadlock.</li>
 *   <li>{@link #close()} is idempotent; a rank that closes while others still wait on it makes them
 *       fail with {@link CommunicatorException.Kind#ABORTED}.</li>
 * </ul>
 */
public interface Communicator extends AutoCloseable {

    /** This rank, 0..size-1. */
    int rank();

    /** Number of ranks in the group. */
    int size();

    /** Where this rank's tensors live. */
    Device device();

    /** "in-process", "mpi" or "nccl". */
    String backend();

    /** How long a collective waits for the other ranks before failing. */
    Duration timeout();

    /** {@code recv = op(send of every rank)}; same shape and dtype; {@code send == recv} allowed. */
    void allReduce(Tensor send, Tensor recv, ReduceOp op);

    /** In-place all-reduce. */
    default void allReduce(Tensor buffer, ReduceOp op) {
        allReduce(buffer, buffer, op);
    }

    /**
     * {@code recv} holds every rank's {@code send} in rank order: its first dimension is
     * {@code size} times that of {@code send}, the rest equal (or numel is size times for 1-D).
     */
    void allGather(Tensor send, Tensor recv);

    /** Rank r gets slice r (along the first dimension) of {@code op(send of every rank)}. */
    void reduceScatter(Tensor send, Tensor recv, ReduceOp op);

    /** Every rank's {@code buffer} becomes rank {@code root}'s. */
    void broadcast(Tensor buffer, int root);

    /** Returns once every rank has called it. */
    void barrier();

    /** Sends {@code buffer} to {@code peer}, which must {@link #recv} a tensor of the same dtype and shape. */
    void send(Tensor buffer, int peer);

    /** Receives from {@code peer} into {@code buffer}. */
    void recv(Tensor buffer, int peer);

    /**
     * Sub-groups: ranks calling with the same {@code color} form a new communicator, ordered by
     * {@code key} then by rank. A collective call on this communicator.
     */
    Communicator split(int color, int key);

    /** Fails every pending and future collective on every reachable rank; idempotent. */
    void abort(String reason);

    /** Releases this rank's resources; idempotent. */
    @Override
    void close();
}
