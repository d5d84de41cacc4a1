package io.qkern.dist.plan;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.qkern.dist.plan.AlphaBetaFit.Result;
import io.qkern.dist.plan.AlphaBetaFit.Sample;
import io.qkern.dist.plan.CollectiveCost.Algorithm;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import org.junit.jupiter.api.Test;

/** The fit recovers known alpha and beta from synthetic data. */
class AlphaBetaFitTest {

    private static List<Sample> synthetic(double alpha, double beta, double noise, Random rnd) {
        List<Sample> s = new ArrayList<>();
        for (int p : new int[] {2, 4}) {
            for (double bytes = 1024; bytes <= (64 << 20); bytes *= 4) {
                for (Algorithm a : List.of(Algorithm.RING_ALL_REDUCE, Algorithm.RING_ALL_GATHER)) {
                    double t = a.seconds(new Link("truth", alpha, beta, ""), p, bytes);
                    s.add(Sample.of(a, p, bytes, t * (1 + noise * rnd.nextGaussian())));
                }
            }
        }
        return s;
    }

    @Test
    void exactDataGivesExactValues() {
        Result r = AlphaBetaFit.fit(synthetic(7e-6, 12e9, 0, new Random(1)));
        assertEquals(7e-6, r.alpha(), 1e-15);
        assertEquals(12e9, r.beta(), 1e-3);
        assertEquals(0, r.rmsRelativeError(), 1e-12);
    }

    @Test
    void noisyDataGivesValuesWithinAFewPercent() {
        Random rnd = new Random();
        for (int trial = 0; trial < 20; trial++) {
            double alpha = 1e-6 * (1 + 50 * rnd.nextDouble());
            double beta = 1e9 * (1 + 100 * rnd.nextDouble());
            Result r = AlphaBetaFit.fit(synthetic(alpha, beta, 0.03, rnd));
            assertEquals(alpha, r.alpha(), 0.1 * alpha, "trial " + trial);
            assertEquals(beta, r.beta(), 0.05 * beta, "trial " + trial);
            assertTrue(r.rmsRelativeError() > 0.01 && r.rmsRelativeError() < 0.06, "rms " + r.rmsRelativeError());
        }
    }

    @Test
    void aNegativeInterceptIsPinnedToZero() {
        // Times exactly proportional to size minus a little: the unconstrained fit gives alpha < 0.
        List<Sample> s = List.of(new Sample(2, 1e6, 1e-4 - 1e-6), new Sample(2, 1e8, 1e-2 - 1e-6));
        Result r = AlphaBetaFit.fit(s);
        assertEquals(0, r.alpha());
        assertEquals(1e10, r.beta(), 0.01e10);
    }

    @Test
    void unusableSamplesAreRefused() {
        LayerPlanTest.assertMessage("at least 2 samples, got 1", () -> AlphaBetaFit.fit(List.of(new Sample(1, 1, 1))));
        LayerPlanTest.assertMessage("do not grow with the message size",
                () -> AlphaBetaFit.fit(List.of(new Sample(1, 1e3, 2e-3), new Sample(1, 1e6, 1e-3))));
        LayerPlanTest.assertMessage("time must be finite and > 0", () -> new Sample(1, 1, 0));
        assertThrows(IllegalArgumentException.class, () -> AlphaBetaFit.fit(List.of(new Sample(1, 0, 1), new Sample(2, 0, 2))));
    }
}
