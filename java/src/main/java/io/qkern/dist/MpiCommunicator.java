package io.qkern.dist;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Tensor;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.locks.LockSupport;

/**
 * {@link Communicator} over Open MPI, for host (cpu) tensors across processes and hosts, one rank
 * per process. libmpi is found at run time ({@code -Dqkern.mpi.path}, else libmpi.so.40, else
 * libmpi.so through the dynamic loader's search); nothing is needed at build time.
 *
 * <h2>Launching</h2>
 * <pre>{@code
 * mpirun -np 2 java --enable-native-access=ALL-UNNAMED -cp app.jar:qkern.jar my.Main
 * mpirun -np 2 java --enable-native-access=ALL-UNNAMED -jar qkern.jar ...
 * }</pre>
 * and in each process {@code try (MpiCommunicator world = MpiCommunicator.world(Duration.ofSeconds(30))) {...}}.
 * {@link #launchedByMpirun()} tells whether the process was started by Open MPI's mpirun; without
 * it, {@link #world} is a singleton world of size 1. As root, mpirun needs {@code --allow-run-as-root};
 * in containers without shared-memory permissions use {@code --mca btl self,tcp}.
 *
 * <h2>Process lifetime</h2>
 * MPI is initialized once per process, by the first {@link #world} call, with
 * {@code MPI_Init_thread(MPI_THREAD_SERIALIZED)}: any Java thread may call in, and qkern holds one
 * process-wide lock around every MPI call so no two run at once (MULTIPLE would cost every call a
 * lock inside Open MPI and is not needed for one rank per process). {@code MPI_Init_thread} waits for
 * every process of the job; it runs on a helper thread and fails with TIMEOUT after the timeout.
 * {@code MPI_Finalize} runs when the last open MPI communicator of the process is closed (or at JVM
 * shutdown if some were left open), bounded by the timeout; MPI cannot be initialized again
 * afterwards, so keep the world open for as long as the process needs MPI.
 *
 * <h2>How collectives run</h2>
 * <ul>
 *   <li>Before data moves, every rank sends its {@link CollectiveCall} description (13 int64) to every
 *       other rank with non-blocking point-to-point messages and receives theirs. That costs
 *       {@code size - 1} small messages per rank per collective and gives what MPI's collectives
 *       cannot: the exact ranks that have not arrived when the timeout passes. Mismatched calls
 *       (shape, dtype, root, operation, or a collective against a send) fail on every rank with
 *       MISMATCH before any data moves. {@link #barrier()} is this exchange alone. send/recv exchange
 *       the pair's descriptions the same way (one message each way) before the data.</li>
 *   <li>Data moves with non-blocking MPI (reduce-scatter as a ring of {@code MPI_Isend} /
 *       {@code MPI_Irecv} reduced in Java, {@code MPI_Iallgather}, {@code MPI_Ibcast},
 *       {@code MPI_Isend}/{@code MPI_Irecv}) polled with {@code MPI_Test} until the
 *       deadline; each step gets the full timeout. Counts above {@code 2^31 - 1} elements are split
 *       into several calls.</li>
 *   <li>allReduce is a reduce-scatter-block followed by an all-gather (the tensor padded to a multiple
 *       of {@code size}): each element is reduced once, on one rank, in ring order, and every
 *       rank receives those same bits. F16 and BF16 are widened to F32, reduced in F32, and rounded
 *       once to nearest-even; the all-gather then moves the 16-bit results.</li>
 *   <li>Inside a {@link CollectiveGroup} calls complete at once (each process drives one rank, so
 *       nothing needs to be batched); calls on different MPI communicators in one group must be
 *       issued in the same order on every process.</li>
 *   <li>{@link #split} is the description exchange, then {@code MPI_Comm_split} — blocking, as MPI has
 *       no non-blocking split, but only after every rank was seen to arrive.</li>
 * </ul>
 *
 * <h2>Failures</h2>
 * MPI errors carry {@code MPI_Error_string} (the communicators use {@code MPI_ERRORS_RETURN}, set on
 * MPI_COMM_WORLD too). MISMATCH aborts this communicator. TIMEOUT and BACKEND abort every MPI
 * communicator of the process and skip {@code MPI_Finalize}: MPI cannot cancel a collective in
 * flight (it could still write into buffers later) and finalize would wait for the missing rank.
 * The process then exits without finalizing and mpirun ends the job. A rank that dies makes mpirun
 * end the job (Open MPI's default), or makes the others fail with TIMEOUT naming it. A rank that
 * closes its communicator while the others wait is, to them, a rank that never arrives (TIMEOUT):
 * MPI has no way to tell them. {@link #abort(String)} calls {@code MPI_Abort}, which terminates
 * every process of the job (exit code 1) — in MPI the only way to reach the other ranks at once.
 */
public final class MpiCommunicator implements Communicator {
    private static final String BACKEND = "mpi";
    private static final int TAG_CALL = 0x7153;
    private static final int TAG_DATA = 0x7154;
    private static final int TAG_RING = 0x7155;
    private static final long REQUEST_BYTES = ValueLayout.ADDRESS.byteSize();
    /** Largest element count per MPI call; lowered only by tests (qkern.mpi.maxCount) to exercise chunking. */
    private static final long MAX_COUNT = Math.max(1, Math.min(Integer.MAX_VALUE,
            Long.getLong("qkern.mpi.maxCount", Integer.MAX_VALUE)));

    // ---- process-wide state, guarded by MpiCommunicator.class ----
    private static boolean initializedByUs;
    private static boolean finalizedByUs;
    private static int openCount;
    /** The longest timeout of any world communicator: how long MPI_Finalize may take. */
    private static Duration finalizeTimeout;
    private static boolean shutdownHookAdded;
    /** Set after a TIMEOUT or BACKEND failure: no further MPI call is made by qkern in this process. */
    private static volatile String processFailure;
    /** Number of operations in progress in this process (the shutdown hook does not finalize under them). */
    private static final java.util.concurrent.atomic.AtomicInteger IN_FLIGHT = new java.util.concurrent.atomic.AtomicInteger();

    private final MpiLibrary mpi;
    private final MemorySegment comm;
    private final int rank;
    private final int size;
    private final Duration timeout;
    private volatile String abortedReason;
    private boolean closed;

    private MpiCommunicator(MpiLibrary mpi, MemorySegment comm, Duration timeout) {
        this.mpi = mpi;
        this.comm = comm;
        this.timeout = timeout;
        try (Arena a = Arena.ofConfined()) {
            MemorySegment out = a.allocate(ValueLayout.JAVA_INT);
            call("MPI_Comm_rank", () -> mpi.commQuery(mpi.commRank, comm, out));
            this.rank = out.get(ValueLayout.JAVA_INT, 0);
            call("MPI_Comm_size", () -> mpi.commQuery(mpi.commSize, comm, out));
            this.size = out.get(ValueLayout.JAVA_INT, 0);
        }
    }

    // ---- entry points -----------------------------------------------------------------------------

    /**
     * A communicator over every process of the MPI job (a duplicate of MPI_COMM_WORLD, so qkern's
     * traffic never matches the application's own MPI messages). Initializes MPI on the first call;
     * each call returns a new communicator, to be closed.
     *
     * @param timeout how long initialization and each collective wait for the other ranks
     * @throws CommunicatorException BACKEND when Open MPI's libmpi is missing or fails, TIMEOUT when
     *         the other processes do not start MPI within {@code timeout}
     */
    public static MpiCommunicator world(Duration timeout) {
        if (timeout == null || timeout.isNegative() || timeout.isZero()) {
            throw new CommunicatorException(CommunicatorException.Kind.INVALID_ARGUMENT,
                    "MPI world: timeout must be positive, got " + timeout);
        }
        synchronized (MpiCommunicator.class) {
            MpiLibrary mpi = MpiLibrary.get();
            initialize(mpi, timeout);
            requireHealthy();
            MemorySegment dup = idup(mpi, mpi.commWorld, timeout);
            MpiCommunicator c = new MpiCommunicator(mpi, dup, timeout);
            openCount++;
            finalizeTimeout = finalizeTimeout == null || timeout.compareTo(finalizeTimeout) > 0 ? timeout
                    : finalizeTimeout;
            return c;
        }
    }

    /** True when this process was started by Open MPI's mpirun / mpiexec (OMPI_COMM_WORLD_SIZE is set). */
    public static boolean launchedByMpirun() {
        return System.getenv("OMPI_COMM_WORLD_SIZE") != null || System.getenv("OMPI_COMM_WORLD_RANK") != null;
    }

    /**
     * The MPI library's own version line ("Open MPI v4.1.4, package: ..."), without initializing
     * MPI; throws BACKEND when it is absent.
     */
    public static String libraryVersion() {
        MpiLibrary mpi = MpiLibrary.get();
        MpiLibrary.LOCK.lock();
        try {
            return mpi.version() + " (" + mpi.path + ")";
        } finally {
            MpiLibrary.LOCK.unlock();
        }
    }

    private static void initialize(MpiLibrary mpi, Duration timeout) {
        if (finalizedByUs) {
            throw new CommunicatorException(CommunicatorException.Kind.BACKEND, "MPI was already finalized in this"
                    + " process (the last MPI communicator was closed) and MPI cannot be initialized twice: keep"
                    + " one world communicator open for as long as the process uses MPI");
        }
        if (initializedByUs) {
            return;
        }
        MpiLibrary.LOCK.lock();
        try {
            if (mpi.flag(mpi.finalized)) {
                throw new CommunicatorException(CommunicatorException.Kind.BACKEND,
                        "MPI was finalized in this process by someone else; it cannot be initialized again");
            }
            if (mpi.flag(mpi.initialized)) {
                // Someone else (the application) owns MPI: use it, never finalize it.
                setErrorsReturn(mpi, mpi.commWorld);
                return;
            }
        } finally {
            MpiLibrary.LOCK.unlock();
        }
        int[] result = {-1, -1};
        Thread init = new Thread(() -> {
            MpiLibrary.LOCK.lock();
            try (Arena a = Arena.ofConfined()) {
                MemorySegment provided = a.allocate(ValueLayout.JAVA_INT);
                int rc = mpi.initThread(provided);
                synchronized (result) {
                    result[0] = rc;
                    result[1] = provided.get(ValueLayout.JAVA_INT, 0);
                    result.notifyAll();
                }
            } finally {
                MpiLibrary.LOCK.unlock();
            }
        }, "qkern-mpi-init");
        init.setDaemon(true);
        init.start();
        long deadline = System.nanoTime() + timeout.toNanos();
        synchronized (result) {
            while (result[0] == -1) {
                long left = deadline - System.nanoTime();
                if (left <= 0) {
                    processFailure = "MPI_Init_thread did not return within " + timeout;
                    throw new CommunicatorException(CommunicatorException.Kind.TIMEOUT, "MPI_Init_thread did not"
                            + " return within " + human(timeout) + ": the other processes of the job have not"
                            + " started MPI (" + (launchedByMpirun() ? "launched by mpirun, rank "
                            + System.getenv("OMPI_COMM_WORLD_RANK") + " of " + System.getenv("OMPI_COMM_WORLD_SIZE")
                            : "not launched by mpirun") + ")");
                }
                try {
                    TimeUnit.NANOSECONDS.timedWait(result, left);
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                    throw new CommunicatorException(CommunicatorException.Kind.ABORTED, "interrupted in MPI_Init_thread");
                }
            }
        }
        if (result[0] != MpiLibrary.MPI_SUCCESS) {
            throw new CommunicatorException(CommunicatorException.Kind.BACKEND, "MPI_Init_thread failed ("
                    + mpi.path + "): error " + result[0]);
        }
        initializedByUs = true;
        if (result[1] < MpiLibrary.MPI_THREAD_SERIALIZED) {
            throw new CommunicatorException(CommunicatorException.Kind.BACKEND, "MPI provides thread level "
                    + result[1] + " but qkern needs MPI_THREAD_SERIALIZED (2): calls come from any Java thread");
        }
        MpiLibrary.LOCK.lock();
        try {
            setErrorsReturn(mpi, mpi.commWorld);
        } finally {
            MpiLibrary.LOCK.unlock();
        }
        if (!shutdownHookAdded) {
            shutdownHookAdded = true;
            Runtime.getRuntime().addShutdownHook(new Thread(MpiCommunicator::finalizeAtShutdown, "qkern-mpi-finalize"));
        }
    }

    private static void setErrorsReturn(MpiLibrary mpi, MemorySegment c) {
        int rc = mpi.commSetErrhandler(c, mpi.errorsReturn);
        if (rc != MpiLibrary.MPI_SUCCESS) {
            throw new CommunicatorException(CommunicatorException.Kind.BACKEND, "MPI_Comm_set_errhandler failed: "
                    + mpi.errorText(rc));
        }
    }

    private static MemorySegment idup(MpiLibrary mpi, MemorySegment parent, Duration timeout) {
        // Memory MPI writes when the request completes: never freed if it does not complete in time.
        Arena arena = Arena.ofShared();
        MemorySegment newComm = arena.allocate(ValueLayout.ADDRESS);
        MemorySegment request = arena.allocate(ValueLayout.ADDRESS);
        MemorySegment flag = arena.allocate(ValueLayout.JAVA_INT);
        long deadline = System.nanoTime() + timeout.toNanos();
        lockedCall(mpi, "MPI_Comm_idup", () -> mpi.commIdup(parent, newComm, request));
        if (!poll(mpi, "MPI_Comm_idup", request, flag, deadline)) {
            processFailure = "MPI_Comm_idup timed out";
            throw new CommunicatorException(CommunicatorException.Kind.TIMEOUT, "MPI world: duplicating"
                    + " MPI_COMM_WORLD did not complete within " + human(timeout) + ": not every process called"
                    + " MpiCommunicator.world");
        }
        MemorySegment c = newComm.get(ValueLayout.ADDRESS, 0);
        arena.close();
        lockedCall(mpi, "MPI_Comm_set_errhandler", () -> mpi.commSetErrhandler(c, mpi.errorsReturn));
        return c;
    }

    private static void finalizeAtShutdown() {
        synchronized (MpiCommunicator.class) {
            if (initializedByUs && !finalizedByUs && processFailure == null && IN_FLIGHT.get() == 0) {
                finalizeBounded();
            }
        }
    }

    /** MPI_Finalize on a helper thread: it waits for every process, which must not hang this one. */
    private static void finalizeBounded() {
        finalizedByUs = true;
        if (finalizeTimeout == null) {
            finalizeTimeout = Duration.ofSeconds(30);
        }
        MpiLibrary mpi = MpiLibrary.get();
        int[] rc = {Integer.MIN_VALUE};
        Thread t = new Thread(() -> {
            MpiLibrary.LOCK.lock();
            try {
                rc[0] = mpi.finalizeMpi();
            } finally {
                MpiLibrary.LOCK.unlock();
            }
        }, "qkern-mpi-finalize-call");
        t.setDaemon(true);
        t.start();
        try {
            t.join(finalizeTimeout.toMillis());
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
        if (t.isAlive()) {
            processFailure = "MPI_Finalize did not return";
            throw new CommunicatorException(CommunicatorException.Kind.TIMEOUT, "MPI_Finalize did not return within "
                    + human(finalizeTimeout) + ": another process of the job has not finished MPI");
        }
        if (rc[0] != MpiLibrary.MPI_SUCCESS) {
            throw new CommunicatorException(CommunicatorException.Kind.BACKEND, "MPI_Finalize failed: "
                    + mpi.errorText(rc[0]));
        }
    }

    // ---- Communicator ------------------------------------------------------------------------------

    @Override
    public int rank() {
        return rank;
    }

    @Override
    public int size() {
        return size;
    }

    /** Always {@link Device#CPU}: MPI moves host memory. */
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
        return timeout;
    }

    @Override
    public synchronized void allReduce(Tensor send, Tensor recv, ReduceOp op) {
        hostOnly("allReduce", send, recv);
        CollectiveCall call = CollectiveCall.allReduce(this, send, recv, op);
        run(call, () -> {
            exchangeCollective(call);
            reduce(call, send, recv, op, true);
        });
    }

    @Override
    public synchronized void allGather(Tensor send, Tensor recv) {
        hostOnly("allGather", send, recv);
        CollectiveCall call = CollectiveCall.allGather(this, send, recv);
        run(call, () -> {
            exchangeCollective(call);
            gather(call, send, recv);
        });
    }

    @Override
    public synchronized void reduceScatter(Tensor send, Tensor recv, ReduceOp op) {
        hostOnly("reduceScatter", send, recv);
        CollectiveCall call = CollectiveCall.reduceScatter(this, send, recv, op);
        run(call, () -> {
            exchangeCollective(call);
            reduce(call, send, recv, op, false);
        });
    }

    @Override
    public synchronized void broadcast(Tensor buffer, int root) {
        hostOnly("broadcast", buffer, null);
        CollectiveCall call = CollectiveCall.broadcast(this, buffer, root);
        run(call, () -> {
            exchangeCollective(call);
            long esz = buffer.dtype().byteSize();
            MemorySegment type = moveType(buffer.dtype());
            MemorySegment seg = buffer.segment();
            long n = buffer.numel();
            try (Arena arena = Arena.ofConfined()) {
                MemorySegment req = arena.allocate(ValueLayout.ADDRESS);
                MemorySegment flag = arena.allocate(ValueLayout.JAVA_INT);
                for (long off = 0; off < n; off += MAX_COUNT) {
                    int len = (int) Math.min(MAX_COUNT, n - off);
                    MemorySegment part = seg.asSlice(off * esz, len * esz);
                    issue(call, "MPI_Ibcast", () -> mpi.ibcast(part, len, type, root, comm, req));
                    awaitData(call, "MPI_Ibcast", req, flag);
                }
            }
        });
    }

    /** The description exchange alone: it completes only once every rank has called barrier. */
    @Override
    public synchronized void barrier() {
        CollectiveCall call = CollectiveCall.barrier();
        run(call, () -> exchangeCollective(call));
    }

    @Override
    public synchronized void send(Tensor buffer, int peer) {
        hostOnly("send", buffer, null);
        CollectiveCall call = CollectiveCall.send(this, buffer, peer);
        run(call, () -> {
            exchangePair(call, peer);
            pointToPoint(call, buffer, peer, true);
        });
    }

    @Override
    public synchronized void recv(Tensor buffer, int peer) {
        hostOnly("recv", buffer, null);
        CollectiveCall call = CollectiveCall.recv(this, buffer, peer);
        run(call, () -> {
            exchangePair(call, peer);
            pointToPoint(call, buffer, peer, false);
        });
    }

    /** Colors must be non-negative (MPI reserves negative values for MPI_UNDEFINED). */
    @Override
    public synchronized MpiCommunicator split(int color, int key) {
        if (color < 0) {
            throw invalid("split: color " + color + " is negative (colors are >= 0)");
        }
        CollectiveCall call = CollectiveCall.split(color, key);
        MpiCommunicator[] out = new MpiCommunicator[1];
        run(call, () -> {
            CollectiveCall[] calls = exchangeCollective(call);
            int expectedSize = 0;
            int expectedRank = 0;
            for (int r = 0; r < size; r++) {
                long[] s = calls[r].shape();
                if (s[0] == color) {
                    expectedSize++;
                    if (s[1] < key || (s[1] == key && r < rank)) {
                        expectedRank++;
                    }
                }
            }
            try (Arena a = Arena.ofConfined()) {
                MemorySegment slot = a.allocate(ValueLayout.ADDRESS);
                issue(call, "MPI_Comm_split", () -> mpi.commSplit(comm, color, key, slot));
                MemorySegment newComm = slot.get(ValueLayout.ADDRESS, 0);
                issue(call, "MPI_Comm_set_errhandler", () -> mpi.commSetErrhandler(newComm, mpi.errorsReturn));
                MpiCommunicator c = new MpiCommunicator(mpi, newComm, timeout);
                if (c.rank != expectedRank || c.size != expectedSize) {
                    throw new CommunicatorException(CommunicatorException.Kind.BACKEND, "MPI_Comm_split gave rank "
                            + c.rank + " of " + c.size + " but the exchanged colors and keys give rank "
                            + expectedRank + " of " + expectedSize);
                }
                synchronized (MpiCommunicator.class) {
                    openCount++;
                }
                out[0] = c;
            }
        });
        return out[0];
    }

    /**
     * Ends the whole MPI job: prints the reason on stderr and calls {@code MPI_Abort} (every process
     * of the job exits with code 1). Idempotent within this process.
     */
    @Override
    public void abort(String reason) {
        String why = reason == null ? "abort() called" : reason;
        synchronized (MpiCommunicator.class) {
            if (abortedReason == null) {
                abortedReason = "aborted: " + why;
            }
            if (processFailure != null && processFailure.startsWith("MPI_Abort")) {
                return;
            }
            processFailure = "MPI_Abort: " + why;
        }
        System.err.println("qkern: rank " + rank + " of " + size + " aborts the MPI job: " + why);
        System.err.flush();
        MpiLibrary.LOCK.lock();
        try {
            mpi.abort(comm, 1);
        } finally {
            MpiLibrary.LOCK.unlock();
        }
    }

    /**
     * Frees this communicator; closing the last open MPI communicator of the process finalizes MPI
     * (unless a TIMEOUT or BACKEND failure happened: then MPI is left for the process exit).
     */
    @Override
    public void close() {
        synchronized (this) {
            if (closed) {
                return;
            }
            closed = true;
            freeScratch();
        }
        synchronized (MpiCommunicator.class) {
            openCount--;
            if (processFailure == null) {
                MpiLibrary.LOCK.lock();
                try (Arena a = Arena.ofConfined()) {
                    MemorySegment slot = a.allocate(ValueLayout.ADDRESS);
                    slot.set(ValueLayout.ADDRESS, 0, comm);
                    int rc = mpi.commFree(slot);
                    if (rc != MpiLibrary.MPI_SUCCESS) {
                        throw new CommunicatorException(CommunicatorException.Kind.BACKEND, "MPI_Comm_free failed: "
                                + mpi.errorText(rc));
                    }
                } finally {
                    MpiLibrary.LOCK.unlock();
                }
            }
            if (openCount == 0 && initializedByUs && !finalizedByUs && processFailure == null) {
                finalizeBounded();
            }
        }
    }

    @Override
    public String toString() {
        return "MpiCommunicator(rank " + rank + " of " + size + ", timeout " + human(timeout) + ")";
    }

    // ---- description exchange ----------------------------------------------------------------------

    private CollectiveCall[] exchangeCollective(CollectiveCall mine) {
        int[] peers = new int[size - 1];
        for (int r = 0, i = 0; r < size; r++) {
            if (r != rank) {
                peers[i++] = r;
            }
        }
        CollectiveCall[] calls = exchange(mine, peers);
        CollectiveCall.requireAgreement(BACKEND, Arrays.asList(calls));
        return calls;
    }

    private void exchangePair(CollectiveCall mine, int peer) {
        CollectiveCall theirs = exchange(mine, new int[] {peer})[peer];
        CollectiveCall.Op expected = mine.op() == CollectiveCall.Op.SEND ? CollectiveCall.Op.RECV
                : CollectiveCall.Op.SEND;
        if (theirs.op() != expected || theirs.rootOrPeer() != rank) {
            throw new CommunicatorException(CommunicatorException.Kind.MISMATCH, "mismatched point-to-point call ("
                    + BACKEND + "): rank " + rank + " " + mine.describe() + ", rank " + peer + " "
                    + theirs.describe());
        }
        if (mine.op() == CollectiveCall.Op.SEND) {
            CollectiveCall.requirePair(BACKEND, rank, mine, peer, theirs);
        } else {
            CollectiveCall.requirePair(BACKEND, peer, theirs, rank, mine);
        }
    }

    /** Sends {@code mine} to every peer and receives theirs; the result is indexed by rank (mine included). */
    private CollectiveCall[] exchange(CollectiveCall mine, int[] peers) {
        int n = CollectiveCall.ENCODED_LONGS;
        // Not closed when the exchange times out: MPI may still write into it.
        Arena arena = Arena.ofShared();
        MemorySegment out = arena.allocate(ValueLayout.JAVA_LONG, n);
        MemorySegment.copy(mine.encode(), 0, out, ValueLayout.JAVA_LONG, 0, n);
        MemorySegment in = arena.allocate(ValueLayout.JAVA_LONG, (long) n * peers.length);
        MemorySegment reqs = arena.allocate(REQUEST_BYTES * 2L * Math.max(1, peers.length), 8);
        MemorySegment flag = arena.allocate(ValueLayout.JAVA_INT);
        for (int i = 0; i < peers.length; i++) {
            int peer = peers[i];
            MemorySegment recvReq = reqs.asSlice(REQUEST_BYTES * i, REQUEST_BYTES);
            MemorySegment sendReq = reqs.asSlice(REQUEST_BYTES * (peers.length + i), REQUEST_BYTES);
            MemorySegment slot = in.asSlice((long) i * n * 8, (long) n * 8);
            issue(mine, "MPI_Irecv", () -> mpi.irecv(slot, n, mpi.typeI64, peer, TAG_CALL, comm, recvReq));
            issue(mine, "MPI_Isend", () -> mpi.isend(out, n, mpi.typeI64, peer, TAG_CALL, comm, sendReq));
        }
        long deadline = System.nanoTime() + timeout.toNanos();
        boolean[] done = new boolean[2 * peers.length];
        boolean all = pollAll(mine, reqs, done, flag, deadline);
        CollectiveCall[] calls = new CollectiveCall[size];
        calls[rank] = mine;
        List<Integer> missing = new ArrayList<>();
        for (int i = 0; i < peers.length; i++) {
            if (done[i]) {
                calls[peers[i]] = CollectiveCall.decode(in.asSlice((long) i * n * 8, (long) n * 8)
                        .toArray(ValueLayout.JAVA_LONG), 0);
            } else {
                missing.add(peers[i]);
            }
        }
        if (all) {
            arena.close();
            return calls;
        }
        processFailure = "timeout in " + mine.describe();
        StringBuilder arrived = new StringBuilder();
        boolean disagree = false;
        for (int r = 0; r < size; r++) {
            if (calls[r] != null) {
                arrived.append(arrived.length() == 0 ? "" : "; ").append("rank ").append(r).append(' ')
                        .append(calls[r].describe());
                disagree |= r != rank && peers.length > 1 && !calls[r].agreesWith(mine);
            }
        }
        String who = missing.isEmpty()
                ? "every rank called it but this rank's description was not delivered to all of them"
                : "rank" + (missing.size() == 1 ? " " : "s ") + missing + (missing.size() == 1 ? " has" : " have")
                        + " not called it";
        throw new CommunicatorException(disagree ? CommunicatorException.Kind.MISMATCH
                : CommunicatorException.Kind.TIMEOUT, "rank " + rank + " of " + size + ": " + mine.describe()
                + " timed out after " + human(timeout) + " (" + BACKEND + "): " + who
                + (disagree ? "; calls seen: " + arrived : ""));
    }

    // ---- data movement -----------------------------------------------------------------------------

    /**
     * allReduce ({@code gather} true) or reduceScatter, through reduce-scatter-block windows of at most
     * MAX_COUNT elements per rank: pack each rank's block window (widened for F16/BF16, zero-padded past
     * the end), reduce-scatter it, and for allReduce all-gather the reduced (narrowed) windows.
     */
    private void reduce(CollectiveCall call, Tensor send, Tensor recv, ReduceOp op, boolean gather) {
        DType dt = send.dtype();
        long n = send.numel();
        if (n == 0) {
            return;
        }
        boolean half = dt == DType.F16 || dt == DType.BF16;
        long osz = dt.byteSize();
        long rsz = half ? 4 : osz;
        MemorySegment redType = switch (dt) {
            case F32, F16, BF16 -> mpi.typeFloat;
            case F64 -> mpi.typeDouble;
            case I32 -> mpi.typeI32;
            case I64 -> mpi.typeI64;
            default -> throw invalid("cannot reduce " + dt);
        };
        MemorySegment move = moveType(dt);
        long block = gather ? (n + size - 1) / size : recv.numel();   // elements each rank reduces
        long w = Math.min(block, MAX_COUNT);
        try (Tensor.Lease ls = send.acquire(); Tensor.Lease lr = recv.acquire(); Arena arena = Arena.ofShared()) {
            MemorySegment src = send.segment();
            MemorySegment dst = recv.segment();
            if (overlaps(src, dst) && src.address() != dst.address()) {
                src = arena.allocate(src.byteSize(), 64).copyFrom(src);
            }
            // scratch reused across calls: fresh buffers this size would be page-faulted in on every call
            long packedBytes = align(size * w * rsz);
            long mineBytes = align(w * rsz);
            long narrowBytes = half ? align(w * osz) : 0;
            long gatheredBytes = gather ? align(size * w * osz) : 0;
            long ringBytes = align(2 * w * rsz);
            MemorySegment slab = scratch(packedBytes + mineBytes + narrowBytes + gatheredBytes + ringBytes + 64);
            long at = 0;
            MemorySegment packed = slab.asSlice(at, packedBytes);
            at += packedBytes;
            MemorySegment mine = slab.asSlice(at, mineBytes);
            at += mineBytes;
            MemorySegment mineNarrow = half ? slab.asSlice(at, narrowBytes) : mine;
            at += narrowBytes;
            MemorySegment gathered = gather ? slab.asSlice(at, gatheredBytes) : null;
            at += gatheredBytes;
            MemorySegment ring = slab.asSlice(at, ringBytes);
            at += ringBytes;
            MemorySegment req = slab.asSlice(at, ValueLayout.ADDRESS.byteSize());
            MemorySegment flag = slab.asSlice(at + 8, 4);
            MemorySegment ringReqs = slab.asSlice(at + 16, REQUEST_BYTES * 2);
            long total = gather ? n : block * size;
            for (long off = 0; off < block; off += w) {
                int len = (int) Math.min(w, block - off);
                for (int r = 0; r < size; r++) {
                    long first = r * block + off;
                    long avail = Math.max(0, Math.min(len, total - first));
                    MemorySegment to = packed.asSlice(r * len * rsz, len * rsz);
                    if (half) {
                        widen(src, dt, first, avail, to);
                    } else if (avail > 0) {
                        MemorySegment.copy(src, first * osz, to, 0, avail * osz);
                    }
                    if (avail < len) {
                        to.asSlice(avail * rsz).fill((byte) 0);
                    }
                }
                ringReduceScatter(call, packed, mine, len, half ? DType.F32 : dt, redType, op, ring, ringReqs, flag);
                if (half) {
                    narrow(mine, dt, len, mineNarrow);
                }
                if (!gather) {
                    MemorySegment.copy(mineNarrow, 0, dst, off * osz, len * osz);
                    continue;
                }
                MemorySegment gatheredNow = gathered.asSlice(0, size * len * osz);
                issue(call, "MPI_Iallgather", () -> mpi.iallgather(mineNarrow, len, move, gatheredNow, len, move, comm,
                        req));
                if (!await(call, req, flag)) {
                    throw dataTimeout(call, "MPI_Iallgather");
                }
                for (int r = 0; r < size; r++) {
                    long first = r * block + off;
                    long avail = Math.max(0, Math.min(len, n - first));
                    if (avail > 0) {
                        MemorySegment.copy(gatheredNow, r * len * osz, dst, first * osz, avail * osz);
                    }
                }
            }
        }
    }

    /**
     * Ring reduce-scatter of {@code packed} ({@code size} blocks of {@code len} elements of
     * {@code redDtype}) into {@code mine} (this rank's block): in step s rank r passes its partial of
     * block (r - s - 1) mod P to rank r + 1 and adds its own contribution to the partial of block
     * (r - s - 2) mod P received from rank r - 1; after P - 1 steps it holds block r, reduced once,
     * so every rank's copy after the all-gather has the same bits. Data moves with MPI_Isend/Irecv
     * and is combined by {@link HostReduction}: Open MPI's non-blocking MPI_Ireduce_scatter_block
     * (libnbc) reached only ~0.3 GB/s on 64 MiB here, the ring runs at memory speed.
     */
    private void ringReduceScatter(CollectiveCall call, MemorySegment packed, MemorySegment mine, int len,
            DType redDtype, MemorySegment redType, ReduceOp op, MemorySegment ring, MemorySegment reqs,
            MemorySegment flag) {
        long bytes = len * (long) redDtype.byteSize();
        if (size == 1) {
            MemorySegment.copy(packed, 0, mine, 0, bytes);
            return;
        }
        MemorySegment out = ring.asSlice(0, bytes);
        MemorySegment in = ring.asSlice(bytes, bytes);
        int next = (rank + 1) % size;
        int prev = (rank + size - 1) % size;
        MemorySegment.copy(packed, Math.floorMod(rank - 1, size) * bytes, out, 0, bytes);
        for (int step = 0; step < size - 1; step++) {
            MemorySegment recvReq = reqs.asSlice(0, REQUEST_BYTES);
            MemorySegment sendReq = reqs.asSlice(REQUEST_BYTES, REQUEST_BYTES);
            issue(call, "MPI_Irecv", () -> mpi.irecv(in, len, redType, prev, TAG_RING, comm, recvReq));
            issue(call, "MPI_Isend", () -> mpi.isend(out, len, redType, next, TAG_RING, comm, sendReq));
            if (!pollAll(call, reqs, new boolean[2], flag, System.nanoTime() + timeout.toNanos())) {
                throw dataTimeout(call, "ring reduce-scatter step " + step);
            }
            int block = Math.floorMod(rank - step - 2, size);
            MemorySegment target = step == size - 2 ? mine : out;
            HostReduction.reduce(redDtype, op, List.of(in, packed.asSlice(block * bytes, bytes)), 0, List.of(target),
                    0, len);
        }
    }

    private Arena scratchArena;
    private MemorySegment scratchSlab;

    private static long align(long bytes) {
        return (bytes + 63) & ~63L;
    }

    /**
     * A grow-only scratch slab owned by this communicator (its calls are synchronized, so no call is
     * using it here). After a TIMEOUT or BACKEND failure MPI may still write into it, so it is then
     * never freed.
     */
    private MemorySegment scratch(long bytes) {
        if (scratchSlab == null || scratchSlab.byteSize() < bytes) {
            freeScratch();
            scratchArena = Arena.ofShared();
            scratchSlab = scratchArena.allocate(bytes, 64);
        }
        return scratchSlab.asSlice(0, bytes);
    }

    private void freeScratch() {
        if (scratchArena != null && processFailure == null) {
            scratchArena.close();
        }
        scratchArena = null;
        scratchSlab = null;
    }

    private void gather(CollectiveCall call, Tensor send, Tensor recv) {
        long e = send.numel();
        if (e == 0) {
            return;
        }
        long esz = send.dtype().byteSize();
        MemorySegment move = moveType(send.dtype());
        try (Tensor.Lease ls = send.acquire(); Tensor.Lease lr = recv.acquire(); Arena arena = Arena.ofShared()) {
            MemorySegment src = send.segment();
            MemorySegment dst = recv.segment();
            if (overlaps(src, dst)) {
                src = arena.allocate(src.byteSize(), 64).copyFrom(src);
            }
            MemorySegment req = arena.allocate(ValueLayout.ADDRESS);
            MemorySegment flag = arena.allocate(ValueLayout.JAVA_INT);
            if (e <= MAX_COUNT) {
                MemorySegment from = src;
                issue(call, "MPI_Iallgather", () -> mpi.iallgather(from, (int) e, move, dst, (int) e, move, comm, req));
                if (!await(call, req, flag)) {
                    throw dataTimeout(call, "MPI_Iallgather");
                }
                return;
            }
            MemorySegment window = arena.allocate(size * MAX_COUNT * esz, 64);
            for (long off = 0; off < e; off += MAX_COUNT) {
                int len = (int) Math.min(MAX_COUNT, e - off);
                MemorySegment part = src.asSlice(off * esz, len * esz);
                issue(call, "MPI_Iallgather", () -> mpi.iallgather(part, len, move, window, len, move, comm, req));
                if (!await(call, req, flag)) {
                    throw dataTimeout(call, "MPI_Iallgather");
                }
                for (int r = 0; r < size; r++) {
                    MemorySegment.copy(window, r * len * esz, dst, (r * e + off) * esz, len * esz);
                }
            }
        }
    }

    private void pointToPoint(CollectiveCall call, Tensor buffer, int peer, boolean sending) {
        long n = buffer.numel();
        long esz = buffer.dtype().byteSize();
        MemorySegment type = moveType(buffer.dtype());
        try (Tensor.Lease l = buffer.acquire(); Arena arena = Arena.ofShared()) {
            MemorySegment seg = buffer.segment();
            MemorySegment req = arena.allocate(ValueLayout.ADDRESS);
            MemorySegment flag = arena.allocate(ValueLayout.JAVA_INT);
            for (long off = 0; off < n; off += MAX_COUNT) {
                int len = (int) Math.min(MAX_COUNT, n - off);
                MemorySegment part = seg.asSlice(off * esz, len * esz);
                String fn = sending ? "MPI_Isend" : "MPI_Irecv";
                issue(call, fn, () -> sending ? mpi.isend(part, len, type, peer, TAG_DATA, comm, req)
                        : mpi.irecv(part, len, type, peer, TAG_DATA, comm, req));
                if (!await(call, req, flag)) {
                    throw dataTimeout(call, fn);
                }
            }
        }
    }

    private MemorySegment moveType(DType dt) {
        return switch (dt.byteSize()) {
            case 1 -> mpi.typeByte;
            case 2 -> mpi.typeU16;
            case 4 -> mpi.typeU32;
            case 8 -> mpi.typeU64;
            default -> throw invalid("unsupported element size " + dt.byteSize());
        };
    }

    private static boolean overlaps(MemorySegment a, MemorySegment b) {
        long a0 = a.address();
        long b0 = b.address();
        return a.byteSize() > 0 && b.byteSize() > 0 && a0 < b0 + b.byteSize() && b0 < a0 + a.byteSize();
    }

    private static void widen(MemorySegment src, DType dt, long first, long count, MemorySegment to) {
        for (long i = 0; i < count; i++) {
            short h = src.get(ValueLayout.JAVA_SHORT_UNALIGNED, (first + i) * 2);
            float f = dt == DType.F16 ? Float.float16ToFloat(h) : Float.intBitsToFloat((h & 0xffff) << 16);
            to.set(ValueLayout.JAVA_FLOAT_UNALIGNED, i * 4, f);
        }
    }

    private static void narrow(MemorySegment from, DType dt, long count, MemorySegment to) {
        for (long i = 0; i < count; i++) {
            float f = from.get(ValueLayout.JAVA_FLOAT_UNALIGNED, i * 4);
            short h = dt == DType.F16 ? Float.floatToFloat16(f) : toBf16(f);
            to.set(ValueLayout.JAVA_SHORT_UNALIGNED, i * 2, h);
        }
    }

    /** float to bfloat16, round to nearest even; NaN stays NaN (quieted). */
    static short toBf16(float f) {
        int bits = Float.floatToRawIntBits(f);
        if (Float.isNaN(f)) {
            return (short) ((bits >>> 16) | 0x40);
        }
        return (short) ((bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16);
    }

    // ---- issuing and polling -----------------------------------------------------------------------

    @FunctionalInterface
    private interface MpiCall {
        int invoke();
    }

    /** Runs an operation: refuses on an aborted communicator, counts it in flight, aborts on failure. */
    private void run(CollectiveCall call, Runnable body) {
        requireUsable(call);
        IN_FLIGHT.incrementAndGet();
        try {
            body.run();
        } catch (CommunicatorException e) {
            if (e.kind() != CommunicatorException.Kind.INVALID_ARGUMENT && abortedReason == null) {
                abortedReason = e.kind() + " in " + call.describe() + ": " + e.getMessage();
            }
            throw e;
        } finally {
            IN_FLIGHT.decrementAndGet();
        }
    }

    private void requireUsable(CollectiveCall call) {
        if (closed) {
            throw new CommunicatorException(CommunicatorException.Kind.ABORTED, "rank " + rank + ": "
                    + call.describe() + " on a closed MPI communicator");
        }
        if (abortedReason != null) {
            throw new CommunicatorException(CommunicatorException.Kind.ABORTED, "rank " + rank + ": "
                    + call.describe() + " on an aborted MPI communicator (" + abortedReason + ")");
        }
        String pf = processFailure;
        if (pf != null) {
            throw new CommunicatorException(CommunicatorException.Kind.ABORTED, "rank " + rank + ": "
                    + call.describe() + ": MPI is unusable in this process after an earlier failure (" + pf + ")");
        }
    }

    private static void requireHealthy() {
        String pf = processFailure;
        if (pf != null) {
            throw new CommunicatorException(CommunicatorException.Kind.ABORTED,
                    "MPI is unusable in this process after an earlier failure (" + pf + ")");
        }
    }

    private void issue(CollectiveCall call, String fn, MpiCall c) {
        int rc;
        MpiLibrary.LOCK.lock();
        try {
            rc = c.invoke();
        } finally {
            MpiLibrary.LOCK.unlock();
        }
        if (rc != MpiLibrary.MPI_SUCCESS) {
            processFailure = fn + " failed";
            throw new CommunicatorException(CommunicatorException.Kind.BACKEND, "rank " + rank + ": "
                    + call.describe() + ": " + fn + " failed: " + mpi.errorText(rc));
        }
    }

    private void call(String fn, MpiCall c) {
        lockedCall(mpi, fn, c);
    }

    private static void lockedCall(MpiLibrary mpi, String fn, MpiCall c) {
        int rc;
        MpiLibrary.LOCK.lock();
        try {
            rc = c.invoke();
        } finally {
            MpiLibrary.LOCK.unlock();
        }
        if (rc != MpiLibrary.MPI_SUCCESS) {
            processFailure = fn + " failed";
            throw new CommunicatorException(CommunicatorException.Kind.BACKEND, fn + " failed: " + mpi.errorText(rc));
        }
    }

    private boolean await(CollectiveCall call, MemorySegment req, MemorySegment flag) {
        try {
            return poll(mpi, call.describe(), req, flag, System.nanoTime() + timeout.toNanos());
        } catch (CommunicatorException e) {
            throw new CommunicatorException(e.kind(), "rank " + rank + ": " + e.getMessage(), e);
        }
    }

    private void awaitData(CollectiveCall call, String fn, MemorySegment req, MemorySegment flag) {
        if (!await(call, req, flag)) {
            throw dataTimeout(call, fn);
        }
    }

    private CommunicatorException dataTimeout(CollectiveCall call, String fn) {
        processFailure = fn + " timed out";
        return new CommunicatorException(CommunicatorException.Kind.TIMEOUT, "rank " + rank + " of " + size + ": "
                + call.describe() + ": " + fn + " did not complete within " + human(timeout) + " after every rank had"
                + " arrived (a rank died or stalled during the transfer) (" + BACKEND + ")");
    }

    /** Polls one request with MPI_Test until it completes (true) or the deadline passes (false). */
    private static boolean poll(MpiLibrary mpi, String what, MemorySegment req, MemorySegment flag, long deadline) {
        long waitStart = System.nanoTime();
        for (;;) {
            int rc;
            MpiLibrary.LOCK.lock();
            try {
                rc = mpi.test(req, flag);
            } finally {
                MpiLibrary.LOCK.unlock();
            }
            if (rc != MpiLibrary.MPI_SUCCESS) {
                processFailure = "MPI_Test failed";
                throw new CommunicatorException(CommunicatorException.Kind.BACKEND, what + ": MPI_Test failed: "
                        + mpi.errorText(rc));
            }
            if (flag.get(ValueLayout.JAVA_INT, 0) != 0) {
                return true;
            }
            if (System.nanoTime() - deadline > 0) {
                return false;
            }
            backoff(waitStart);
        }
    }

    /** Polls every request not yet {@code done}; true once all are, false at the deadline. */
    private boolean pollAll(CollectiveCall call, MemorySegment reqs, boolean[] done, MemorySegment flag,
            long deadline) {
        long waitStart = System.nanoTime();
        for (;;) {
            boolean all = true;
            MpiLibrary.LOCK.lock();
            try {
                for (int i = 0; i < done.length; i++) {
                    if (done[i]) {
                        continue;
                    }
                    int rc = mpi.test(reqs.asSlice(REQUEST_BYTES * i, REQUEST_BYTES), flag);
                    if (rc != MpiLibrary.MPI_SUCCESS) {
                        processFailure = "MPI_Test failed";
                        throw new CommunicatorException(CommunicatorException.Kind.BACKEND, "rank " + rank + ": "
                                + call.describe() + ": MPI_Test failed: " + mpi.errorText(rc));
                    }
                    done[i] = flag.get(ValueLayout.JAVA_INT, 0) != 0;
                    all &= done[i];
                }
            } finally {
                MpiLibrary.LOCK.unlock();
            }
            if (all) {
                return true;
            }
            if (System.nanoTime() - deadline > 0) {
                return false;
            }
            backoff(waitStart);
        }
    }

    /**
     * Open MPI moves data only inside MPI_Test (as its blocking calls do, by busy-polling), so a
     * wait polls back to back — sleeping between polls would throttle a large transfer to one
     * fragment per sleep. Only a wait longer than {@link #BUSY_POLL_NANOS} (a stalled or much
     * slower peer) sleeps 50 us between polls, so it does not burn a core until the timeout.
     */
    private static void backoff(long waitStartNanos) {
        if (System.nanoTime() - waitStartNanos < BUSY_POLL_NANOS) {
            Thread.onSpinWait();
        } else {
            LockSupport.parkNanos(50_000L);
        }
    }

    private static final long BUSY_POLL_NANOS = 500_000_000L;

    /** Device tensors are refused with a hint (CollectiveCall does the other checks). */
    private void hostOnly(String what, Tensor input, Tensor output) {
        for (Tensor t : new Tensor[] {input, output}) {
            if (t != null && !t.isClosed() && !t.device().isCpu()) {
                throw invalid(what + ": tensor is on " + t.device() + " but the MPI communicator moves host (cpu)"
                        + " tensors only: copy it to the cpu, or use the NCCL communicator for device tensors");
            }
        }
    }

    private CommunicatorException invalid(String message) {
        return new CommunicatorException(CommunicatorException.Kind.INVALID_ARGUMENT, "rank " + rank + ": " + message);
    }

    private static String human(Duration d) {
        return d.toMillis() % 1000 == 0 ? d.toSeconds() + " s" : d.toMillis() + " ms";
    }
}
