package io.qkern.dist.plan;

import io.qkern.dist.plan.CollectiveCost.Cost;
import java.util.Locale;

/**
 * Nodes of {@code gpusPerNode} GPUs joined by an {@code intra}-node link, the nodes joined by an
 * {@code inter}-node link with one NIC per GPU (rail-optimised, as in a DGX H100: each GPU's
 * inter-node traffic uses its own NIC, so groups working at once do not share bandwidth).
 *
 * <p>A group of {@code ranks} GPUs with {@code ranksPerNode} of them on each node
 * ({@code nodes = ranks / ranksPerNode}) runs a collective:
 * <ul>
 *   <li>on one node: flat over the intra-node link;</li>
 *   <li>one rank per node: flat over the inter-node link;</li>
 *   <li>otherwise hierarchically (two levels, as NCCL's tree / hierarchical all-reduce):
 *       all-reduce = reduce-scatter inside the node, all-reduce of the {@code n / ranksPerNode}
 *       shard across nodes (every local rank at once, on its own NIC), all-gather inside the node;
 *       all-gather = all-gather across nodes of {@code n / ranksPerNode}, then inside the node;
 *       reduce-scatter = inside the node, then across nodes; broadcast = across nodes, then inside.</li>
 * </ul>
 * {@link #flat} prices the same group as one flat ring over the slower link, for comparison.
 */
public record Fabric(Link intra, Link inter, int gpusPerNode) {

    /** The default node size. */
    public static final int DEFAULT_GPUS_PER_NODE = 8;

    public Fabric {
        if (intra == null || inter == null) {
            throw new IllegalArgumentException("a fabric needs an intra-node and an inter-node link");
        }
        if (gpusPerNode < 1) {
            throw new IllegalArgumentException("gpusPerNode must be >= 1, got " + gpusPerNode);
        }
    }

    /** All-reduce of a {@code bytes} buffer in a group of {@code ranks}, {@code ranksPerNode} per node. */
    public Cost allReduce(double bytes, int ranks, int ranksPerNode) {
        int nodes = nodes(ranks, ranksPerNode);
        if (nodes == 1) {
            return CollectiveCost.allReduce(intra, ranks, bytes);
        }
        if (ranksPerNode == 1) {
            return CollectiveCost.allReduce(inter, ranks, bytes);
        }
        return CollectiveCost.reduceScatter(intra, ranksPerNode, bytes)
                .then(CollectiveCost.allReduce(inter, nodes, bytes / ranksPerNode))
                .then(CollectiveCost.allGather(intra, ranksPerNode, bytes));
    }

    /** All-gather producing {@code outputBytes} in a group of {@code ranks}, {@code ranksPerNode} per node. */
    public Cost allGather(double outputBytes, int ranks, int ranksPerNode) {
        int nodes = nodes(ranks, ranksPerNode);
        if (nodes == 1) {
            return CollectiveCost.allGather(intra, ranks, outputBytes);
        }
        if (ranksPerNode == 1) {
            return CollectiveCost.allGather(inter, ranks, outputBytes);
        }
        return CollectiveCost.allGather(inter, nodes, outputBytes / ranksPerNode)
                .then(CollectiveCost.allGather(intra, ranksPerNode, outputBytes));
    }

    /** Reduce-scatter of an {@code inputBytes} buffer in a group of {@code ranks}, {@code ranksPerNode} per node. */
    public Cost reduceScatter(double inputBytes, int ranks, int ranksPerNode) {
        int nodes = nodes(ranks, ranksPerNode);
        if (nodes == 1) {
            return CollectiveCost.reduceScatter(intra, ranks, inputBytes);
        }
        if (ranksPerNode == 1) {
            return CollectiveCost.reduceScatter(inter, ranks, inputBytes);
        }
        return CollectiveCost.reduceScatter(intra, ranksPerNode, inputBytes)
                .then(CollectiveCost.reduceScatter(inter, nodes, inputBytes / ranksPerNode));
    }

    /** Broadcast of a {@code bytes} buffer in a group of {@code ranks}, {@code ranksPerNode} per node. */
    public Cost broadcast(double bytes, int ranks, int ranksPerNode) {
        int nodes = nodes(ranks, ranksPerNode);
        if (nodes == 1) {
            return CollectiveCost.broadcast(intra, ranks, bytes);
        }
        if (ranksPerNode == 1) {
            return CollectiveCost.broadcast(inter, ranks, bytes);
        }
        return CollectiveCost.broadcast(inter, nodes, bytes).then(CollectiveCost.broadcast(intra, ranksPerNode, bytes));
    }

    /**
     * The same group as one flat collective: over the intra-node link when it fits on one node,
     * otherwise over the slower of the two links (every step of a flat ring waits for it).
     */
    public Cost flat(CollectiveCost.Collective collective, double bytes, int ranks, int ranksPerNode) {
        int nodes = nodes(ranks, ranksPerNode);
        Link slow = nodes == 1 ? intra : slower(intra, inter);
        return CollectiveCost.cost(collective, slow, ranks, bytes);
    }

    /** E.g. {@code nvlink (3.0 us, 450.0 GB/s) x 8 per node, ib (5.0 us, 50.0 GB/s) between nodes}. */
    public String describe() {
        return String.format(Locale.ROOT, "%s x %d per node, %s between nodes", intra.describe(), gpusPerNode,
                inter.describe());
    }

    private int nodes(int ranks, int ranksPerNode) {
        if (ranks < 1) {
            throw new IllegalArgumentException("ranks must be >= 1, got " + ranks);
        }
        if (ranksPerNode < 1 || ranksPerNode > ranks || ranks % ranksPerNode != 0) {
            throw new IllegalArgumentException("ranksPerNode must divide ranks (" + ranks + "), got " + ranksPerNode);
        }
        if (ranksPerNode > gpusPerNode) {
            throw new IllegalArgumentException("ranksPerNode " + ranksPerNode + " exceeds gpusPerNode " + gpusPerNode);
        }
        return ranks / ranksPerNode;
    }

    private static Link slower(Link a, Link b) {
        // Slower for large messages: the bandwidth decides what a flat ring is limited by.
        if (a.beta() != b.beta()) {
            return a.beta() < b.beta() ? a : b;
        }
        return a.alpha() >= b.alpha() ? a : b;
    }
}
