package io.qkern.dist.plan;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.qkern.dist.plan.LayerPlan.Prediction;
import io.qkern.dist.plan.LayerPlan.Step;
import io.qkern.dist.plan.LayerPlan.Weights;
import org.junit.jupiter.api.Test;

/** The per-layer prediction against a hand computation, its limits, and the model shapes. */
class LayerPlanTest {
    private static final Link FAST = new Link("fast", 1e-6, 100e9, "");
    private static final Link SLOW = new Link("slow", 10e-6, 10e9, "");
    private static final GpuSpec ROUND = new GpuSpec("round", 1e12, 1e11, 1.0, "");
    // 16 * 2^20 weights per layer: 2 h^2 + 2 h^2 (kv = heads) + 3 h 4h = 16 h^2.
    private static final ModelShape SMALL = ModelShape.parse("hidden=1024,ffn=4096,layers=1,heads=8");

    private static LayerPlan plan(int tp, long tokens, Weights w, Step step, double dgc) {
        return new LayerPlan(SMALL, ROUND, new Fabric(FAST, SLOW, 4), tp, tokens, 1024, w, step, dgc);
    }

    @Test
    void trainingStepByHand() {
        assertEquals(16L << 20, SMALL.layerParameters());
        // Forward FLOPs per token: 2 * 16 Mi + 2 * 1024 * 1024 (causal attention, seq 1024).
        double flopsPerToken = 2.0 * (16 << 20) + 2.0 * 1024 * 1024;
        assertEquals(flopsPerToken, SMALL.layerForwardFlopsPerToken(1024));
        // 8 GPUs, tp 4 (one node each), dp 2 across the two nodes, 1024 tokens per replica.
        Prediction p = plan(4, 1024, Weights.BF16, Step.TRAINING, 0).predict(8);
        assertEquals(2, p.dp());
        assertEquals(2, p.nodes());
        // compute: 3 passes x max(1024 * flops / 4 / 1e12, 4 Mi weights * 2 B / 1e11) = FLOP-bound.
        double compute = 3 * (1024 * flopsPerToken / 4 / 1e12);
        assertEquals(compute, p.computeSeconds(), 1e-15);
        // TP: 4 all-reduces of 1024 x 1024 x 2 B = 2 MiB among 4 on FAST, ring: 6 a + 1.5 n / B.
        double tp = 4 * (6e-6 + 1.5 * 2097152 / 100e9);
        assertEquals(tp, p.tpComm().seconds(), 1e-15);
        assertTrue(p.tpComm().algorithm().startsWith("4 x ring all-reduce fast x4"), p.tpComm().algorithm());
        // DP: 4 Mi BF16 gradients = 8 MiB between 2 nodes on SLOW: recursive doubling, a + n / B.
        double dp = 10e-6 + 8388608 / 10e9;
        assertEquals(dp, p.dpComm().seconds(), 1e-15);
        assertTrue(p.dpComm().algorithm().startsWith("dense recursive doubling all-reduce slow x2"),
                p.dpComm().algorithm());
        assertEquals(compute + tp + dp, p.totalSeconds(), 1e-15);
        // One GPU, the same global step (2 x 1024 tokens, the whole layer): 3 x 2048 x flops / 1e12.
        double single = 3 * 2048 * flopsPerToken / 1e12;
        assertEquals(single, p.singleGpuSeconds(), 1e-15);
        assertEquals(single / 8, p.idealSeconds(), 1e-15);
        assertEquals(single / 8 / (compute + tp + dp), p.efficiency(), 1e-12);
    }

    @Test
    void dgcAllGathersPairsWhenThatIsCheaperAndFallsBackToDenseOtherwise() {
        // ratio 0.01: k = ceil(0.01 * 4 Mi) = 41944 pairs of 8 bytes from each of 2 ranks:
        // all-gather of 671104 bytes between 2: a + n / 2 / B.
        Prediction sparse = plan(4, 1024, Weights.BF16, Step.TRAINING, 0.01).predict(8);
        assertEquals(10e-6 + 671104 / 2.0 / 10e9, sparse.dpComm().seconds(), 1e-15);
        assertTrue(sparse.dpComm().algorithm().startsWith("dgc "), sparse.dpComm().algorithm());
        // ratio 1: the pairs (8 B) outweigh the dense BF16 gradient (2 B): the dense all-reduce stays.
        Prediction dense = plan(4, 1024, Weights.BF16, Step.TRAINING, 1.0).predict(8);
        assertTrue(dense.dpComm().algorithm().startsWith("dense "), dense.dpComm().algorithm());
        assertEquals(plan(4, 1024, Weights.BF16, Step.TRAINING, 0).predict(8).dpComm(), dense.dpComm());
    }

    @Test
    void oneGpuCommunicatesNothingAndIsPerfectlyEfficient() {
        Prediction p = plan(1, 4096, Weights.BF16, Step.TRAINING, 0).predict(1);
        assertEquals(0, p.tpComm().seconds());
        assertEquals(0, p.dpComm().seconds());
        assertEquals(p.computeSeconds(), p.totalSeconds());
        assertEquals(1.0, p.efficiency(), 1e-15);
    }

    @Test
    void efficiencyStaysAtMostOneAndFallsAsTheMeshGrows() {
        for (ModelShape m : ModelShape.PRESETS) {
            for (Weights w : Weights.values()) {
                LayerPlan plan = new LayerPlan(m, GpuSpec.H100_SXM, new Fabric(Link.NVLINK, Link.INFINIBAND, 8), 8,
                        16384, 4096, w, Step.TRAINING, 0);
                double previous = 1;
                for (int gpus : new int[] {8, 64, 512, 1024}) {
                    Prediction p = plan.predict(gpus);
                    assertTrue(p.efficiency() > 0 && p.efficiency() <= previous + 1e-12, m.name() + " " + gpus);
                    previous = p.efficiency();
                }
            }
        }
    }

    @Test
    void nf4ShortensTheWeightBoundCompute() {
        // One token: reading the weights dominates, so the time scales with the bits per weight.
        double bf16 = plan(1, 1, Weights.BF16, Step.INFERENCE, 0).predict(1).computeSeconds();
        double nf4 = plan(1, 1, Weights.NF4, Step.INFERENCE, 0).predict(1).computeSeconds();
        assertEquals((16 << 20) * 2.0 / 1e11, bf16, 1e-15);
        assertEquals(16 / 4.5, bf16 / nf4, 1e-12);
        // Many tokens: FLOP-bound, the format does not matter.
        assertEquals(plan(1, 1 << 16, Weights.BF16, Step.INFERENCE, 0).predict(1).computeSeconds(),
                plan(1, 1 << 16, Weights.NF4, Step.INFERENCE, 0).predict(1).computeSeconds());
    }

    @Test
    void inferenceHasTwoTpAllReducesAndNoGradientExchange() {
        Prediction train = plan(4, 1024, Weights.BF16, Step.TRAINING, 0).predict(8);
        Prediction infer = plan(4, 1024, Weights.BF16, Step.INFERENCE, 0).predict(8);
        assertEquals(train.tpComm().seconds() / 2, infer.tpComm().seconds(), 1e-15);
        assertEquals(0, infer.dpComm().seconds());
        assertEquals(train.computeSeconds() / 3, infer.computeSeconds(), 1e-15);
    }

    @Test
    void meshesThatDoNotFitAreRefusedWithTheNumbers() {
        LayerPlan p = plan(4, 1024, Weights.BF16, Step.TRAINING, 0);
        assertMessage("tp (4) must divide gpus (6)", () -> p.predict(6));
        assertMessage("gpus (6) must be a multiple of gpus per node (4)",
                () -> plan(2, 1, Weights.BF16, Step.TRAINING, 0).predict(6));
        assertMessage("gpus must be >= 1, got 0", () -> p.predict(0));
        assertMessage("tp 3 must divide hidden (1024)", () -> plan(3, 1, Weights.BF16, Step.TRAINING, 0));
        assertMessage("tokens must be >= 1, got 0", () -> plan(1, 0, Weights.BF16, Step.TRAINING, 0));
        assertMessage("DGC ratio must be in (0, 1]", () -> plan(1, 1, Weights.BF16, Step.TRAINING, 1.5));
    }

    @Test
    void presetsMatchTheirNominalSizes() {
        assertEquals(6.74e9, ModelShape.parse("7b").totalParameters(), 0.01e9);
        assertEquals(13.0e9, ModelShape.parse("13B").totalParameters(), 0.1e9);
        assertEquals(69.0e9, ModelShape.parse("70b").totalParameters(), 0.1e9);
        assertEquals(405.8e9, ModelShape.parse("405b").totalParameters(), 0.1e9);
        ModelShape custom = ModelShape.parse("hidden=2048,ffn=5632,layers=22,heads=32,kv_heads=4");
        assertEquals(64, custom.kvDim() / 4);
        assertEquals(256, custom.kvDim());
        assertMessage("unknown model \"9b\"", () -> ModelShape.parse("9b"));
        assertMessage("a custom model needs ffn=", () -> ModelShape.parse("hidden=1024,layers=2"));
        assertMessage("model field hidden must be an integer, got \"x\"", () -> ModelShape.parse("hidden=x,ffn=1,layers=1"));
        assertMessage("model hidden must be > 0, got -8", () -> ModelShape.parse("hidden=-8,ffn=1,layers=1"));
        assertMessage("unknown model field \"depth\"", () -> ModelShape.parse("hidden=8,ffn=1,layers=1,depth=3"));
        assertMessage("unknown gpu \"tpu\"", () -> GpuSpec.preset("tpu"));
        assertMessage("unknown weight format \"int3\"", () -> Weights.parse("int3"));
    }

    static void assertMessage(String expected, org.junit.jupiter.api.function.Executable e) {
        IllegalArgumentException x = assertThrows(IllegalArgumentException.class, e);
        assertTrue(x.getMessage().contains(expected), x.getMessage());
    }
}
