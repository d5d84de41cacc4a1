package io.qkern.dist.plan;

import java.util.List;

/**
 * Fits a link's alpha and beta to measured collective times. Each sample says how many alphas
 * and how many bytes-over-beta its collective pays in the model ({@link CollectiveCost.Algorithm}
 * gives both), so every sample is linear in the unknowns x = alpha and y = 1 / beta:
 * {@code seconds = latencySteps x + byteTerms y}.
 *
 * <p>The fit minimises the squared <em>relative</em> error, sum ((t_i - A_i x - N_i y) / t_i)^2
 * (weighted least squares with weights 1 / t_i^2), because the sizes span orders of magnitude and
 * plain least squares would ignore the small, latency-bound ones. The 2 x 2 normal equations are
 * solved directly. Negative values are not physical: if x comes out negative it is pinned to 0
 * and y refitted alone; a y that is not positive (times that do not grow with size) is an error.
 */
public final class AlphaBetaFit {
    private AlphaBetaFit() {}

    /** One measurement: seconds = latencySteps alpha + byteTerms / beta. */
    public record Sample(double latencySteps, double byteTerms, double seconds) {
        public Sample {
            if (!(latencySteps >= 0) || !(byteTerms >= 0) || !Double.isFinite(latencySteps)
                    || !Double.isFinite(byteTerms)) {
                throw new IllegalArgumentException("a sample's latency steps and byte terms must be finite and >= 0, got "
                        + latencySteps + ", " + byteTerms);
            }
            if (!(seconds > 0) || !Double.isFinite(seconds)) {
                throw new IllegalArgumentException("a sample's time must be finite and > 0, got " + seconds);
            }
        }

        /** A sample of {@code algorithm} among {@code p} ranks moving {@code bytes} (its model's n). */
        public static Sample of(CollectiveCost.Algorithm algorithm, int p, double bytes, double seconds) {
            return new Sample(algorithm.latencySteps(p), algorithm.byteFactor(p) * bytes, seconds);
        }
    }

    /** The fitted alpha (s) and beta (bytes/s), and the root-mean-square relative error of the fit. */
    public record Result(double alpha, double beta, double rmsRelativeError) {
        /** The fitted values as a link named {@code measured}. */
        public Link link(String source) {
            return Link.measured(alpha, beta, source);
        }
    }

    /** Fits alpha and beta to {@code samples} (at least two, with different byte terms). */
    public static Result fit(List<Sample> samples) {
        if (samples.size() < 2) {
            throw new IllegalArgumentException("fitting alpha and beta needs at least 2 samples, got " + samples.size());
        }
        double saa = 0, san = 0, snn = 0, sat = 0, snt = 0;
        for (Sample s : samples) {
            double w = 1 / (s.seconds() * s.seconds());
            saa += w * s.latencySteps() * s.latencySteps();
            san += w * s.latencySteps() * s.byteTerms();
            snn += w * s.byteTerms() * s.byteTerms();
            sat += w * s.latencySteps() * s.seconds();
            snt += w * s.byteTerms() * s.seconds();
        }
        if (snn == 0) {
            throw new IllegalArgumentException("cannot fit beta: no sample moves any bytes");
        }
        double det = saa * snn - san * san;
        double x;
        double y;
        if (saa == 0 || det <= 1e-12 * saa * snn) {
            // The samples cannot tell latency from bandwidth apart (e.g. one size only): bandwidth alone.
            x = 0;
            y = snt / snn;
        } else {
            x = (sat * snn - snt * san) / det;
            y = (saa * snt - san * sat) / det;
            if (x < 0) {
                x = 0;
                y = snt / snn;
            }
        }
        if (!(y > 0)) {
            throw new IllegalArgumentException("cannot fit beta: the times do not grow with the message size");
        }
        double sq = 0;
        for (Sample s : samples) {
            double r = (s.seconds() - s.latencySteps() * x - s.byteTerms() * y) / s.seconds();
            sq += r * r;
        }
        return new Result(x, 1 / y, Math.sqrt(sq / samples.size()));
    }
}
