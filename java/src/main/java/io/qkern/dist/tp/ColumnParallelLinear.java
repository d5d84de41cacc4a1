package io.qkern.dist.tp;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Tensor;
import io.qkern.dist.Communicator;
import io.qkern.internal.Floats;
import io.qkern.io.SafetensorsFile;
import io.qkern.io.SafetensorsFormatException;
import io.qkern.io.TensorInfo;
import java.lang.foreign.MemorySegment;
import java.util.Arrays;

/**
 * A linear layer y = x W^T + b whose weight W [N, K] is split along N (output features) over the
 * ranks of a tensor-parallel group: rank r holds rows [r*N/tp, (r+1)*N/tp) of W and of b, and
 * computes those columns of y from the whole input x [M, K] (Megatron-LM's column-parallel linear).
 *
 * <ul>
 *   <li>{@link Output#SHARDED}: {@link #forward} returns this rank's columns [M, N/tp], no
 *       communication — the input a following {@link RowParallelLinear} expects.</li>
 *   <li>{@link Output#GATHERED}: the ranks' columns are all-gathered into y [M, N] on every rank
 *       (exact: a gather moves bits, it adds nothing).</li>
 * </ul>
 * {@link #backwardInput} (NF4 only) computes dx = dy W: each rank's dy columns times its rows of W
 * give a partial [M, K], summed over the ranks by one all-reduce (Megatron's conjugate pair: the
 * identity forward / all-reduce backward "f"). Its dy is [M, N/tp] for SHARDED output and [M, N]
 * for GATHERED (the rank takes its columns).
 *
 * <p>Every rank must make the same calls in the same order (they are collectives). Outputs are
 * float32 on the communicator's device. Not thread-safe across calls of one rank's instance
 * (one rank = one thread); {@link #close()} is idempotent.
 */
public final class ColumnParallelLinear implements AutoCloseable {

    /** Whether the output stays split by columns or is all-gathered. */
    public enum Output { SHARDED, GATHERED }

    private final LocalLinear local;
    private final Communicator comm;
    private final Output output;
    private final long outFeatures;
    private boolean closed;

    ColumnParallelLinear(LocalLinear local, Communicator comm, Output output) {
        this.local = local;
        this.comm = comm;
        this.output = output;
        this.outFeatures = local.outFeatures() * comm.size();
    }

    /**
     * Loads this rank's rows of the NF4 weight {@code prefix + ".weight"} (and of
     * {@code prefix + ".bias"} if present) from {@code file} onto the communicator's device,
     * reading only those bytes (see {@link Nf4SliceReader}).
     */
    public static ColumnParallelLinear readNf4(SafetensorsFile file, String prefix, Communicator comm, Output output)
            throws SafetensorsFormatException {
        TpSplit split = new TpSplit(comm.size(), comm.rank());
        Nf4SliceReader.Slice w = Nf4SliceReader.readRowShard(file, prefix + ".weight", split, comm.device());
        try {
            long rows = w.weight().shape()[0];
            Tensor bias = readBias(file, prefix + ".bias", rows * split.tp(), rows * split.rank(), rows,
                    comm.device());
            return new ColumnParallelLinear(new LocalLinear.Nf4(w.weight(), bias), comm, output);
        } catch (RuntimeException | SafetensorsFormatException e) {
            w.close();
            throw e;
        }
    }

    /**
     * Loads this rank's rows of a packed APMM layer saved by {@link io.qkern.apmm.ApmmLinear#save}
     * (see {@link ApmmSliceReader}). A column-parallel APMM rank sees all of K, so it quantizes its
     * activations per token exactly as TP = 1 does.
     */
    public static ColumnParallelLinear readApmm(SafetensorsFile file, Communicator comm, Output output) {
        ApmmSliceReader.Slice s = ApmmSliceReader.readRowShard(file, new TpSplit(comm.size(), comm.rank()),
                comm.device());
        return new ColumnParallelLinear(new ApmmLocal(s.weight(), s.spec(), null), comm, output);
    }

    /** The layer's N (all ranks). */
    public long outFeatures() {
        return outFeatures;
    }

    /** This rank's share of N. */
    public long localOutFeatures() {
        return local.outFeatures();
    }

    /** The first output feature this rank computes. */
    public long outBegin() {
        return local.outFeatures() * comm.rank();
    }

    public long inFeatures() {
        return local.inFeatures();
    }

    public Output output() {
        return output;
    }

    public Communicator communicator() {
        return comm;
    }

    /** Bytes of weight storage on this rank. */
    public long storageBytes() {
        return local.storageBytes();
    }

    /** y = x W^T + b for x [M, K] (F32, or F16/BF16 for NF4): [M, N/tp] (SHARDED) or [M, N] (GATHERED). */
    public Tensor forward(Tensor x) {
        Tensor mine = local.forward(x);
        if (output == Output.SHARDED || comm.size() == 1) {
            return mine;
        }
        try (mine) {
            return gatherColumns(comm, mine);
        }
    }

    /** dx [M, K] = dy W (NF4 only), summed over the ranks by one all-reduce; dy as described above. */
    public Tensor backwardInput(Tensor dy) {
        Tensor dyLocal = output == Output.GATHERED && comm.size() > 1
                ? Layout.rankColumns(dy, "dy", outFeatures, "the gathered output's gradient", outBegin(),
                        outBegin() + local.outFeatures())
                : null;
        try {
            return Layout.sumOverRanks(comm, local.backwardInput(dyLocal != null ? dyLocal : dy));
        } finally {
            if (dyLocal != null) {
                dyLocal.close();
            }
        }
    }

    /** [M, w] column blocks of every rank -> [M, tp*w] on every rank. */
    static Tensor gatherColumns(Communicator comm, Tensor mine) {
        long m = mine.shape()[0], w = mine.shape()[1];
        try (Tensor stacked = Tensor.allocate(mine.dtype(), mine.device(), comm.size() * m, w)) {
            comm.allGather(mine, stacked);
            return Layout.unstackColumns(stacked, comm.size(), m);
        }
    }

    /**
     * Elements [begin, begin+count) of a bias of {@code total} F32/F16/BF16 elements as float32 on
     * {@code device} (only those bytes are read), or null if the file has no such tensor.
     */
    static Tensor readBias(SafetensorsFile file, String name, long total, long begin, long count, Device device)
            throws SafetensorsFormatException {
        if (!file.contains(name)) {
            return null;
        }
        TensorInfo info = file.info(name);
        if (info.rank() != 1 || (info.dtype() != DType.F32 && info.dtype() != DType.F16 && info.dtype() != DType.BF16)
                || info.numel() != total) {
            throw new SafetensorsFormatException(file.path(), name, "a bias must be a 1-D F32/F16/BF16 tensor of "
                    + total + " elements, is " + info.dtype() + " " + Arrays.toString(info.shape()));
        }
        int es = info.dtype().byteSize();
        MemorySegment bytes = file.data(name).asSlice(begin * es, count * es);
        float[] values = Floats.widen(bytes, info.dtype(), (int) count);
        for (int i = 0; i < values.length; i++) {
            if (!Float.isFinite(values[i])) {
                throw new SafetensorsFormatException(file.path(), name, "bias[" + (begin + i) + "] is " + values[i]);
            }
        }
        try (Tensor h = Tensor.ofFloats(values, count)) {
            return h.copyTo(device);
        }
    }

    @Override
    public void close() {
        if (!closed) {
            closed = true;
            local.close();
        }
    }

    @Override
    public String toString() {
        return "ColumnParallelLinear[rank " + comm.rank() + "/" + comm.size() + ", " + local.describe() + ", "
                + output + "]";
    }
}
