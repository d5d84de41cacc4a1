package io.qkern.dist;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.time.Duration;
import java.util.List;
import java.util.Random;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.jupiter.api.Test;

/**
 * The NCCL bootstrap over a host communicator (what {@code NcclCommunicator.initRank(bootstrap, ...)}
 * does before NCCL is called): only rank 0 creates the unique id, and every rank ends up with its
 * exact 128 bytes. Runs without NCCL, over in-process ranks (MPI ranks take the same path).
 */
class NcclBootstrapTest {
    @Test
    void rankZeroCreatesTheIdAndEveryRankReceivesItsBytes() {
        byte[] made = new byte[NcclUniqueId.BYTES];
        new Random(5).nextBytes(made);
        AtomicInteger creations = new AtomicInteger();
        DeviceMesh mesh = DeviceMesh.cpu(3);
        List<Communicator> comms = mesh.inProcess(Duration.ofSeconds(30));
        List<byte[]> got = mesh.run(comms, c -> NcclCommunicator.shareUniqueId(c, () -> {
            creations.incrementAndGet();
            return NcclUniqueId.of(made);
        }).toBytes());
        comms.forEach(Communicator::close);
        for (byte[] b : got) {
            assertArrayEquals(made, b);
        }
        org.junit.jupiter.api.Assertions.assertEquals(1, creations.get(), "only rank 0 creates an id");
        try (Communicator onGpu = new OnDevice(InProcessCommunicator.create(1, Duration.ofSeconds(1)).get(0))) {
            assertThrows(IllegalArgumentException.class, () -> NcclCommunicator.shareUniqueId(onGpu,
                    () -> NcclUniqueId.of(made)));
        }
    }

    /** A communicator that claims a GPU, to check the bootstrap refuses it. */
    private record OnDevice(Communicator inner) implements Communicator {
        public int rank() { return inner.rank(); }
        public int size() { return inner.size(); }
        public io.qkern.Device device() { return io.qkern.Device.cuda(0); }
        public String backend() { return "test"; }
        public Duration timeout() { return inner.timeout(); }
        public void allReduce(io.qkern.Tensor s, io.qkern.Tensor r, ReduceOp op) { inner.allReduce(s, r, op); }
        public void allGather(io.qkern.Tensor s, io.qkern.Tensor r) { inner.allGather(s, r); }
        public void reduceScatter(io.qkern.Tensor s, io.qkern.Tensor r, ReduceOp op) { inner.reduceScatter(s, r, op); }
        public void broadcast(io.qkern.Tensor b, int root) { inner.broadcast(b, root); }
        public void barrier() { inner.barrier(); }
        public void send(io.qkern.Tensor b, int peer) { inner.send(b, peer); }
        public void recv(io.qkern.Tensor b, int peer) { inner.recv(b, peer); }
        public Communicator split(int color, int key) { return inner.split(color, key); }
        public void abort(String reason) { inner.abort(reason); }
        public void close() { inner.close(); }
    }
}
