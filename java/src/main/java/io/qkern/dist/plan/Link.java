package io.qkern.dist.plan;

import java.util.List;
import java.util.Locale;

/**
 * One kind of link between two GPUs in the alpha-beta model: a message of {@code n} bytes takes
 * {@code alpha + n / beta} seconds. {@code alpha} is the per-message latency (software and wire,
 * as a collective library sees it) in seconds; {@code beta} is the bandwidth in bytes/s <em>per
 * direction per GPU</em> (a GPU can send and receive {@code beta} at once).
 *
 * <p>The defaults are vendor peak figures and typical small-message latencies, not measurements:
 * <ul>
 *   <li>{@link #NVLINK}: NVLink 4 on H100 SXM, 18 links, 900 GB/s bidirectional = 450 GB/s per
 *       direction per GPU (NVIDIA H100 datasheet); alpha 3 us, NCCL's typical intra-node
 *       small-message step latency.</li>
 *   <li>{@link #PCIE}: PCIe Gen5 x16, 32 GT/s x 16 lanes with 128b/130b coding = ~63 GB/s per
 *       direction, rounded to 64 GB/s (PCI-SIG 5.0); alpha 5 us (a copy through the host bridge).</li>
 *   <li>{@link #INFINIBAND}: InfiniBand NDR, 400 Gb/s per NIC = 50 GB/s per direction, one NIC per
 *       GPU as in a DGX H100 (NVIDIA ConnectX-7); alpha 5 us (RDMA plus the collective's protocol).</li>
 *   <li>{@link #ETHERNET}: 100 GbE, 12.5 GB/s per direction per GPU; alpha 25 us (TCP sockets).</li>
 * </ul>
 * {@link #measured} builds a link from a fit on this machine (see {@link AlphaBetaFit}).
 */
public record Link(String name, double alpha, double beta, String source) {

    public static final Link NVLINK = new Link("nvlink", 3e-6, 450e9,
            "NVLink 4 (H100 SXM): 900 GB/s bidirectional = 450 GB/s per direction per GPU; 3 us latency");
    public static final Link PCIE = new Link("pcie", 5e-6, 64e9,
            "PCIe Gen5 x16: ~63 GB/s per direction (32 GT/s x 16, 128b/130b); 5 us latency");
    public static final Link INFINIBAND = new Link("ib", 5e-6, 50e9,
            "InfiniBand NDR: 400 Gb/s = 50 GB/s per direction, one NIC per GPU; 5 us latency");
    public static final Link ETHERNET = new Link("ethernet", 25e-6, 12.5e9,
            "100 GbE: 12.5 GB/s per direction per GPU; 25 us latency (TCP)");

    /** The preset links, in the order {@code qkern plan} lists them. */
    public static final List<Link> PRESETS = List.of(NVLINK, PCIE, INFINIBAND, ETHERNET);

    public Link {
        if (name == null || name.isBlank()) {
            throw new IllegalArgumentException("a link needs a name");
        }
        if (!(alpha >= 0) || !Double.isFinite(alpha)) {
            throw new IllegalArgumentException("link " + name + ": alpha (latency, s) must be finite and >= 0, got " + alpha);
        }
        if (!(beta > 0) || !Double.isFinite(beta)) {
            throw new IllegalArgumentException("link " + name + ": beta (bytes/s) must be finite and > 0, got " + beta);
        }
        source = source == null ? "" : source;
    }

    /** A link fitted on this machine. */
    public static Link measured(double alpha, double beta, String source) {
        return new Link("measured", alpha, beta, source);
    }

    /**
     * A preset by name: {@code nvlink}, {@code pcie}, {@code ib} (or {@code infiniband}),
     * {@code ethernet} (or {@code eth}), case-insensitive.
     */
    public static Link preset(String name) {
        String n = name.toLowerCase(Locale.ROOT);
        return switch (n) {
            case "nvlink" -> NVLINK;
            case "pcie" -> PCIE;
            case "ib", "infiniband" -> INFINIBAND;
            case "ethernet", "eth" -> ETHERNET;
            default -> throw new IllegalArgumentException("unknown link \"" + name
                    + "\" (known: nvlink, pcie, ib, ethernet, measured)");
        };
    }

    /** Seconds to move one message of {@code bytes} over this link: alpha + bytes / beta. */
    public double seconds(double bytes) {
        return alpha + bytes / beta;
    }

    /** E.g. {@code nvlink (3.0 us, 450.0 GB/s)}. */
    public String describe() {
        return String.format(Locale.ROOT, "%s (%.1f us, %.1f GB/s)", name, alpha * 1e6, beta / 1e9);
    }
}
