package io.qkern.dist.plan;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.qkern.dist.plan.CollectiveCost.Collective;
import org.junit.jupiter.api.Test;

/** Hierarchical collectives across nodes against hand computations and the flat ring. */
class FabricTest {
    private static final Link FAST = new Link("fast", 1e-6, 100e9, "");
    private static final Link SLOW = new Link("slow", 10e-6, 10e9, "");
    private static final Fabric F = new Fabric(FAST, SLOW, 4);

    @Test
    void insideOneNodeItIsTheFlatIntraNodeCollective() {
        assertEquals(CollectiveCost.allReduce(FAST, 4, 1e9), F.allReduce(1e9, 4, 4));
        assertEquals(CollectiveCost.allGather(FAST, 2, 1e9), F.allGather(1e9, 2, 2));
    }

    @Test
    void onePerNodeIsTheFlatInterNodeCollective() {
        assertEquals(CollectiveCost.allReduce(SLOW, 16, 1e9), F.allReduce(1e9, 16, 1));
    }

    @Test
    void hierarchicalAllReduceByHand() {
        // 16 ranks, 4 per node, 4 nodes, n = 4e9 bytes (all large: every step picks the
        // bandwidth-optimal algorithm). Reduce-scatter on FAST among 4: 2 a + 3/4 n / 100e9 = 0.03 s;
        // all-reduce of n/4 = 1e9 on SLOW among 4 nodes: ring 6 a + 1.5 * 1e9 / 10e9 = 0.15 s;
        // all-gather on FAST among 4: 0.03 s (+ 2 a).
        double expected = (2e-6 + 0.03) + (60e-6 + 0.15) + (2e-6 + 0.03);
        assertEquals(expected, F.allReduce(4e9, 16, 4).seconds(), 1e-12);
        // The flat ring over 16 ranks is held to the slow link: 30 a + 2 * 15/16 * 0.4 s = 0.75 s.
        double flat = F.flat(Collective.ALL_REDUCE, 4e9, 16, 4).seconds();
        assertEquals(30 * 10e-6 + 0.75, flat, 1e-12);
        assertTrue(F.allReduce(4e9, 16, 4).seconds() < flat / 3);
        assertTrue(F.allReduce(4e9, 16, 4).algorithm().contains("slow x4"), F.allReduce(4e9, 16, 4).algorithm());
    }

    @Test
    void hierarchicalAllGatherReduceScatterBroadcastByHand() {
        // all-gather 4e9 output, 16 ranks, 4 per node: across nodes 1e9 among 4 (2 a + 0.075 s),
        // then inside the node 4e9 among 4 (2 a + 0.03 s).
        assertEquals(20e-6 + 0.075 + 2e-6 + 0.03, F.allGather(4e9, 16, 4).seconds(), 1e-12);
        assertEquals(2e-6 + 0.03 + 20e-6 + 0.075, F.reduceScatter(4e9, 16, 4).seconds(), 1e-12);
        // broadcast 4e9: across 4 nodes, scatter + all-gather (5 a + 1.5 * 0.4 s), then inside
        // (5 a' + 1.5 * 0.04 s).
        assertEquals(50e-6 + 0.6 + 5e-6 + 0.06, F.broadcast(4e9, 16, 4).seconds(), 1e-12);
    }

    @Test
    void hierarchicalBeatsFlatForLargeMeshesAndEqualsItOnOneNode() {
        Fabric real = new Fabric(Link.NVLINK, Link.INFINIBAND, 8);
        for (int p = 16; p <= 1024; p *= 2) {
            for (double n : new double[] {1e6, 1e8, 1e10}) {
                assertTrue(real.allReduce(n, p, 8).seconds() < real.flat(Collective.ALL_REDUCE, n, p, 8).seconds(),
                        p + " " + n);
            }
        }
        assertEquals(real.flat(Collective.ALL_REDUCE, 1e8, 8, 8), real.allReduce(1e8, 8, 8));
    }

    @Test
    void badPlacementsAreRefused() {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> F.allReduce(1, 16, 3));
        assertTrue(e.getMessage().contains("ranksPerNode must divide ranks (16), got 3"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> F.allReduce(1, 16, 8));
        assertTrue(e.getMessage().contains("exceeds gpusPerNode 4"), e.getMessage());
        assertThrows(IllegalArgumentException.class, () -> new Fabric(FAST, SLOW, 0));
    }
}
