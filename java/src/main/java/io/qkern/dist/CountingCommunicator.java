package io.qkern.dist;

import io.qkern.Device;
import io.qkern.Tensor;
import java.time.Duration;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.atomic.AtomicLong;

/**
 * Wraps a communicator and counts the bytes this rank puts on the wire, per operation, as a
 * bandwidth-optimal algorithm would: send = the message; broadcast = (P-1) copies from the root;
 * all-gather = this rank's part to P-1 peers; ring all-reduce = 2 (P-1)/P of the buffer;
 * reduce-scatter = (P-1)/P of the input; recv and barrier = 0. For asserting how much an algorithm
 * moves (e.g. DistAttention's O(heads x head_dim) per token), independent of the backend.
 */
public final class CountingCommunicator implements Communicator {
    private final Communicator inner;
    private final Map<String, AtomicLong> bytesByOp = new TreeMap<>();
    private final AtomicLong messages = new AtomicLong();

    public CountingCommunicator(Communicator inner) {
        this.inner = inner;
    }

    /** Bytes this rank sent since creation or {@link #reset()}. */
    public synchronized long bytesSent() {
        return bytesByOp.values().stream().mapToLong(AtomicLong::get).sum();
    }

    /** Bytes per operation name ("send", "broadcast", "all-gather", "all-reduce", "reduce-scatter"). */
    public synchronized Map<String, Long> bytesByOperation() {
        Map<String, Long> m = new TreeMap<>();
        bytesByOp.forEach((k, v) -> m.put(k, v.get()));
        return m;
    }

    /** Operations that sent at least one byte. */
    public long messages() {
        return messages.get();
    }

    public synchronized void reset() {
        bytesByOp.clear();
        messages.set(0);
    }

    private synchronized void count(String op, long bytes) {
        if (bytes > 0) {
            bytesByOp.computeIfAbsent(op, k -> new AtomicLong()).addAndGet(bytes);
            messages.incrementAndGet();
        }
    }

    @Override
    public int rank() {
        return inner.rank();
    }

    @Override
    public int size() {
        return inner.size();
    }

    @Override
    public Device device() {
        return inner.device();
    }

    @Override
    public String backend() {
        return inner.backend();
    }

    @Override
    public Duration timeout() {
        return inner.timeout();
    }

    @Override
    public void allReduce(Tensor send, Tensor recv, ReduceOp op) {
        inner.allReduce(send, recv, op);
        count("all-reduce", 2L * (size() - 1) * send.byteSize() / size());
    }

    @Override
    public void allGather(Tensor send, Tensor recv) {
        inner.allGather(send, recv);
        count("all-gather", (long) (size() - 1) * send.byteSize());
    }

    @Override
    public void reduceScatter(Tensor send, Tensor recv, ReduceOp op) {
        inner.reduceScatter(send, recv, op);
        count("reduce-scatter", (long) (size() - 1) * send.byteSize() / size());
    }

    @Override
    public void broadcast(Tensor buffer, int root) {
        inner.broadcast(buffer, root);
        count("broadcast", rank() == root ? (long) (size() - 1) * buffer.byteSize() : 0);
    }

    @Override
    public void barrier() {
        inner.barrier();
    }

    @Override
    public void send(Tensor buffer, int peer) {
        inner.send(buffer, peer);
        count("send", buffer.byteSize());
    }

    @Override
    public void recv(Tensor buffer, int peer) {
        inner.recv(buffer, peer);
    }

    /** The sub-communicator is counted separately (wrap it again to count it). */
    @Override
    public Communicator split(int color, int key) {
        return inner.split(color, key);
    }

    @Override
    public void abort(String reason) {
        inner.abort(reason);
    }

    @Override
    public void close() {
        inner.close();
    }
}
