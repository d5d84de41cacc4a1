package io.qkern.dist.tp;

import io.qkern.Device;
import io.qkern.Tensor;
import io.qkern.dist.Communicator;
import io.qkern.dist.ReduceOp;
import java.lang.foreign.MemorySegment;
import java.util.Arrays;

/**
 * Data movement between a full [M, W] matrix and its column blocks: taking a rank's columns,
 * turning an all-gather's rank-stacked [tp*M, W/tp] result into [M, W], and summing the ranks'
 * partial results. Bytes are copied as they are (any dtype); device tensors go through the host
 * (the in-process backend is CPU only; a CUDA rank would want a strided device copy here).
 */
final class Layout {
    private Layout() {}

    /**
     * This rank's columns [c0, c1) of {@code full}, which must be [M, width]; {@code name} and
     * {@code what} name the argument in the error.
     */
    static Tensor rankColumns(Tensor full, String name, long width, String what, long c0, long c1) {
        if (full.rank() != 2 || full.shape()[1] != width) {
            throw new IllegalArgumentException(name + " has shape " + Arrays.toString(full.shape()) + ", expected [M, "
                    + width + "] (" + what + ")");
        }
        return columns(full, c0, c1);
    }

    /** {@code partial} summed over the ranks in place (one all-reduce); closed if that fails. */
    static Tensor sumOverRanks(Communicator comm, Tensor partial) {
        try {
            if (comm.size() > 1) {
                comm.allReduce(partial, ReduceOp.SUM);
            }
            return partial;
        } catch (RuntimeException e) {
            partial.close();
            throw e;
        }
    }

    /** t[:, c0:c1] as a new contiguous tensor on t's device. */
    static Tensor columns(Tensor t, long c0, long c1) {
        long[] s = t.shape();
        if (s.length != 2 || c0 < 0 || c0 > c1 || c1 > s[1]) {
            throw new IllegalArgumentException("cannot take columns [" + c0 + ", " + c1 + ") of a tensor of shape "
                    + Arrays.toString(s));
        }
        long rows = s[0], cols = s[1], es = t.dtype().byteSize();
        Tensor out = Tensor.allocate(t.dtype(), Device.CPU, rows, c1 - c0);
        try (Tensor h = onHost(t)) {
            MemorySegment src = h == null ? t.segment() : h.segment();
            for (long r = 0; r < rows; r++) {
                MemorySegment.copy(src, (r * cols + c0) * es, out.segment(), r * (c1 - c0) * es, (c1 - c0) * es);
            }
            return deliver(out, t.device());
        } catch (RuntimeException e) {
            out.close();
            throw e;
        }
    }

    /**
     * The [m, tp*w] matrix whose column block r is rows [r*m, (r+1)*m) of {@code stacked} [tp*m, w]
     * (what {@code Communicator.allGather} of [m, w] column blocks returns).
     */
    static Tensor unstackColumns(Tensor stacked, int tp, long m) {
        long[] s = stacked.shape();
        long w = s[1], es = stacked.dtype().byteSize();
        Tensor out = Tensor.allocate(stacked.dtype(), Device.CPU, m, tp * w);
        try (Tensor h = onHost(stacked)) {
            MemorySegment src = h == null ? stacked.segment() : h.segment();
            for (int r = 0; r < tp; r++) {
                for (long i = 0; i < m; i++) {
                    MemorySegment.copy(src, ((r * m) + i) * w * es, out.segment(), (i * tp * w + r * w) * es, w * es);
                }
            }
            return deliver(out, stacked.device());
        } catch (RuntimeException e) {
            out.close();
            throw e;
        }
    }

    /** {@code host} itself on the CPU; else a copy on {@code device}, closing {@code host}. */
    private static Tensor deliver(Tensor host, Device device) {
        if (device.isCpu()) {
            return host;
        }
        try (host) {
            return host.copyTo(device);
        }
    }

    /** A host copy of a device tensor, or null for a host tensor (read it directly). */
    private static Tensor onHost(Tensor t) {
        return t.device().isCpu() ? null : t.copyTo(Device.CPU);
    }
}
