package io.qkern.dist;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Qkern;
import io.qkern.Tensor;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.time.Duration;
import java.util.List;
import java.util.Random;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/**
 * A 1-rank NCCL communicator on cuda:0 running every collective against a host reference. Runs only
 * where NCCL and a CUDA device are present (reported as skipped elsewhere); it has never run: the
 * machine it was written on has neither. With one rank, a reduction of x is x itself, a gather is a
 * copy, and send/recv to self are not allowed by the contract, so those are checked for rejection.
 */
class NcclGpuTest {
    static NcclCommunicator comm;

    @BeforeAll
    static void open() {
        if (!Nccl.available() || !Qkern.cudaAvailable()) {
            return; // each test reports itself skipped, with the reason
        }
        // both init paths: the single-process clique, and the rendezvous through the TCP store
        List<NcclCommunicator> all = NcclCommunicator.initAll(DeviceMesh.cuda(0), Duration.ofSeconds(30));
        all.get(0).barrier();
        all.get(0).close();
        try (TcpStore store = TcpStore.host(new InetSocketAddress(InetAddress.getLoopbackAddress(), 0),
                Duration.ofSeconds(30))) {
            comm = NcclCommunicator.initRank(store, "gpu-test", 0, 1, Device.cuda(0), Duration.ofSeconds(30));
        }
    }

    @AfterAll
    static void close() {
        if (comm != null) {
            comm.close();
        }
    }

    private static float[] random(int n, long seed) {
        Random r = new Random(seed);
        float[] x = new float[n];
        for (int i = 0; i < n; i++) {
            x[i] = (float) r.nextGaussian();
        }
        return x;
    }

    private static Tensor onDevice(float[] x, long... shape) {
        try (Tensor host = Tensor.ofFloats(x, shape)) {
            return host.copyTo(Device.cuda(0));
        }
    }

    private static Tensor poisoned(long... shape) {
        Tensor t = Tensor.allocate(DType.F32, Device.cuda(0), shape);
        t.fillBytes(0xFF); // NaN: an element NCCL does not write shows
        return t;
    }

    @Test
    void everyCollectiveMatchesTheHostReference() {
        Assumptions.assumeTrue(Nccl.available(), () -> "NCCL not found: " + Nccl.searched());
        Assumptions.assumeTrue(Qkern.cudaAvailable(), () -> "no usable CUDA device: " + Qkern.info().cudaStatus());
        float[] x = random(1027, System.nanoTime());
        for (ReduceOp op : ReduceOp.values()) {
            try (Tensor send = onDevice(x, 1027); Tensor recv = poisoned(1027)) {
                comm.allReduce(send, recv, op);
                assertArrayEquals(x, recv.toFloatArray(), 0f, "allReduce " + op);
                comm.reduceScatter(send, recv, op);
                assertArrayEquals(x, recv.toFloatArray(), 0f, "reduceScatter " + op);
            }
        }
        try (Tensor buf = onDevice(x, 1027)) {
            comm.allReduce(buf, ReduceOp.SUM); // in place
            assertArrayEquals(x, buf.toFloatArray(), 0f);
            comm.broadcast(buf, 0);
            assertArrayEquals(x, buf.toFloatArray(), 0f);
        }
        try (Tensor send = onDevice(x, 1027); Tensor recv = poisoned(1027)) {
            comm.allGather(send, recv);
            assertArrayEquals(x, recv.toFloatArray(), 0f);
        }
        comm.barrier();
        try (CollectiveGroup g = CollectiveGroup.start(); Tensor a = onDevice(x, 1027); Tensor b = poisoned(1027)) {
            comm.allReduce(a, b, ReduceOp.MAX);
            comm.barrier();
            g.close();
            assertArrayEquals(x, b.toFloatArray(), 0f, "grouped");
        }
        try (Tensor t = onDevice(x, 1027)) {
            CommunicatorException e = assertThrows(CommunicatorException.class, () -> comm.send(t, 0));
            assertEquals(CommunicatorException.Kind.INVALID_ARGUMENT, e.kind());
        }
    }
}
