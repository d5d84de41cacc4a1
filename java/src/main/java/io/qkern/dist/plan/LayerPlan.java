package io.qkern.dist.plan;

import io.qkern.dist.plan.CollectiveCost.Cost;
import java.util.Locale;

/**
 * Predicted time of one transformer layer's step on a Megatron-style TP x DP mesh.
 *
 * <p>The mesh: {@code gpus = tp * dp}, ranks numbered TP-major ({@code rank = d * tp + t}) and
 * packed onto nodes of {@link Fabric#gpusPerNode()} GPUs, so a tensor-parallel group sits inside a
 * node whenever {@code tp <= gpusPerNode}. Each data-parallel replica (one TP group) processes
 * {@code tokens} tokens per step; the global batch is {@code dp * tokens}.
 *
 * <p>Per rank and layer, with {@code P} the layer's weights ({@link ModelShape#layerParameters()}):
 * <ul>
 *   <li><b>compute</b> = passes x max(F / (peak x efficiency), W / memory bandwidth), where
 *       F = tokens x {@link ModelShape#layerForwardFlopsPerToken(int)} / tp and W = P / tp x
 *       bits per weight / 8 (the weights are read once per pass). Training has 3 passes (forward,
 *       input gradient, weight gradient: 3x the forward FLOPs), inference 1.</li>
 *   <li><b>TP communication</b>: Megatron's two all-reduces per layer forward (after the attention
 *       output projection and after the MLP down projection), of tokens x hidden BF16
 *       activations, over the TP group; training adds the two of the backward pass (4 in all).</li>
 *   <li><b>DP communication</b> (training only): the all-reduce of the layer's BF16 gradient
 *       slice, P / tp x 2 bytes, over the DP group; or, with a DGC ratio r, an all-gather of
 *       k = ceil(r P / tp) (int32 index, float32 value) pairs from every DP rank (8 bytes a pair),
 *       whichever is cheaper (the dense fallback of DGC).</li>
 *   <li><b>total</b> = compute + TP + DP: no overlap of communication with compute is assumed,
 *       so the prediction is pessimistic where frameworks overlap the gradient all-reduce.</li>
 * </ul>
 *
 * <p><b>Scaling efficiency</b> = ideal / total, where ideal = T1 / gpus and T1 is one GPU's
 * compute time for the same global step (the whole layer, all dp x tokens tokens, no
 * communication). It is at most 1: splitting a layer never lowers the work, and communication
 * only adds. Not modelled: memory capacity (a 405B layer need not fit one GPU for T1 to be
 * defined), pipeline parallelism, embeddings and the output head, norms and element-wise
 * kernels, activation recomputation, sequence parallelism.
 */
public record LayerPlan(ModelShape model, GpuSpec gpu, Fabric fabric, int tp, long tokens, int seq, Weights weights,
        Step step, double dgcRatio) {

    /** Bytes per activation element exchanged by TP (BF16). */
    public static final int ACTIVATION_BYTES = 2;
    /** Bytes per gradient element in the dense DP all-reduce (BF16). */
    public static final int GRADIENT_BYTES = 2;
    /** Bytes per DGC (int32 index, float32 value) pair. */
    public static final int DGC_PAIR_BYTES = 8;

    /** How the weights are stored, which sets the bytes read per pass. */
    public enum Weights {
        /** NF4: 4-bit codes plus one float32 absmax per 64 weights = 4.5 bits per weight. */
        NF4(4.5),
        /** BF16 / F16: 16 bits per weight. */
        BF16(16);

        private final double bitsPerWeight;

        Weights(double bitsPerWeight) {
            this.bitsPerWeight = bitsPerWeight;
        }

        public double bitsPerWeight() {
            return bitsPerWeight;
        }

        /** nf4 or bf16 (case-insensitive). */
        public static Weights parse(String s) {
            return switch (s.toLowerCase(Locale.ROOT)) {
                case "nf4" -> NF4;
                case "bf16", "f16", "fp16" -> BF16;
                default -> throw new IllegalArgumentException("unknown weight format \"" + s + "\" (nf4, bf16)");
            };
        }
    }

    /** Training (forward and backward, gradients all-reduced) or inference (forward only). */
    public enum Step {
        TRAINING(3, 4), INFERENCE(1, 2);

        private final int passes;
        private final int tpAllReduces;

        Step(int passes, int tpAllReduces) {
            this.passes = passes;
            this.tpAllReduces = tpAllReduces;
        }

        /** Passes over the weights (3 for training, 1 for inference). */
        public int passes() {
            return passes;
        }

        /** TP all-reduces per layer (4 for training, 2 for inference). */
        public int tpAllReduces() {
            return tpAllReduces;
        }

        /** train or infer (case-insensitive). */
        public static Step parse(String s) {
            return switch (s.toLowerCase(Locale.ROOT)) {
                case "train", "training" -> TRAINING;
                case "infer", "inference", "forward" -> INFERENCE;
                default -> throw new IllegalArgumentException("unknown step \"" + s + "\" (train, infer)");
            };
        }
    }

    /** One mesh size's prediction; times in seconds per layer and step. */
    public record Prediction(int gpus, int tp, int dp, int nodes, double computeSeconds, Cost tpComm, Cost dpComm,
            double totalSeconds, double singleGpuSeconds, double idealSeconds, double efficiency) {}

    public LayerPlan {
        if (model == null || gpu == null || fabric == null || weights == null || step == null) {
            throw new IllegalArgumentException("model, gpu, fabric, weights and step are required");
        }
        if (tp < 1) {
            throw new IllegalArgumentException("tp must be >= 1, got " + tp);
        }
        if (tokens < 1) {
            throw new IllegalArgumentException("tokens must be >= 1, got " + tokens);
        }
        if (seq < 1) {
            throw new IllegalArgumentException("seq must be >= 1, got " + seq);
        }
        if (!(dgcRatio >= 0 && dgcRatio <= 1)) {
            throw new IllegalArgumentException("the DGC ratio must be in (0, 1] (0 = dense), got " + dgcRatio);
        }
        if (model.hidden() % tp != 0 || model.ffn() % tp != 0 || model.heads() % tp != 0) {
            throw new IllegalArgumentException("tp " + tp + " must divide hidden (" + model.hidden() + "), ffn ("
                    + model.ffn() + ") and heads (" + model.heads() + ") of model " + model.name());
        }
    }

    /** The prediction for a mesh of {@code gpus} GPUs. */
    public Prediction predict(int gpus) {
        int g = fabric.gpusPerNode();
        if (gpus < 1) {
            throw new IllegalArgumentException("gpus must be >= 1, got " + gpus);
        }
        if (gpus % tp != 0) {
            throw new IllegalArgumentException("tp (" + tp + ") must divide gpus (" + gpus + ")");
        }
        if (gpus > g && gpus % g != 0) {
            throw new IllegalArgumentException("gpus (" + gpus + ") must be a multiple of gpus per node (" + g
                    + ") when the mesh spans nodes");
        }
        if (gpus > g && g % tp != 0 && tp % g != 0) {
            throw new IllegalArgumentException("tp (" + tp + ") and gpus per node (" + g
                    + ") must divide one another when the mesh spans nodes");
        }
        int dp = gpus / tp;
        int nodes = (gpus + g - 1) / g;
        int tpPerNode = Math.min(tp, g);
        int dpPerNode = nodes == 1 ? dp : tp >= g ? 1 : g / tp;

        double params = model.layerParameters();
        double flopsPerToken = model.layerForwardFlopsPerToken(seq);
        double perPass = gpu.seconds(tokens * flopsPerToken / tp, params / tp * weights.bitsPerWeight() / 8);
        double compute = step.passes() * perPass;

        Cost one = fabric.allReduce((double) tokens * model.hidden() * ACTIVATION_BYTES, tp, tpPerNode);
        Cost tpComm = one.equals(Cost.NONE) ? one
                : new Cost(step.tpAllReduces() * one.seconds(), step.tpAllReduces() + " x " + one.algorithm());

        Cost dpComm = Cost.NONE;
        if (step == Step.TRAINING && dp > 1) {
            double grads = params / tp;
            dpComm = fabric.allReduce(grads * GRADIENT_BYTES, dp, dpPerNode);
            dpComm = new Cost(dpComm.seconds(), "dense " + dpComm.algorithm());
            if (dgcRatio > 0) {
                double k = Math.ceil(dgcRatio * grads);
                Cost sparse = fabric.allGather(dp * k * DGC_PAIR_BYTES, dp, dpPerNode);
                if (sparse.seconds() < dpComm.seconds()) {
                    dpComm = new Cost(sparse.seconds(), "dgc " + sparse.algorithm());
                }
            }
        }
        double total = compute + tpComm.seconds() + dpComm.seconds();
        double single = step.passes() * gpu.seconds((double) dp * tokens * flopsPerToken,
                params * weights.bitsPerWeight() / 8);
        double ideal = single / gpus;
        return new Prediction(gpus, tp, dp, nodes, compute, tpComm, dpComm, total, single, ideal, ideal / total);
    }
}
