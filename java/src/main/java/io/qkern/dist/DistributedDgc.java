package io.qkern.dist;

import io.qkern.DType;
import io.qkern.Tensor;
import io.qkern.topk.Dgc;
import io.qkern.topk.GradientCompressor;
import io.qkern.topk.GradientCompressor.Compressed;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;

/**
 * Deep Gradient Compression across ranks: each rank compresses its gradients with its own
 * {@link GradientCompressor} (same tensors, ratios and schedule on every rank, so every rank sends the
 * same fixed k per tensor), the (index, value) pairs are all-gathered, and every rank scatter-adds all
 * P x k pairs and divides by P. The result equals the dense all-reduce (sum / P) of what each rank
 * sent; dense tensors (small or 1-D) are all-reduced as they are.
 *
 * <p>Sparse is not always cheaper: an all-gather moves (P-1) k (4 + value bytes) bytes into each rank,
 * a ring all-reduce 2 (P-1)/P n 4. With {@link Exchange#AUTO} each tensor takes the cheaper one (the
 * same choice on every rank, since it depends only on n, k, P and the value type); on the dense route
 * each rank scatters its own pairs into a zero tensor and the ranks all-reduce that, so the result is
 * the same either way.
 */
public final class DistributedDgc {

    /** How pairs travel. */
    public enum Exchange {
        /** Per tensor, whichever moves fewer bytes. */
        AUTO,
        /** Always all-gather the pairs. */
        SPARSE,
        /** Always all-reduce densified pairs. */
        DENSE
    }

    /** What one tensor cost in one step: the route and the bytes this rank received under that route's algorithm. */
    public record TensorStats(String name, boolean sparseRoute, long k, long numel, long wireBytesPerRank) {
    }

    /**
     * One step's outcome on this rank: the averaged dense gradients (identical on every rank), what
     * this rank sent, and the per-tensor costs. Owns its tensors.
     */
    public record Step(Map<String, Tensor> averaged, Map<String, Compressed> sent, List<TensorStats> stats)
            implements AutoCloseable {
        @Override
        public void close() {
            averaged.values().forEach(Tensor::close);
            sent.values().forEach(Compressed::close);
        }
    }

    private final Communicator comm;
    private final GradientCompressor compressor;
    private final Exchange exchange;

    public DistributedDgc(Communicator comm, GradientCompressor compressor, Exchange exchange) {
        this.comm = Objects.requireNonNull(comm, "comm");
        this.compressor = Objects.requireNonNull(compressor, "compressor");
        this.exchange = Objects.requireNonNull(exchange, "exchange");
    }

    /** Bytes into each rank for an all-gather of k pairs per rank. */
    public static long sparseBytes(int ranks, long k, DType valueType) {
        return (long) (ranks - 1) * k * (Integer.BYTES + valueType.byteSize());
    }

    /** Bytes into each rank for a ring all-reduce of n F32 values. */
    public static long denseBytes(int ranks, long numel) {
        return 2L * (ranks - 1) * numel * Float.BYTES / ranks;
    }

    /** A collective call on every rank: compress, exchange, decompress. */
    public Step step(Map<String, Tensor> gradients, int epoch) {
        Map<String, Compressed> sent = compressor.compress(gradients, epoch);
        Map<String, Tensor> averaged = new LinkedHashMap<>();
        List<TensorStats> stats = new ArrayList<>();
        try {
            int p = comm.size();
            for (Compressed c : sent.values()) {
                long numel = 1;
                for (long d : c.shape()) {
                    numel *= d;
                }
                if (c.dense()) {
                    Tensor sum = c.values().copyTo(comm.device());
                    averaged.put(c.name(), sum);
                    comm.allReduce(sum, ReduceOp.SUM);
                    divide(sum, p);
                    stats.add(new TensorStats(c.name(), false, numel, numel, denseBytes(p, numel)));
                    continue;
                }
                long k = c.indices().numel();
                DType vt = c.values().dtype();
                boolean sparse = switch (exchange) {
                    case SPARSE -> true;
                    case DENSE -> false;
                    case AUTO -> sparseBytes(p, k, vt) < denseBytes(p, numel);
                };
                Tensor out = Tensor.allocate(DType.F32, comm.device(), c.shape());
                averaged.put(c.name(), out);
                if (sparse) {
                    try (Tensor idx = Tensor.allocate(c.indices().dtype(), comm.device(), (long) p * k);
                            Tensor val = Tensor.allocate(vt, comm.device(), (long) p * k)) {
                        comm.allGather(c.indices(), idx);
                        comm.allGather(c.values(), val);
                        Dgc.decompress(idx, val, p, out);
                    }
                    stats.add(new TensorStats(c.name(), true, k, numel, sparseBytes(p, k, vt)));
                } else {
                    Dgc.decompress(c.indices(), c.values(), 1, out); // this rank's pairs, densified
                    comm.allReduce(out, ReduceOp.SUM);
                    divide(out, p);
                    stats.add(new TensorStats(c.name(), false, k, numel, denseBytes(p, numel)));
                }
            }
            return new Step(Collections.unmodifiableMap(averaged), sent, List.copyOf(stats));
        } catch (RuntimeException e) {
            averaged.values().forEach(Tensor::close);
            sent.values().forEach(Compressed::close);
            throw e;
        }
    }

    /** x /= p elementwise in float, as Dgc.decompress divides (on the host; device tensors make a round trip). */
    private static void divide(Tensor t, int p) {
        if (p == 1) {
            return;
        }
        if (!t.device().isCpu()) {
            try (Tensor host = t.copyTo(io.qkern.Device.CPU)) {
                divide(host, p);
                t.copyFrom(host);
            }
            return;
        }
        float divisor = p;
        var s = t.segment();
        for (long i = 0; i < t.numel(); i++) {
            float v = s.get(java.lang.foreign.ValueLayout.JAVA_FLOAT_UNALIGNED, 4 * i);
            s.set(java.lang.foreign.ValueLayout.JAVA_FLOAT_UNALIGNED, 4 * i, v / divisor);
        }
    }
}
