package io.qkern.dist;

import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.CyclicBarrier;
import java.util.function.Consumer;

/**
 * Persistent rank threads for repeated steps (benchmarks, training loops): {@link #step} runs a body
 * on every rank at once — rank 0 on the calling thread, the others on their own platform threads,
 * kept between steps so a step costs no thread start — and returns when all are done. Where
 * {@link DeviceMesh#run} is one job, this is many short ones.
 */
public final class LockstepRanks implements AutoCloseable {
    private final List<Communicator> comms;
    private final List<Thread> threads = new ArrayList<>();
    private final CyclicBarrier start;
    private final CyclicBarrier end;
    private volatile Consumer<Communicator> body;
    private volatile boolean closing;
    private final Map<Integer, Throwable> failures = new TreeMap<>();

    public LockstepRanks(List<Communicator> comms) {
        if (comms.isEmpty()) {
            throw new IllegalArgumentException("no ranks");
        }
        this.comms = List.copyOf(comms);
        this.start = new CyclicBarrier(comms.size());
        this.end = new CyclicBarrier(comms.size());
        for (int r = 1; r < comms.size(); r++) {
            Communicator c = comms.get(r);
            threads.add(Thread.ofPlatform().daemon().name("qkern-lockstep-rank-" + r).start(() -> loop(c)));
        }
    }

    private void loop(Communicator c) {
        try {
            while (true) {
                start.await();
                if (closing) {
                    return;
                }
                runBody(c);
                end.await();
            }
        } catch (Exception e) {
            // barrier broken: close() or a failed step on the caller's side; the thread ends
        }
    }

    private void runBody(Communicator c) {
        try {
            body.accept(c);
        } catch (Throwable t) {
            synchronized (failures) {
                failures.put(c.rank(), t);
            }
            c.abort("rank " + c.rank() + " failed: " + t);
        }
    }

    /** Runs {@code stepBody} on every rank concurrently; throws {@link RankFailureException} if any rank failed. */
    public void step(Consumer<Communicator> stepBody) {
        body = stepBody;
        try {
            start.await();
            runBody(comms.get(0));
            end.await();
        } catch (Exception e) {
            throw new IllegalStateException("lockstep ranks are broken (closed, or a rank thread died): " + e, e);
        }
        synchronized (failures) {
            if (!failures.isEmpty()) {
                Map<Integer, Throwable> f = new TreeMap<>(failures);
                failures.clear();
                throw new RankFailureException(f, f.keySet().iterator().next());
            }
        }
    }

    /** Ends the rank threads (not the communicators); idempotent. */
    @Override
    public void close() {
        if (closing) {
            return;
        }
        closing = true;
        try {
            start.await(java.util.concurrent.TimeUnit.SECONDS.toMillis(10), java.util.concurrent.TimeUnit.MILLISECONDS);
        } catch (Exception e) {
            start.reset();
        }
        for (Thread t : threads) {
            try {
                t.join(10_000);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                return;
            }
        }
    }
}
