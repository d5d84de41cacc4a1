package io.qkern.dist;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * Batches collectives issued by one thread, for one thread driving several ranks (one GPU each):
 * <pre>{@code
 * try (CollectiveGroup g = CollectiveGroup.start()) {
 *     for (Communicator c : ranksOfThisThread) c.allReduce(buf[c.rank()], ReduceOp.SUM);
 * } // issued together here, and complete when close() returns
 * }</pre>
 * Calls inside the group only issue their work; outputs are valid after {@link #close()}. Groups
 * nest (the outermost close completes everything). A group is confined to the thread that started it.
 */
public final class CollectiveGroup implements AutoCloseable {
    private static final ThreadLocal<CollectiveGroup> CURRENT = new ThreadLocal<>();

    private final Thread owner = Thread.currentThread();
    private final Map<Object, Runnable> endHooks = new LinkedHashMap<>();
    private final List<Completion> completions = new ArrayList<>();
    private int depth = 1;
    private boolean closed;

    private CollectiveGroup() {
    }

    /** Starts a group on this thread, or nests into the one already open. */
    public static CollectiveGroup start() {
        CollectiveGroup g = CURRENT.get();
        if (g != null) {
            g.depth++;
            return g;
        }
        g = new CollectiveGroup();
        CURRENT.set(g);
        return g;
    }

    /** The group open on this thread, or null. For backends. */
    static CollectiveGroup current() {
        return CURRENT.get();
    }

    /**
     * Backends: the first call with a given {@code backendKey} runs {@code begin} now and
     * {@code end} when the group closes (e.g. ncclGroupStart / ncclGroupEnd).
     */
    void join(Object backendKey, Runnable begin, Runnable end) {
        if (!endHooks.containsKey(backendKey)) {
            begin.run();
            endHooks.put(backendKey, end);
        }
    }

    /**
     * A collective issued inside the group. At close, every completion's {@link #progress} runs
     * (in issue order) before any {@link #finish}: a thread driving several ranks must do each
     * rank's share of the work before it waits for the others' shares.
     */
    interface Completion {
        /** This rank's share of the work, once its peers have arrived; must not wait for peers to finish. */
        void progress();

        /** Waits until the collective is complete for this rank and releases what it held. */
        void finish();
    }

    /** Backends: a collective to complete when the group closes, after every end hook. */
    void defer(Completion completion) {
        completions.add(completion);
    }

    /**
     * Ends the group (the outermost close): runs the backends' end hooks, then completes every
     * deferred collective (every share of work first, then every wait). The first failure is thrown after the remaining ones were attempted,
     * with the others suppressed, so no issued collective is left half-done.
     */
    @Override
    public void close() {
        if (Thread.currentThread() != owner) {
            throw new IllegalStateException("a CollectiveGroup must be closed by the thread that started it ("
                    + owner.getName() + ")");
        }
        if (closed || --depth > 0) {
            return;
        }
        closed = true;
        CURRENT.remove();
        RuntimeException failure = null;
        List<Runnable> work = new ArrayList<>(endHooks.values());
        completions.forEach(c -> work.add(c::progress));
        completions.forEach(c -> work.add(c::finish));
        for (Runnable r : work) {
            try {
                r.run();
            } catch (RuntimeException e) {
                if (failure == null) {
                    failure = e;
                } else {
                    failure.addSuppressed(e);
                }
            }
        }
        if (failure != null) {
            throw failure;
        }
    }
}
