package io.qkern.dist.tp;

/**
 * Which part of a dimension a tensor-parallel rank holds: rank r of tp holds
 * [r*size/tp, (r+1)*size/tp). Splits are even by design — every rank holds the same number of
 * rows or columns, so the collectives that follow (all-gather, all-reduce) see equal shapes on
 * every rank, as the {@link io.qkern.dist.Communicator} contract requires and as Megatron-LM
 * does. A size that tp does not divide, or a slice that does not fall on the storage format's
 * boundaries (NF4 blocks, APMM words and groups), is an {@link IllegalArgumentException} naming
 * the tensor, the dimension, tp and the boundary.
 */
public record TpSplit(int tp, int rank) {

    public TpSplit {
        if (tp < 1) {
            throw new IllegalArgumentException("tp must be >= 1, got " + tp);
        }
        if (rank < 0 || rank >= tp) {
            throw new IllegalArgumentException("rank " + rank + " is outside [0, " + tp + ")");
        }
    }

    /** The whole tensor on one rank. */
    public static final TpSplit NONE = new TpSplit(1, 0);

    /**
     * The first index of this rank's part of a dimension of {@code size}; throws unless tp divides
     * {@code size} and the part's width is a multiple of {@code multiple} (1: no constraint).
     *
     * @param tensor    the tensor's name, for the message
     * @param dimension e.g. "N (out_features)" or "K (in_features)"
     * @param boundary  what {@code multiple} is, e.g. "NF4 blocksize 64"
     */
    public long begin(String tensor, String dimension, long size, long multiple, String boundary) {
        return width(tensor, dimension, size, multiple, boundary) * rank;
    }

    /** The width of every rank's part; the same checks as {@link #begin}. */
    public long width(String tensor, String dimension, long size, long multiple, String boundary) {
        if (size % tp != 0) {
            throw new IllegalArgumentException(tensor + ": dimension " + dimension + " = " + size
                    + " cannot be split evenly over tp = " + tp + " ranks (" + size + " % " + tp + " = " + size % tp
                    + "; uneven splits are not supported: every rank must hold the same shape)");
        }
        long w = size / tp;
        if (multiple > 1 && w % multiple != 0) {
            throw new IllegalArgumentException(tensor + ": dimension " + dimension + " = " + size + " split over tp = "
                    + tp + " gives slices of " + w + ", not a multiple of the " + boundary
                    + " (each rank's slice must consist of whole units of it)");
        }
        return w;
    }
}
