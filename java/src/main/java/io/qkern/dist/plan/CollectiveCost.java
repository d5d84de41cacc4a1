package io.qkern.dist.plan;

import java.util.List;

/**
 * Alpha-beta costs of the collectives over one {@link Link} among {@code p} ranks. Every algorithm
 * costs {@code latencySteps(p) * alpha + byteFactor(p) * n / beta} seconds, where {@code n} is:
 * the buffer for all-reduce and broadcast, the whole <em>output</em> (every rank's piece) for
 * all-gather, the whole <em>input</em> for reduce-scatter. {@code L = ceil(log2 p)}.
 *
 * <table>
 *   <caption>algorithms</caption>
 *   <tr><th>algorithm</th><th>latency steps</th><th>byte factor</th></tr>
 *   <tr><td>ring all-reduce</td><td>2(p-1)</td><td>2(p-1)/p</td></tr>
 *   <tr><td>recursive-doubling all-reduce</td><td>L</td><td>L</td></tr>
 *   <tr><td>ring all-gather / reduce-scatter</td><td>p-1</td><td>(p-1)/p</td></tr>
 *   <tr><td>recursive-doubling (Bruck) all-gather / recursive-halving reduce-scatter</td><td>L</td><td>(p-1)/p</td></tr>
 *   <tr><td>binomial-tree broadcast</td><td>L</td><td>L</td></tr>
 *   <tr><td>scatter + ring all-gather broadcast (van de Geijn)</td><td>L + p-1</td><td>2(p-1)/p</td></tr>
 * </table>
 *
 * A collective costs the cheapest of its algorithms ({@link #cost}): the ring wins for large
 * messages (bandwidth-bound), the logarithmic variants for small ones (latency-bound), as NCCL and
 * MPI libraries choose by size. In this model the logarithmic all-gather / reduce-scatter move as
 * many bytes as the ring, so they always win; the ring's real advantage (nearest-neighbour traffic,
 * no contention) is outside an alpha-beta model. Not modelled: reduction arithmetic, congestion,
 * protocol switches inside a library, non-power-of-two penalties of recursive doubling (its
 * {@code ceil(log2 p)} steps are a lower bound there). With {@code p = 1} every cost is zero.
 */
public final class CollectiveCost {
    private CollectiveCost() {}

    /** The collectives the model prices. */
    public enum Collective {
        ALL_REDUCE(List.of(Algorithm.RING_ALL_REDUCE, Algorithm.RECURSIVE_DOUBLING_ALL_REDUCE)),
        ALL_GATHER(List.of(Algorithm.RING_ALL_GATHER, Algorithm.RECURSIVE_DOUBLING_ALL_GATHER)),
        REDUCE_SCATTER(List.of(Algorithm.RING_REDUCE_SCATTER, Algorithm.RECURSIVE_HALVING_REDUCE_SCATTER)),
        BROADCAST(List.of(Algorithm.BINOMIAL_TREE_BROADCAST, Algorithm.SCATTER_ALLGATHER_BROADCAST));

        private final List<Algorithm> algorithms;

        Collective(List<Algorithm> algorithms) {
            this.algorithms = algorithms;
        }

        /** The algorithms {@link #cost} chooses from. */
        public List<Algorithm> algorithms() {
            return algorithms;
        }
    }

    /** One algorithm's coefficients: seconds = latencySteps(p) alpha + byteFactor(p) n / beta. */
    public enum Algorithm {
        RING_ALL_REDUCE("ring"),
        RECURSIVE_DOUBLING_ALL_REDUCE("recursive doubling"),
        RING_ALL_GATHER("ring"),
        RECURSIVE_DOUBLING_ALL_GATHER("recursive doubling"),
        RING_REDUCE_SCATTER("ring"),
        RECURSIVE_HALVING_REDUCE_SCATTER("recursive halving"),
        BINOMIAL_TREE_BROADCAST("binomial tree"),
        SCATTER_ALLGATHER_BROADCAST("scatter+ring all-gather");

        private final String label;

        Algorithm(String label) {
            this.label = label;
        }

        /** Short name, e.g. "ring". */
        public String label() {
            return label;
        }

        /** How many alphas the algorithm pays among {@code p} ranks. */
        public double latencySteps(int p) {
            checkRanks(p);
            double log = ceilLog2(p);
            return switch (this) {
                case RING_ALL_REDUCE -> 2.0 * (p - 1);
                case RING_ALL_GATHER, RING_REDUCE_SCATTER -> p - 1;
                case RECURSIVE_DOUBLING_ALL_REDUCE, RECURSIVE_DOUBLING_ALL_GATHER, RECURSIVE_HALVING_REDUCE_SCATTER,
                        BINOMIAL_TREE_BROADCAST -> log;
                case SCATTER_ALLGATHER_BROADCAST -> log + p - 1;
            };
        }

        /** The multiple of n / beta the algorithm moves through each rank's link. */
        public double byteFactor(int p) {
            checkRanks(p);
            return switch (this) {
                case RING_ALL_REDUCE, SCATTER_ALLGATHER_BROADCAST -> 2.0 * (p - 1) / p;
                case RING_ALL_GATHER, RING_REDUCE_SCATTER, RECURSIVE_DOUBLING_ALL_GATHER,
                        RECURSIVE_HALVING_REDUCE_SCATTER -> (double) (p - 1) / p;
                case RECURSIVE_DOUBLING_ALL_REDUCE, BINOMIAL_TREE_BROADCAST -> ceilLog2(p);
            };
        }

        /** Seconds for {@code bytes} among {@code p} ranks over {@code link}. */
        public double seconds(Link link, int p, double bytes) {
            checkBytes(bytes);
            return latencySteps(p) * link.alpha() + byteFactor(p) * bytes / link.beta();
        }
    }

    /** A predicted time and the algorithm (or composition of algorithms and links) it assumes. */
    public record Cost(double seconds, String algorithm) {
        /** Zero time: nothing to communicate. */
        public static final Cost NONE = new Cost(0, "none");

        /** Sequential composition: the times add. */
        public Cost then(Cost next) {
            if (equals(NONE)) {
                return next;
            }
            if (next.equals(NONE)) {
                return this;
            }
            return new Cost(seconds + next.seconds, algorithm + " + " + next.algorithm);
        }
    }

    /** The cheapest algorithm for {@code collective} of {@code bytes} among {@code p} ranks over {@code link}. */
    public static Cost cost(Collective collective, Link link, int p, double bytes) {
        checkRanks(p);
        checkBytes(bytes);
        if (p == 1 || bytes == 0) {
            return Cost.NONE;
        }
        Algorithm best = null;
        double bestSeconds = Double.POSITIVE_INFINITY;
        for (Algorithm a : collective.algorithms()) {
            double s = a.seconds(link, p, bytes);
            if (s < bestSeconds) {
                bestSeconds = s;
                best = a;
            }
        }
        return new Cost(bestSeconds, best.label() + " " + name(collective) + " " + link.name() + " x" + p);
    }

    /** The cheapest all-reduce of a {@code bytes} buffer. */
    public static Cost allReduce(Link link, int p, double bytes) {
        return cost(Collective.ALL_REDUCE, link, p, bytes);
    }

    /** The cheapest all-gather producing {@code outputBytes} (p pieces of outputBytes / p). */
    public static Cost allGather(Link link, int p, double outputBytes) {
        return cost(Collective.ALL_GATHER, link, p, outputBytes);
    }

    /** The cheapest reduce-scatter of an {@code inputBytes} buffer (each rank keeps inputBytes / p). */
    public static Cost reduceScatter(Link link, int p, double inputBytes) {
        return cost(Collective.REDUCE_SCATTER, link, p, inputBytes);
    }

    /** The cheapest broadcast of a {@code bytes} buffer. */
    public static Cost broadcast(Link link, int p, double bytes) {
        return cost(Collective.BROADCAST, link, p, bytes);
    }

    static String name(Collective c) {
        return switch (c) {
            case ALL_REDUCE -> "all-reduce";
            case ALL_GATHER -> "all-gather";
            case REDUCE_SCATTER -> "reduce-scatter";
            case BROADCAST -> "broadcast";
        };
    }

    static double ceilLog2(int p) {
        return p <= 1 ? 0 : 32 - Integer.numberOfLeadingZeros(p - 1);
    }

    static void checkRanks(int p) {
        if (p < 1) {
            throw new IllegalArgumentException("the number of ranks must be >= 1, got " + p);
        }
    }

    static void checkBytes(double bytes) {
        if (!(bytes >= 0) || !Double.isFinite(bytes)) {
            throw new IllegalArgumentException("message bytes must be finite and >= 0, got " + bytes);
        }
    }
}
