package io.qkern.dist.tp;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Tensor;
import io.qkern.apmm.ApmmMatrix;
import io.qkern.dist.Communicator;
import io.qkern.io.SafetensorsFile;
import io.qkern.io.SafetensorsFormatException;
import io.qkern.io.SafetensorsWriter;
import io.qkern.nf4.Nf4;
import io.qkern.nf4.Nf4Tensor;
import java.io.IOException;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.SplittableRandom;

/**
 * Llama's MLP block, y = down( silu(gate(x)) * up(x) ), tensor-parallel with exactly ONE
 * all-reduce per forward (and one per backward):
 * <ul>
 *   <li>gate_proj and up_proj [I, H] are column-parallel: rank r holds rows [r*I/tp, (r+1)*I/tp)
 *       of both, stacked into one local weight [2*I/tp, H] so one kernel call computes both;</li>
 *   <li>the SiLU gate is element-wise on the rank's I/tp columns (no communication);</li>
 *   <li>down_proj [H, I] is row-parallel over the same I slices; its partials are all-reduced.</li>
 * </ul>
 * The activation is fixed: SiLU-gated (SwiGLU, as Llama, Mistral and Qwen use); the element-wise
 * step is evaluated in float64 and rounded once to float32, identically on every tp, so it adds
 * no difference between TP = 1 and TP > 1 beyond what the matmuls bring. It runs in Java on the
 * host (qkern has no element-wise kernel yet; for a CPU rank that is a pass over M x 2I/tp floats).
 *
 * <p>{@link #backwardInput} (NF4) propagates dy [M, H] to dx [M, H] through the saved
 * pre-activations: dh = dy W_down (row-parallel backward: local), then the gate's derivative,
 * then dx = d[gate|up] W_gateup summed over the ranks by the one all-reduce.
 *
 * <p>Bias-free, like Llama's MLP: a file with gate/up/down biases is refused.
 */
public final class ParallelMlp implements AutoCloseable {
    private final LocalLinear gateUp;
    private final RowParallelLinear down;
    private final Communicator comm;
    private final long hidden;
    private final long localIntermediate;
    private boolean closed;

    private ParallelMlp(LocalLinear gateUp, RowParallelLinear down, Communicator comm) {
        this.gateUp = gateUp;
        this.down = down;
        this.comm = comm;
        this.hidden = gateUp.inFeatures();
        this.localIntermediate = gateUp.outFeatures() / 2;
        if (down.localInFeatures() != localIntermediate || down.outFeatures() != hidden) {
            throw new IllegalArgumentException("down_proj's slice is " + down.outFeatures() + " x "
                    + down.localInFeatures() + " but gate/up give " + localIntermediate + " intermediate features of a "
                    + hidden + "-wide hidden state");
        }
    }

    /**
     * Writes a synthetic bias-free NF4 MLP checkpoint that {@link #readNf4} reads: {@code prefix +
     * ".gate_proj.weight"} and {@code ".up_proj.weight"} [intermediate, hidden] and
     * {@code ".down_proj.weight"} [hidden, intermediate], uniform in [-0.025, 0.025) from
     * {@code seed}, blocksize 64 with double quantization. For benchmarks and demos of a layer
     * shape without a real model; values are written row by row into native memory, so no heap
     * array of a whole layer is made.
     */
    public static void writeSyntheticNf4(Path file, String prefix, int hidden, int intermediate, long seed)
            throws IOException {
        List<AutoCloseable> keep = new ArrayList<>();
        try {
            SafetensorsWriter w = SafetensorsWriter.create(file);
            SplittableRandom rnd = new SplittableRandom(seed);
            for (String name : new String[] {"gate_proj", "up_proj", "down_proj"}) {
                long rows = name.equals("down_proj") ? hidden : intermediate;
                long cols = name.equals("down_proj") ? intermediate : hidden;
                String tensorName = prefix + "." + name + ".weight";
                try (Tensor dense = Tensor.allocate(DType.F32, Device.CPU, rows, cols)) {
                    float[] row = new float[(int) cols];
                    for (long r = 0; r < rows; r++) {
                        for (int i = 0; i < row.length; i++) {
                            row[i] = (float) (rnd.nextDouble() - 0.5) * 0.05f;
                        }
                        MemorySegment.copy(row, 0, dense.segment(), ValueLayout.JAVA_FLOAT, 4 * r * cols, row.length);
                    }
                    Nf4Tensor q = Nf4.quantize(tensorName, dense, new Nf4.Options(64, true));
                    keep.add(q);
                    keep.addAll(q.addTo(w, tensorName));
                }
            }
            w.write();
        } finally {
            for (AutoCloseable c : keep.reversed()) {
                try {
                    c.close();
                } catch (Exception e) {
                    throw new IllegalStateException("closing a host tensor failed", e);
                }
            }
        }
    }

    /**
     * Loads this rank's slices of the NF4 weights {@code prefix + ".gate_proj.weight"},
     * {@code ".up_proj.weight"} (rows) and {@code ".down_proj.weight"} (columns), e.g. prefix
     * {@code "model.layers.0.mlp"}.
     */
    public static ParallelMlp readNf4(SafetensorsFile file, String prefix, Communicator comm)
            throws SafetensorsFormatException {
        for (String p : new String[] {".gate_proj", ".up_proj", ".down_proj"}) {
            if (file.contains(prefix + p + ".bias")) {
                throw new IllegalArgumentException(file.path() + ": " + prefix + p + ".bias: ParallelMlp is the"
                        + " bias-free Llama MLP");
            }
        }
        TpSplit split = new TpSplit(comm.size(), comm.rank());
        try (Nf4SliceReader.Slice gate = Nf4SliceReader.readRowShard(file, prefix + ".gate_proj.weight", split,
                comm.device());
                Nf4SliceReader.Slice up = Nf4SliceReader.readRowShard(file, prefix + ".up_proj.weight", split,
                        comm.device())) {
            requireSameShape(prefix, gate.weight().shape(), up.weight().shape());
            Nf4Tensor stacked = Nf4SliceReader.stackRows(gate.weight(), up.weight());
            LocalLinear gateUp = new LocalLinear.Nf4(stacked, null);
            try {
                RowParallelLinear down = RowParallelLinear.readNf4(file, prefix + ".down_proj", comm,
                        RowParallelLinear.Input.SHARDED);
                return build(gateUp, down, comm);
            } catch (RuntimeException | SafetensorsFormatException e) {
                gateUp.close();
                throw e;
            }
        }
    }

    /** Loads this rank's slices of three packed APMM layers saved by {@link io.qkern.apmm.ApmmLinear#save}. */
    public static ParallelMlp readApmm(SafetensorsFile gateFile, SafetensorsFile upFile, SafetensorsFile downFile,
            Communicator comm) {
        TpSplit split = new TpSplit(comm.size(), comm.rank());
        try (ApmmSliceReader.Slice gate = ApmmSliceReader.readRowShard(gateFile, split, comm.device());
                ApmmSliceReader.Slice up = ApmmSliceReader.readRowShard(upFile, split, comm.device())) {
            if (!gate.spec().equals(up.spec())) {
                throw new IllegalArgumentException("gate and up projections are quantized differently: " + gate.spec()
                        + " vs " + up.spec());
            }
            ApmmMatrix stacked = ApmmSliceReader.stackRows(gate.weight(), up.weight());
            LocalLinear gateUp = new ApmmLocal(stacked, gate.spec(), null);
            try {
                return build(gateUp, RowParallelLinear.readApmm(downFile, comm, RowParallelLinear.Input.SHARDED), comm);
            } catch (RuntimeException e) {
                gateUp.close();
                throw e;
            }
        }
    }

    private static ParallelMlp build(LocalLinear gateUp, RowParallelLinear down, Communicator comm) {
        try {
            return new ParallelMlp(gateUp, down, comm);
        } catch (RuntimeException e) {
            down.close();
            throw e;
        }
    }

    private static void requireSameShape(String prefix, long[] gate, long[] up) {
        if (!Arrays.equals(gate, up)) {
            throw new IllegalArgumentException(prefix + ": gate_proj slice " + Arrays.toString(gate)
                    + " and up_proj slice " + Arrays.toString(up) + " differ");
        }
    }

    /** H. */
    public long hiddenFeatures() {
        return hidden;
    }

    /** I (all ranks). */
    public long intermediateFeatures() {
        return localIntermediate * comm.size();
    }

    public Communicator communicator() {
        return comm;
    }

    public long storageBytes() {
        return gateUp.storageBytes() + down.storageBytes();
    }

    /** y [M, H] for x [M, H] (the same x on every rank); one all-reduce. */
    public Tensor forward(Tensor x) {
        try (Saved s = forwardForBackward(x)) {
            return s.takeOutput();
        }
    }

    /** What {@link #backwardInput} needs from a forward pass; closing it frees the saved activations. */
    public static final class Saved implements AutoCloseable {
        private Tensor output;
        private final Tensor gateUp;  // float32 [M, 2*I/tp]: this rank's gate then up pre-activations

        Saved(Tensor output, Tensor gateUp) {
            this.output = output;
            this.gateUp = gateUp;
        }

        /** The forward output y [M, H]. */
        public Tensor output() {
            return output;
        }

        Tensor takeOutput() {
            Tensor t = output;
            output = null;
            return t;
        }

        @Override
        public void close() {
            if (output != null) {
                output.close();
            }
            gateUp.close();
        }
    }

    /** The forward pass, keeping the rank's gate/up pre-activations for {@link #backwardInput}. */
    public Saved forwardForBackward(Tensor x) {
        Tensor gu = gateUp.forward(x);
        try {
            float[] g = gu.toFloatArray();
            long m = gu.shape()[0];
            int li = (int) localIntermediate;
            float[] h = new float[(int) (m * li)];
            for (int i = 0; i < m; i++) {
                for (int j = 0; j < li; j++) {
                    double gate = g[i * 2 * li + j], up = g[i * 2 * li + li + j];
                    h[i * li + j] = (float) (silu(gate) * up);
                }
            }
            try (Tensor hHost = Tensor.ofFloats(h, m, li); Tensor hDev = hHost.copyTo(gu.device())) {
                return new Saved(down.forward(hDev), gu);
            }
        } catch (RuntimeException e) {
            gu.close();
            throw e;
        }
    }

    /** dx [M, H] = dL/dx given dy = dL/dy [M, H] (the same on every rank); one all-reduce. NF4 only. */
    public Tensor backwardInput(Saved saved, Tensor dy) {
        try (Tensor dh = down.backwardInput(dy)) {
            float[] d = dh.toFloatArray(), g = saved.gateUp.toFloatArray();
            long m = dh.shape()[0];
            int li = (int) localIntermediate;
            float[] dgu = new float[g.length];
            for (int i = 0; i < m; i++) {
                for (int j = 0; j < li; j++) {
                    double gate = g[i * 2 * li + j], up = g[i * 2 * li + li + j], grad = d[i * li + j];
                    double sig = 1 / (1 + Math.exp(-gate));
                    dgu[i * 2 * li + j] = (float) (grad * up * sig * (1 + gate * (1 - sig)));
                    dgu[i * 2 * li + li + j] = (float) (grad * gate * sig);
                }
            }
            try (Tensor dguHost = Tensor.ofFloats(dgu, m, 2L * li); Tensor dguDev = dguHost.copyTo(dh.device())) {
                return Layout.sumOverRanks(comm, gateUp.backwardInput(dguDev));
            }
        }
    }

    /** x * sigmoid(x) in float64. */
    static double silu(double x) {
        return x / (1 + Math.exp(-x));
    }

    @Override
    public void close() {
        if (!closed) {
            closed = true;
            gateUp.close();
            down.close();
        }
    }

    @Override
    public String toString() {
        return "ParallelMlp[rank " + comm.rank() + "/" + comm.size() + ", gate+up " + gateUp.describe() + ", down "
                + down + "]";
    }
}
