package io.qkern.dist.tp;

import io.qkern.Tensor;
import io.qkern.dist.Communicator;
import io.qkern.io.SafetensorsFile;
import io.qkern.io.SafetensorsFormatException;

/**
 * A linear layer y = x W^T + b whose weight W [N, K] is split along K (input features): rank r
 * holds columns [r*K/tp, (r+1)*K/tp) of W, multiplies them with the matching K slice of x, and the
 * ranks' partial outputs [M, N] are summed by one all-reduce (Megatron-LM's row-parallel linear).
 *
 * <ul>
 *   <li>{@link Input#SHARDED}: {@link #forward} takes this rank's slice x [M, K/tp] — what a
 *       preceding {@link ColumnParallelLinear} with SHARDED output produces; no communication
 *       before the all-reduce.</li>
 *   <li>{@link Input#FULL}: it takes the whole x [M, K] and uses its own columns.</li>
 * </ul>
 * The bias is added exactly once: by rank 0, fused into its local kernel (no extra pass over y, and
 * it works on any device). In exact arithmetic that is the same as adding it after the reduction;
 * in float32 it moves one rounding, which the layer's stated tolerance covers.
 *
 * <p>{@link #backwardInput} (NF4 only) takes dy [M, N] (the same on every rank, as the all-reduce
 * left it) and returns dx = dy W for this rank's K slice, [M, K/tp], with no communication
 * (Megatron's "g": all-reduce forward, identity backward); with {@link Input#FULL} the slices are
 * all-gathered into dx [M, K] (exact).
 *
 * <p>APMM: a rank sees only its K slice of x, yet dynamic per-token activation quantization needs
 * the whole row's range; the ranks agree on it with one extra all-reduce (see {@link ApmmLocal}),
 * so every code equals TP = 1's and only the float32 sum of the partials differs.
 *
 * <p>Every rank must make the same calls in the same order. Outputs are float32 on the
 * communicator's device; {@link #close()} is idempotent.
 */
public final class RowParallelLinear implements AutoCloseable {

    /** Whether {@link #forward} gets this rank's K slice of x or the whole x. */
    public enum Input { SHARDED, FULL }

    private final LocalLinear local;
    private final Communicator comm;
    private final Input input;
    private boolean closed;

    RowParallelLinear(LocalLinear local, Communicator comm, Input input) {
        this.local = local;
        this.comm = comm;
        this.input = input;
    }

    /**
     * Loads this rank's columns of the NF4 weight {@code prefix + ".weight"} (K and K/tp must be
     * multiples of the blocksize) and, on rank 0 only, {@code prefix + ".bias"} if present.
     */
    public static RowParallelLinear readNf4(SafetensorsFile file, String prefix, Communicator comm, Input input)
            throws SafetensorsFormatException {
        TpSplit split = new TpSplit(comm.size(), comm.rank());
        Nf4SliceReader.Slice w = Nf4SliceReader.readColumnShard(file, prefix + ".weight", split, comm.device());
        try {
            long n = w.weight().shape()[0];
            // only rank 0 reads the bias: it adds it for everyone
            Tensor bias = comm.rank() == 0
                    ? ColumnParallelLinear.readBias(file, prefix + ".bias", n, 0, n, comm.device()) : null;
            return new RowParallelLinear(new LocalLinear.Nf4(w.weight(), bias), comm, input);
        } catch (RuntimeException | SafetensorsFormatException e) {
            w.close();
            throw e;
        }
    }

    /** Loads this rank's columns of a packed APMM layer saved by {@link io.qkern.apmm.ApmmLinear#save}. */
    public static RowParallelLinear readApmm(SafetensorsFile file, Communicator comm, Input input) {
        ApmmSliceReader.Slice s = ApmmSliceReader.readColumnShard(file, new TpSplit(comm.size(), comm.rank()),
                comm.device());
        return new RowParallelLinear(new ApmmLocal(s.weight(), s.spec(), comm.size() > 1 ? comm : null), comm, input);
    }

    public long outFeatures() {
        return local.outFeatures();
    }

    /** The layer's K (all ranks). */
    public long inFeatures() {
        return local.inFeatures() * comm.size();
    }

    /** This rank's share of K. */
    public long localInFeatures() {
        return local.inFeatures();
    }

    /** The first input feature of this rank's slice. */
    public long inBegin() {
        return local.inFeatures() * comm.rank();
    }

    public Input input() {
        return input;
    }

    public Communicator communicator() {
        return comm;
    }

    public long storageBytes() {
        return local.storageBytes();
    }

    /** y [M, N] = sum over ranks of x_r W_r^T, plus b once; one all-reduce. */
    public Tensor forward(Tensor x) {
        Tensor xLocal = input == Input.FULL && comm.size() > 1
                ? Layout.rankColumns(x, "x", inFeatures(), "the whole input", inBegin(), inBegin() + local.inFeatures())
                : null;
        try {
            return Layout.sumOverRanks(comm, local.forward(xLocal != null ? xLocal : x));
        } finally {
            if (xLocal != null) {
                xLocal.close();
            }
        }
    }

    /** dx = dy W for this rank's K slice [M, K/tp] (SHARDED), or all of it [M, K] (FULL). NF4 only. */
    public Tensor backwardInput(Tensor dy) {
        Tensor mine = local.backwardInput(dy);
        if (input == Input.SHARDED || comm.size() == 1) {
            return mine;
        }
        try (mine) {
            return ColumnParallelLinear.gatherColumns(comm, mine);
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
        return "RowParallelLinear[rank " + comm.rank() + "/" + comm.size() + ", " + local.describe() + ", " + input
                + "]";
    }
}
