package io.qkern.dist.plan;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.qkern.dist.plan.CollectiveCost.Algorithm;
import io.qkern.dist.plan.CollectiveCost.Collective;
import io.qkern.dist.plan.CollectiveCost.Cost;
import org.junit.jupiter.api.Test;

/** The alpha-beta formulas against values worked out by hand, and their limits. */
class CollectiveCostTest {
    // Round numbers so the hand computations are exact: 10 us, 1e9 bytes/s.
    private static final Link L = new Link("test", 10e-6, 1e9, "round numbers");

    @Test
    void ringAllReduceIsTwoPMinusOneOverPTimesNOverBPlusTwoPMinusOneAlphas() {
        // p = 8, n = 8e9: 2*7/8 * 8 s = 14 s, plus 14 * 10 us.
        assertEquals(14 + 14 * 10e-6, Algorithm.RING_ALL_REDUCE.seconds(L, 8, 8e9), 1e-12);
        // The large message is bandwidth-bound, so the ring is the choice.
        Cost c = CollectiveCost.allReduce(L, 8, 8e9);
        assertEquals(14 + 14 * 10e-6, c.seconds(), 1e-12);
        assertTrue(c.algorithm().startsWith("ring all-reduce test x8"), c.algorithm());
    }

    @Test
    void tinyMessagesTakeTheLatencyBoundVariant() {
        // p = 8, n = 8 bytes: ring 14 alphas (+14/8 ns); recursive doubling 3 alphas (+24 ns).
        double ring = Algorithm.RING_ALL_REDUCE.seconds(L, 8, 8);
        double rd = Algorithm.RECURSIVE_DOUBLING_ALL_REDUCE.seconds(L, 8, 8);
        assertEquals(14 * 10e-6 + 1.75 * 8 / 1e9, ring, 1e-15);
        assertEquals(3 * 10e-6 + 3 * 8e-9, rd, 1e-15);
        Cost c = CollectiveCost.allReduce(L, 8, 8);
        assertEquals(rd, c.seconds(), 0);
        assertTrue(c.algorithm().startsWith("recursive doubling"), c.algorithm());
        // Latency-bound: the time is within a hair of the latency steps alone.
        assertEquals(3 * 10e-6, c.seconds(), 1e-7);
    }

    @Test
    void theChoiceSwitchesWhereTheTwoFormulasCross() {
        // ring = 2(p-1)a + 2(p-1)/p n/B, rd = L a + L n/B; at p = 8 they cross at
        // 11 a = (3 - 1.75) n/B -> n = 11 * 10 us * 1e9 / 1.25 = 88000 bytes.
        assertTrue(CollectiveCost.allReduce(L, 8, 87_000).algorithm().startsWith("recursive doubling"));
        assertTrue(CollectiveCost.allReduce(L, 8, 89_000).algorithm().startsWith("ring"));
    }

    @Test
    void allGatherReduceScatterAndBroadcastByHand() {
        // all-gather of 4e9 output bytes among 4: ring 3 a + 3/4 * 4 s; Bruck 2 a + 3 s.
        assertEquals(3 * 10e-6 + 3, Algorithm.RING_ALL_GATHER.seconds(L, 4, 4e9), 1e-12);
        assertEquals(2 * 10e-6 + 3, CollectiveCost.allGather(L, 4, 4e9).seconds(), 1e-12);
        assertEquals(2 * 10e-6 + 3, CollectiveCost.reduceScatter(L, 4, 4e9).seconds(), 1e-12);
        assertEquals(3 * 10e-6 + 3, Algorithm.RING_REDUCE_SCATTER.seconds(L, 4, 4e9), 1e-12);
        // broadcast of 4e9 among 4: tree 2 a + 2 * 4 s = 8 s; scatter + ring all-gather
        // (2 + 3) a + 2 * 3/4 * 4 s = 6 s.
        assertEquals(2 * 10e-6 + 8, Algorithm.BINOMIAL_TREE_BROADCAST.seconds(L, 4, 4e9), 1e-12);
        assertEquals(5 * 10e-6 + 6, CollectiveCost.broadcast(L, 4, 4e9).seconds(), 1e-12);
        // ... and 4 bytes: the tree (2 a + 8 ns) beats 5 a + 6 ns.
        assertEquals(2 * 10e-6 + 8e-9, CollectiveCost.broadcast(L, 4, 4).seconds(), 1e-15);
        // Non-power-of-two p: ceil(log2 6) = 3 steps.
        assertEquals(3, Algorithm.RECURSIVE_DOUBLING_ALL_GATHER.latencySteps(6));
    }

    @Test
    void oneRankCommunicatesNothing() {
        for (Collective c : Collective.values()) {
            assertEquals(0, CollectiveCost.cost(c, L, 1, 1e12).seconds(), c.toString());
            for (Algorithm a : c.algorithms()) {
                assertEquals(0, a.seconds(L, 1, 1e12), a.toString());
            }
        }
        assertEquals(0, CollectiveCost.allReduce(L, 64, 0).seconds());
    }

    @Test
    void hugeMessagesApproachTheBandwidthBoundAndCostsGrowWithRanksAndBytes() {
        double n = 1e12;
        for (int p : new int[] {2, 8, 64, 1024}) {
            double bound = 2.0 * (p - 1) / p * n / L.beta();
            double t = CollectiveCost.allReduce(L, p, n).seconds();
            assertTrue(t >= bound && (t - bound) / bound < 1e-3, p + ": " + t + " vs " + bound);
        }
        double previous = 0;
        for (int p = 2; p <= 1024; p *= 2) {
            double t = CollectiveCost.allReduce(L, p, 1e6).seconds();
            assertTrue(t > previous, "p " + p);
            previous = t;
        }
        previous = 0;
        for (double bytes = 1; bytes <= 1e12; bytes *= 10) {
            double t = CollectiveCost.allReduce(L, 16, bytes).seconds();
            assertTrue(t > previous, "bytes " + bytes);
            previous = t;
        }
    }

    @Test
    void badArgumentsAreNamed() {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> CollectiveCost.allReduce(L, 0, 1));
        assertTrue(e.getMessage().contains("ranks must be >= 1, got 0"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> CollectiveCost.allReduce(L, 2, -1));
        assertTrue(e.getMessage().contains("bytes"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> new Link("x", 1e-6, 0, ""));
        assertTrue(e.getMessage().contains("beta"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> Link.preset("carrier-pigeon"));
        assertTrue(e.getMessage().contains("unknown link \"carrier-pigeon\""), e.getMessage());
    }

    @Test
    void presetsCarryTheVendorFigures() {
        assertEquals(450e9, Link.preset("nvlink").beta());
        assertEquals(64e9, Link.preset("PCIe").beta());
        assertEquals(400e9 / 8, Link.preset("infiniband").beta());
        assertEquals(100e9 / 8, Link.preset("ethernet").beta());
        for (Link l : Link.PRESETS) {
            assertTrue(l.alpha() > 0 && l.alpha() < 100e-6 && !l.source().isEmpty(), l.toString());
        }
    }
}
