package io.qkern.dist;

/** Child JVM of NcclDiscoveryTest: what the facade says under the JVM's own -Dqkern.nccl.path. */
public final class NcclProbeMain {
    private NcclProbeMain() {
    }

    public static void main(String[] args) {
        System.out.println("available=" + Nccl.available());
        System.out.println("describe=" + Nccl.describe());
        try {
            NcclUniqueId.create();
            System.out.println("create=ok");
        } catch (CommunicatorException e) {
            System.out.println("create=" + e.kind() + " " + e.getMessage());
        }
    }
}
