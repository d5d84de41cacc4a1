package io.qkern.dist;

import io.qkern.Device;
import io.qkern.Tensor;
import java.lang.foreign.MemorySegment;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.Comparator;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.locks.Condition;
import java.util.concurrent.locks.ReentrantLock;

/**
 * Ranks as threads in one JVM over host memory: the default for tests and for one machine without
 * GPUs. Create the whole group at once with {@link #create} and hand one communicator to each rank's
 * thread (see {@link DeviceMesh#run}).
 *
 * <p>A collective is a rendezvous: each rank arrives with its tensors; once all have arrived (and
 * their calls agree), every rank does its share of the data movement directly between the ranks'
 * buffers — for all-reduce, rank r reduces slice r of every rank's input and writes it to every
 * rank's output — and leaves once all shares are done. Nothing is staged through extra buffers, and
 * the work is spread over the ranks' threads. Sums add ranks in order 0..size-1.
 *
 * <p>A rank that does not arrive within the timeout makes the waiting ranks fail with
 * {@link CommunicatorException.Kind#TIMEOUT} naming it, and aborts the group: every later call on any
 * rank fails at once with {@link CommunicatorException.Kind#ABORTED}, so a stalled or dead rank never
 * hangs the others.
 */
public final class InProcessCommunicator implements Communicator {
    private static final String BACKEND = "in-process";
    private static final long SPIN_NANOS = 50_000;

    private final World world;
    private final int rank;
    private boolean closed;

    private InProcessCommunicator(World world, int rank) {
        this.world = world;
        this.rank = rank;
    }

    /** One communicator per rank, all in one group; {@code size >= 1}, {@code timeout > 0}. */
    public static List<Communicator> create(int size, Duration timeout) {
        if (size < 1) {
            throw new IllegalArgumentException("an in-process group needs at least 1 rank, got " + size);
        }
        if (timeout == null || timeout.isNegative() || timeout.isZero()) {
            throw new IllegalArgumentException("timeout must be positive, got " + timeout);
        }
        World w = new World(size, timeout);
        List<Communicator> comms = new ArrayList<>(size);
        for (int r = 0; r < size; r++) {
            comms.add(new InProcessCommunicator(w, r));
        }
        return Collections.unmodifiableList(comms);
    }

    @Override
    public int rank() {
        return rank;
    }

    @Override
    public int size() {
        return world.size;
    }

    @Override
    public Device device() {
        return Device.CPU;
    }

    @Override
    public String backend() {
        return BACKEND;
    }

    @Override
    public Duration timeout() {
        return world.timeout;
    }

    @Override
    public void allReduce(Tensor send, Tensor recv, ReduceOp op) {
        run(CollectiveCall.allReduce(this, send, recv, op), send, recv);
    }

    @Override
    public void allGather(Tensor send, Tensor recv) {
        run(CollectiveCall.allGather(this, send, recv), send, recv);
    }

    @Override
    public void reduceScatter(Tensor send, Tensor recv, ReduceOp op) {
        run(CollectiveCall.reduceScatter(this, send, recv, op), send, recv);
    }

    @Override
    public void broadcast(Tensor buffer, int root) {
        run(CollectiveCall.broadcast(this, buffer, root), buffer, buffer);
    }

    @Override
    public void barrier() {
        run(CollectiveCall.barrier(), null, null);
    }

    @Override
    public void send(Tensor buffer, int peer) {
        run(CollectiveCall.send(this, buffer, peer), buffer, null);
    }

    @Override
    public void recv(Tensor buffer, int peer) {
        run(CollectiveCall.recv(this, buffer, peer), null, buffer);
    }

    @Override
    public Communicator split(int color, int key) {
        if (CollectiveGroup.current() != null) {
            throw new CommunicatorException(CommunicatorException.Kind.INVALID_ARGUMENT,
                    "split cannot run inside a CollectiveGroup (its result is needed at once)");
        }
        Pending p = world.post(this, CollectiveCall.split(color, key), null, null);
        try {
            p.progress();
        } finally {
            p.finish();
        }
        return p.rendezvous.splitResult[p.slot];
    }

    @Override
    public void abort(String reason) {
        world.fail(CommunicatorException.Kind.ABORTED, "rank " + rank + " aborted the group: " + reason);
    }

    /** Idempotent. If other ranks wait on this one, they fail with ABORTED instead of timing out. */
    @Override
    public void close() {
        world.close(this);
    }

    @Override
    public String toString() {
        return "InProcessCommunicator[rank " + rank + " of " + world.size + "]";
    }

    private void run(CollectiveCall call, Tensor send, Tensor recv) {
        Pending p = world.post(this, call, send, recv);
        CollectiveGroup group = CollectiveGroup.current();
        if (group != null) {
            group.defer(p);
        } else {
            try {
                p.progress();
            } finally {
                p.finish();
            }
        }
    }

    // ---- the shared state of one group ---------------------------------------------------------

    private record PairKey(int from, int to, long seq) {
    }

    /** One rendezvous: a collective (all ranks) or a send/recv pair (slot 0 sends, slot 1 receives). */
    private static final class Rendezvous {
        final String label;
        final int[] ranks;
        final CollectiveCall[] calls;
        final Tensor[] sends;
        final Tensor[] recvs;
        final long[] arrivedAt;
        // volatile: waiters spin on them without the lock before they block (see World.await)
        volatile int arrived;
        volatile int finished;
        volatile int sharing;
        int left;
        boolean[] done;
        InProcessCommunicator[] splitResult;

        Rendezvous(String label, int[] ranks) {
            this.label = label;
            this.ranks = ranks;
            int n = ranks.length;
            calls = new CollectiveCall[n];
            sends = new Tensor[n];
            recvs = new Tensor[n];
            arrivedAt = new long[n];
            done = new boolean[n];
        }

        List<Integer> missing(boolean arrival) {
            List<Integer> m = new ArrayList<>();
            for (int i = 0; i < ranks.length; i++) {
                if (arrival ? calls[i] == null : !done[i]) {
                    m.add(ranks[i]);
                }
            }
            return m;
        }
    }

    private static final class World {
        final int size;
        final Duration timeout;
        final ReentrantLock lock = new ReentrantLock();
        final Condition changed = lock.newCondition();
        final long[] collectiveSeq;
        final long[][] sendSeq;
        final long[][] recvSeq;
        final boolean[] closedRanks;
        final Map<Long, Rendezvous> collectives = new HashMap<>();
        final Map<PairKey, Rendezvous> pairs = new HashMap<>();
        volatile CommunicatorException.Kind failureKind;
        volatile String failure;
        /** Spin before blocking only when every rank can have its own core: else spinning steals theirs. */
        final boolean spin;

        World(int size, Duration timeout) {
            this.size = size;
            this.timeout = timeout;
            collectiveSeq = new long[size];
            sendSeq = new long[size][size];
            recvSeq = new long[size][size];
            closedRanks = new boolean[size];
            spin = size <= Runtime.getRuntime().availableProcessors();
        }

        Pending post(InProcessCommunicator c, CollectiveCall call, Tensor send, Tensor recv) {
            List<Tensor.Lease> leases = new ArrayList<>(2);
            try {
                if (send != null) {
                    leases.add(send.acquire());
                }
                if (recv != null && recv != send) {
                    leases.add(recv.acquire());
                }
            } catch (RuntimeException e) {
                leases.forEach(Tensor.Lease::close);
                throw new CommunicatorException(CommunicatorException.Kind.INVALID_ARGUMENT, "rank " + c.rank + ": "
                        + call.op().label() + ": " + e.getMessage(), e);
            }
            lock.lock();
            try {
                requireUsable(c);
                Rendezvous rv;
                int slot;
                if (call.op() == CollectiveCall.Op.SEND || call.op() == CollectiveCall.Op.RECV) {
                    boolean sending = call.op() == CollectiveCall.Op.SEND;
                    int from = sending ? c.rank : call.rootOrPeer();
                    int to = sending ? call.rootOrPeer() : c.rank;
                    long seq = sending ? sendSeq[from][to]++ : recvSeq[to][from]++;
                    PairKey key = new PairKey(from, to, seq);
                    rv = pairs.computeIfAbsent(key, k -> new Rendezvous("message #" + k.seq() + " from rank "
                            + k.from() + " to rank " + k.to(), new int[] {k.from(), k.to()}));
                    slot = sending ? 0 : 1;
                    int peer = call.rootOrPeer();
                    if (closedRanks[peer]) {
                        failLocked(CommunicatorException.Kind.ABORTED, "rank " + peer + " closed its communicator; rank "
                                + c.rank + " cannot " + call.describe());
                    }
                } else {
                    long seq = collectiveSeq[c.rank]++;
                    int[] all = new int[size];
                    Arrays.setAll(all, i -> i);
                    rv = collectives.computeIfAbsent(seq, s -> new Rendezvous("collective #" + s, all));
                    slot = c.rank;
                    for (int r = 0; r < size; r++) {
                        if (closedRanks[r] && rv.calls[r] == null) {
                            failLocked(CommunicatorException.Kind.ABORTED, "rank " + r + " closed its communicator;"
                                    + " rank " + c.rank + " cannot " + call.describe() + " (" + rv.label + ")");
                        }
                    }
                }
                rv.calls[slot] = call;
                rv.sends[slot] = send;
                rv.recvs[slot] = recv;
                rv.arrivedAt[slot] = System.nanoTime();
                rv.arrived++;
                if (rv.arrived == rv.ranks.length) {
                    allArrived(rv);
                }
                changed.signalAll();
                return new Pending(this, c.rank, rv, slot, leases);
            } catch (RuntimeException e) {
                leases.forEach(Tensor.Lease::close);
                throw e;
            } finally {
                lock.unlock();
            }
        }

        /** Compares the calls; for split, builds the new groups. Under the lock. */
        private void allArrived(Rendezvous rv) {
            try {
                if (rv.ranks.length == 2 && rv.calls[0].op() == CollectiveCall.Op.SEND) {
                    CollectiveCall.requirePair(BACKEND, rv.ranks[0], rv.calls[0], rv.ranks[1], rv.calls[1]);
                    return;
                }
                CollectiveCall.requireAgreement(BACKEND, Arrays.asList(rv.calls));
            } catch (CommunicatorException e) {
                failLocked(e.kind(), e.getMessage());
                return;
            }
            if (rv.calls[0].op() == CollectiveCall.Op.SPLIT) {
                rv.splitResult = new InProcessCommunicator[size];
                Map<Long, List<Integer>> byColor = new HashMap<>();
                for (int r = 0; r < size; r++) {
                    long color = rv.calls[r].shape()[0];
                    if (color >= 0) {
                        byColor.computeIfAbsent(color, k -> new ArrayList<>()).add(r);
                    }
                }
                for (List<Integer> members : byColor.values()) {
                    members.sort(Comparator.<Integer>comparingLong(r -> rv.calls[r].shape()[1])
                            .thenComparingInt(r -> r));
                    World sub = new World(members.size(), timeout);
                    for (int i = 0; i < members.size(); i++) {
                        rv.splitResult[members.get(i)] = new InProcessCommunicator(sub, i);
                    }
                }
            }
        }

        /** Waits (under the lock) until {@code ready} holds, failing on abort or on the deadline. */
        void await(Rendezvous rv, int slot, boolean arrival, java.util.function.BooleanSupplier ready) {
            long deadline = rv.arrivedAt[slot] + timeout.toNanos() * (arrival ? 1 : 2);
            if (spin && !ready.getAsBoolean() && failure == null) {
                // Peers usually arrive within microseconds; parking and being woken through the OS
                // costs tens of them. Spin briefly with the lock released, then block as before.
                lock.unlock();
                try {
                    long spinUntil = System.nanoTime() + SPIN_NANOS;
                    for (int spins = 1; !ready.getAsBoolean() && failure == null && System.nanoTime() < spinUntil;
                            spins++) {
                        if ((spins & 63) == 0) {
                            Thread.yield(); // let runnable threads (the JIT, GC) have the core now and then
                        } else {
                            Thread.onSpinWait();
                        }
                    }
                } finally {
                    lock.lock();
                }
            }
            while (!ready.getAsBoolean()) {
                if (failure != null) {
                    throw new CommunicatorException(failureKind, failure);
                }
                long left = deadline - System.nanoTime();
                if (left <= 0) {
                    List<Integer> missing = rv.missing(arrival);
                    String what = rv.calls[slot].describe() + " (" + rv.label + ")";
                    String msg = "rank " + rv.ranks[slot] + ": " + what + " timed out after " + timeout.toMillis()
                            + " ms: rank(s) " + missing + (arrival ? " never arrived" : " arrived but did not finish");
                    failLocked(CommunicatorException.Kind.TIMEOUT, msg);
                    throw new CommunicatorException(CommunicatorException.Kind.TIMEOUT, msg);
                }
                try {
                    changed.awaitNanos(left);
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                    String msg = "rank " + rv.ranks[slot] + " was interrupted in " + rv.calls[slot].describe();
                    failLocked(CommunicatorException.Kind.ABORTED, msg);
                    throw new CommunicatorException(CommunicatorException.Kind.ABORTED, msg, e);
                }
            }
            if (failure != null && arrival) {
                throw new CommunicatorException(failureKind, failure);
            }
        }

        void fail(CommunicatorException.Kind kind, String message) {
            lock.lock();
            try {
                failLocked(kind, message);
            } finally {
                lock.unlock();
            }
        }

        private void failLocked(CommunicatorException.Kind kind, String message) {
            if (failure == null) {
                failure = message;
                failureKind = kind;
            }
            changed.signalAll();
        }

        private void requireUsable(InProcessCommunicator c) {
            if (closedRanks[c.rank]) {
                throw new CommunicatorException(CommunicatorException.Kind.ABORTED, "rank " + c.rank
                        + "'s communicator is closed");
            }
            if (failure != null) {
                throw new CommunicatorException(CommunicatorException.Kind.ABORTED, "the group was aborted earlier: "
                        + failure);
            }
        }

        void close(InProcessCommunicator c) {
            lock.lock();
            try {
                if (closedRanks[c.rank]) {
                    return;
                }
                closedRanks[c.rank] = true;
                List<Rendezvous> open = new ArrayList<>(collectives.values());
                open.addAll(pairs.values());
                for (Rendezvous rv : open) {
                    boolean involved = false;
                    boolean arrived = false;
                    for (int i = 0; i < rv.ranks.length; i++) {
                        if (rv.ranks[i] == c.rank) {
                            involved = true;
                            arrived = rv.calls[i] != null;
                        }
                    }
                    if (involved && !arrived && rv.arrived > 0) {
                        failLocked(CommunicatorException.Kind.ABORTED, "rank " + c.rank
                                + " closed its communicator while rank(s) " + arrivedRanks(rv) + " waited in "
                                + rv.label);
                    }
                }
            } finally {
                lock.unlock();
            }
        }

        private static List<Integer> arrivedRanks(Rendezvous rv) {
            List<Integer> a = new ArrayList<>();
            for (int i = 0; i < rv.ranks.length; i++) {
                if (rv.calls[i] != null) {
                    a.add(rv.ranks[i]);
                }
            }
            return a;
        }

        void leave(Rendezvous rv) {
            if (++rv.left == rv.ranks.length) {
                if (rv.ranks.length == 2 && rv.calls[0] != null && rv.calls[0].op() == CollectiveCall.Op.SEND) {
                    pairs.values().remove(rv);
                } else {
                    collectives.values().remove(rv);
                }
            }
        }
    }

    /** One rank's part in a rendezvous, from arrival to departure. */
    private static final class Pending implements CollectiveGroup.Completion {
        final World world;
        final int rank;
        final Rendezvous rendezvous;
        final int slot;
        final List<Tensor.Lease> leases;
        boolean progressed;
        boolean finished;

        Pending(World world, int rank, Rendezvous rendezvous, int slot, List<Tensor.Lease> leases) {
            this.world = world;
            this.rank = rank;
            this.rendezvous = rendezvous;
            this.slot = slot;
            this.leases = leases;
        }

        @Override
        public void progress() {
            Rendezvous rv = rendezvous;
            world.lock.lock();
            try {
                world.await(rv, slot, true, () -> rv.arrived == rv.ranks.length);
                rv.sharing++;
            } finally {
                world.lock.unlock();
            }
            try {
                share(rv);
            } catch (RuntimeException e) {
                world.lock.lock();
                try {
                    rv.sharing--;
                    world.failLocked(CommunicatorException.Kind.ABORTED, "rank " + rank + " failed while moving data in "
                            + rv.label + ": " + e);
                } finally {
                    world.lock.unlock();
                }
                throw e;
            }
            world.lock.lock();
            try {
                rv.sharing--;
                rv.done[slot] = true;
                rv.finished++;
                world.changed.signalAll();
            } finally {
                world.lock.unlock();
            }
            progressed = true;
        }

        @Override
        public void finish() {
            if (finished) {
                return;
            }
            finished = true;
            Rendezvous rv = rendezvous;
            world.lock.lock();
            try {
                if (progressed) {
                    world.await(rv, slot, false, () -> rv.finished == rv.ranks.length);
                }
            } finally {
                // Peers may still be reading or writing this rank's buffers; a share never blocks, so
                // this wait ends even when the collective failed.
                while (rv.sharing > 0) {
                    world.changed.awaitUninterruptibly();
                }
                world.leave(rv);
                world.lock.unlock();
                leases.forEach(Tensor.Lease::close);
            }
        }

        /** This rank's share of the data movement; the peers' buffers are stable until all shares are done. */
        private void share(Rendezvous rv) {
            CollectiveCall call = rv.calls[slot];
            int n = rv.ranks.length;
            switch (call.op()) {
                case ALL_REDUCE -> {
                    long count = call.numel();
                    long from = count * slot / n;
                    long to = count * (slot + 1) / n;
                    HostReduction.reduce(call.dtype(), call.reduce(), segments(rv.sends), from, segments(rv.recvs), from,
                            to - from);
                }
                case REDUCE_SCATTER -> {
                    long count = call.numel();
                    HostReduction.reduce(call.dtype(), call.reduce(), segments(rv.sends), count * slot,
                            List.of(rv.recvs[slot].segment()), 0, count);
                }
                case ALL_GATHER -> {
                    long bytes = call.bytes();
                    MemorySegment mine = rv.sends[slot].segment();
                    for (Tensor r : rv.recvs) {
                        MemorySegment.copy(mine, 0, r.segment(), bytes * slot, bytes);
                    }
                }
                case BROADCAST -> {
                    long bytes = call.bytes();
                    long from = bytes * slot / n;
                    long to = bytes * (slot + 1) / n;
                    MemorySegment src = rv.sends[call.rootOrPeer()].segment();
                    for (int r = 0; r < n; r++) {
                        if (r != call.rootOrPeer()) {
                            MemorySegment.copy(src, from, rv.recvs[r].segment(), from, to - from);
                        }
                    }
                }
                case RECV -> MemorySegment.copy(rv.sends[0].segment(), 0, rv.recvs[1].segment(), 0, call.bytes());
                case SEND, BARRIER, SPLIT -> {
                    // the receiver copies; barrier and split move no data
                }
            }
        }

        private static List<MemorySegment> segments(Tensor[] tensors) {
            List<MemorySegment> s = new ArrayList<>(tensors.length);
            for (Tensor t : tensors) {
                s.add(t.segment());
            }
            return s;
        }
    }
}
