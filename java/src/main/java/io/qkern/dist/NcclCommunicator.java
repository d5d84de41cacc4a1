package io.qkern.dist;

import static java.lang.foreign.ValueLayout.ADDRESS;
import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Qkern;
import io.qkern.QkernException;
import io.qkern.Tensor;
import io.qkern.internal.CudaDriverNative;
import io.qkern.internal.NativeLib;
import io.qkern.internal.NcclNative;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashSet;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Set;
import java.util.concurrent.locks.LockSupport;

/**
 * The NCCL backend of {@link Communicator}: FFM downcalls straight into {@code libnccl.so.2}, found
 * at run time ({@link Nccl}); one rank per CUDA device, CUDA tensors only (a host tensor is an
 * {@link CommunicatorException.Kind#INVALID_ARGUMENT} naming its device).
 *
 * <p><b>Never run against a real NCCL or GPU</b>: it was written on a machine with neither. What ran
 * there: library discovery and its "not found" message, the unique-id layout, the argument checks,
 * and init / error mapping / abort against a small test double of NCCL's C ABI (see the tests).
 *
 * <p>Creating communicators:
 * <ul>
 *   <li>{@link #initAll(List, Duration)}: one process, several GPUs ({@code ncclCommInitAll}), one
 *       communicator per device, rank i on {@code devices.get(i)}; drive them from one thread inside
 *       a {@link CollectiveGroup}, or from one platform thread per GPU.</li>
 *   <li>{@link #initRank(TcpStore, String, int, int, Device, Duration)}: one rank per process; rank 0
 *       makes an {@link NcclUniqueId} and publishes it through the {@link TcpStore}.</li>
 *   <li>{@link #initRank(byte[], int, int, Device, Duration)}: the id bytes came some other way (an
 *       MPI broadcast from {@code MpiCommunicator}).</li>
 * </ul>
 * Multi-process init is non-blocking ({@code ncclCommInitRankConfig} with {@code blocking = 0},
 * NCCL 2.14+) and polled against the timeout, so a rank that never arrives gives
 * {@link CommunicatorException.Kind#TIMEOUT} and the half-made communicator is aborted.
 *
 * <p>How a collective runs: every call is described ({@code CollectiveCall}) and, before any data
 * moves, the ranks' descriptions are exchanged on the device ({@code ncclAllGather} of 15 int64: the
 * first call's 13-long encoding, the number of calls and a hash of all of them; {@code ncclSend} /
 * {@code ncclRecv} of the 13 longs with the peer for point-to-point), then compared: a mismatch fails
 * with {@link CommunicatorException.Kind#MISMATCH} on every rank. Then the NCCL call is issued on the
 * device's legacy default stream (so it is ordered after qkern's own default-stream work and
 * {@code qk_memcpy}), an event is recorded behind it, and completion is polled ({@code qk_event_query})
 * together with {@code ncclCommGetAsyncError} until the deadline. On a timeout or an asynchronous
 * error the communicator is aborted ({@code ncclCommAbort}) and the call throws
 * {@link CommunicatorException.Kind#TIMEOUT} or {@link CommunicatorException.Kind#BACKEND} carrying
 * {@code ncclGetErrorString} and {@code ncclGetLastError}. The exchange doubles the latency of small
 * collectives; that is the price of detecting mismatches instead of corrupting memory.
 *
 * <p>Inside a {@link CollectiveGroup} calls are only recorded; when the group closes they are
 * checked (one exchange per communicator, in one {@code ncclGroupStart/End}), issued in one
 * {@code ncclGroupStart/End} and waited for. Every rank must group the same calls the same way
 * (a group of two calls on one rank against two single calls on another is a MISMATCH).
 *
 * <p>Differences from the contract of {@link Communicator} that NCCL imposes:
 * <ul>
 *   <li>Reductions follow NCCL's own order and arithmetic; F16/BF16 sums are NCCL's (it may round at
 *       each step), not "summed in float and rounded once". Results are still identical on every
 *       rank.</li>
 *   <li>A rank that closes or aborts cannot notify the others: they fail with TIMEOUT (or BACKEND
 *       when NCCL notices), not ABORTED.</li>
 * </ul>
 */
public final class NcclCommunicator implements Communicator {
    /** Longs exchanged per rank before each batch of calls: a call's encoding, the count, a hash. */
    static final int DIGEST_LONGS = CollectiveCall.ENCODED_LONGS + 2;

    private static final Object GROUP_KEY = new Object();
    private static final ThreadLocal<Batch> OPEN_BATCH = new ThreadLocal<>();

    private final NcclNative nccl;
    private final int rank;
    private final int size;
    private final Device device;
    private final Duration timeout;
    private final boolean retainedContext;
    private final Object lock = new Object();
    private MemorySegment comm;              // ncclComm_t; NULL once destroyed or aborted
    private Tensor digestSend, digestRecv, barrierBuffer; // lazily made device buffers
    private MemorySegment event;             // qk_event on the device, lazily made
    private String abortReason;
    private boolean closed;

    NcclCommunicator(NcclNative nccl, MemorySegment comm, int rank, int size, Device device, Duration timeout,
            boolean retainedContext) {
        this.nccl = nccl;
        this.comm = comm;
        this.rank = rank;
        this.size = size;
        this.device = device;
        this.timeout = timeout;
        this.retainedContext = retainedContext;
    }

    // ---- creation ---------------------------------------------------------------------------------

    /** One rank of a multi-process group; rank 0 publishes the unique id under {@code name} in the store. */
    public static NcclCommunicator initRank(TcpStore store, String name, int rank, int size, Device device,
            Duration timeout) {
        checkGroup(rank, size, device, timeout);
        String key = "qkern/nccl/" + name + "/unique-id";
        NcclUniqueId id;
        if (rank == 0) {
            id = NcclUniqueId.create();
            store.set(key, id.toBytes());
        } else {
            id = NcclUniqueId.of(store.get(key, timeout));
        }
        return initRank(id, rank, size, device, timeout);
    }

    /**
     * One rank of an NCCL group with the same ranks as {@code bootstrap}, a host communicator (MPI
     * under {@code mpirun}, or in-process): rank 0 creates the unique id and broadcasts it over
     * {@code bootstrap}; every rank then joins on {@code device}. A collective call on bootstrap.
     */
    public static NcclCommunicator initRank(Communicator bootstrap, Device device, Duration timeout) {
        NcclUniqueId id = shareUniqueId(bootstrap, NcclUniqueId::create);
        return initRank(id, bootstrap.rank(), bootstrap.size(), device, timeout);
    }

    /** Rank 0's {@code create()}d id, broadcast over the host communicator {@code bootstrap} to every rank. */
    static NcclUniqueId shareUniqueId(Communicator bootstrap, java.util.function.Supplier<NcclUniqueId> create) {
        if (!bootstrap.device().isCpu()) {
            throw new IllegalArgumentException("the bootstrap communicator must move host tensors, it is on "
                    + bootstrap.device());
        }
        try (io.qkern.Tensor id = io.qkern.Tensor.allocate(io.qkern.DType.U8, Device.CPU, NcclUniqueId.BYTES)) {
            id.fillBytes(0);
            if (bootstrap.rank() == 0) {
                id.segment().copyFrom(java.lang.foreign.MemorySegment.ofArray(create.get().toBytes()));
            }
            bootstrap.broadcast(id, 0);
            return NcclUniqueId.of(id.toByteArray());
        }
    }

    /** One rank of a multi-process group from id bytes received from rank 0 (e.g. by MPI broadcast). */
    public static NcclCommunicator initRank(byte[] uniqueId, int rank, int size, Device device, Duration timeout) {
        return initRank(NcclUniqueId.of(uniqueId), rank, size, device, timeout);
    }

    /** One rank of a multi-process group (every rank passes the same id). */
    public static NcclCommunicator initRank(NcclUniqueId id, int rank, int size, Device device, Duration timeout) {
        checkGroup(rank, size, device, timeout);
        NcclNative nccl = Nccl.library();
        requireCuda(device);
        CudaDriverNative driver;
        try {
            driver = CudaDriverNative.get();
            // ncclCommInitRankConfig takes the calling thread's current device
            driver.makeCurrent(device.index());
        } catch (IllegalStateException e) {
            throw new CommunicatorException(CommunicatorException.Kind.BACKEND, "rank " + rank + ": cannot make "
                    + device + " current for NCCL: " + e.getMessage(), e);
        }
        try {
            return initRankOnCurrentDevice(nccl, id, rank, size, device, timeout, true);
        } catch (RuntimeException e) {
            driver.release(device.index());
            throw e;
        }
    }

    /** The init itself, on whatever device is current on this thread. */
    static NcclCommunicator initRankOnCurrentDevice(NcclNative nccl, NcclUniqueId id, int rank, int size,
            Device device, Duration timeout, boolean retainedContext) {
        checkGroup(rank, size, device, timeout);
        long deadline = System.nanoTime() + timeout.toNanos();
        MemorySegment comm;
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment out = arena.allocate(ADDRESS);
            int st;
            try {
                st = nccl.commInitRankConfig(out, size, id.toSegment(arena), rank, NcclNative.nonBlockingConfig(arena));
            } catch (UnsupportedOperationException e) {
                throw new CommunicatorException(CommunicatorException.Kind.BACKEND, e.getMessage());
            }
            comm = out.get(ADDRESS, 0);
            if (st != NcclNative.SUCCESS && st != NcclNative.IN_PROGRESS) {
                String last = nccl.lastError(comm);
                if (!comm.equals(MemorySegment.NULL)) {
                    nccl.commAbort(comm);
                }
                throw new CommunicatorException(CommunicatorException.Kind.BACKEND, "rank " + rank
                        + ": ncclCommInitRankConfig(nranks=" + size + ", rank=" + rank + ") failed: "
                        + nccl.errorString(st) + " (ncclResult_t " + st + ")" + NcclUniqueId.lastErrorSuffix(last));
            }
        }
        NcclCommunicator c = new NcclCommunicator(nccl, comm, rank, size, device, timeout, retainedContext);
        c.awaitReady(deadline, "ncclCommInitRankConfig (waiting for all " + size + " ranks to join)");
        return c;
    }

    /** One process, every GPU of {@code mesh}: rank r on {@code mesh.device(r)} ({@code ncclCommInitAll}). */
    public static List<NcclCommunicator> initAll(DeviceMesh mesh, Duration timeout) {
        return initAll(mesh.devices(), timeout);
    }

    /**
     * One process, several GPUs: {@code ncclCommInitAll}, rank i on {@code devices.get(i)}. Close
     * every returned communicator.
     */
    public static List<NcclCommunicator> initAll(List<Device> devices, Duration timeout) {
        if (devices == null || devices.isEmpty()) {
            throw new CommunicatorException(CommunicatorException.Kind.INVALID_ARGUMENT,
                    "initAll: devices is " + (devices == null ? "null" : "empty"));
        }
        Set<Integer> seen = new HashSet<>();
        for (Device d : devices) {
            checkGroup(0, devices.size(), d, timeout);
            if (!seen.add(d.index())) {
                throw new CommunicatorException(CommunicatorException.Kind.INVALID_ARGUMENT, "initAll: " + d
                        + " is listed twice (NCCL runs one rank per GPU)");
            }
        }
        NcclNative nccl = Nccl.library();
        for (Device d : devices) {
            requireCuda(d);
        }
        return initAllWith(nccl, devices, timeout);
    }

    static List<NcclCommunicator> initAllWith(NcclNative nccl, List<Device> devices, Duration timeout) {
        int n = devices.size();
        List<NcclCommunicator> out = new ArrayList<>(n);
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment comms = arena.allocate(ADDRESS, n);
            MemorySegment devlist = arena.allocate(JAVA_INT, n);
            for (int i = 0; i < n; i++) {
                devlist.setAtIndex(JAVA_INT, i, devices.get(i).index());
            }
            int st;
            try {
                st = nccl.commInitAll(comms, n, devlist);
            } catch (UnsupportedOperationException e) {
                throw new CommunicatorException(CommunicatorException.Kind.BACKEND, e.getMessage());
            }
            if (st != NcclNative.SUCCESS) {
                throw new CommunicatorException(CommunicatorException.Kind.BACKEND, "ncclCommInitAll over " + devices
                        + " failed: " + nccl.errorString(st) + " (ncclResult_t " + st + ")"
                        + NcclUniqueId.lastErrorSuffix(nccl.lastError(MemorySegment.NULL)));
            }
            for (int i = 0; i < n; i++) {
                out.add(new NcclCommunicator(nccl, comms.getAtIndex(ADDRESS, i), i, n, devices.get(i), timeout, false));
            }
        }
        return out;
    }

    private static void checkGroup(int rank, int size, Device device, Duration timeout) {
        if (size < 1) {
            throw new CommunicatorException(CommunicatorException.Kind.INVALID_ARGUMENT, "NCCL: size " + size
                    + " must be at least 1");
        }
        if (rank < 0 || rank >= size) {
            throw new CommunicatorException(CommunicatorException.Kind.INVALID_ARGUMENT, "NCCL: rank " + rank
                    + " is out of range [0, " + size + ")");
        }
        if (device == null || device.isCpu()) {
            throw new CommunicatorException(CommunicatorException.Kind.INVALID_ARGUMENT, "NCCL runs on CUDA devices;"
                    + " rank " + rank + " was given " + device + " (use the in-process or MPI communicator for host"
                    + " tensors)");
        }
        if (timeout == null || timeout.isNegative() || timeout.isZero()) {
            throw new CommunicatorException(CommunicatorException.Kind.INVALID_ARGUMENT, "NCCL: timeout must be"
                    + " positive, got " + timeout);
        }
    }

    private static void requireCuda(Device device) {
        if (!Qkern.cudaAvailable()) {
            throw new CommunicatorException(CommunicatorException.Kind.BACKEND, "NCCL needs CUDA, and " + device
                    + " is not usable: " + Qkern.info().cudaStatus());
        }
    }

    // ---- Communicator ----------------------------------------------------------------------------

    @Override
    public int rank() {
        return rank;
    }

    @Override
    public int size() {
        return size;
    }

    @Override
    public Device device() {
        return device;
    }

    @Override
    public String backend() {
        return "nccl";
    }

    @Override
    public Duration timeout() {
        return timeout;
    }

    /** The NCCL this communicator calls ("2.x.y at path"). */
    public String ncclVersion() {
        return nccl.versionString() + " at " + nccl.location();
    }

    @Override
    public void allReduce(Tensor send, Tensor recv, ReduceOp op) {
        CollectiveCall call = CollectiveCall.allReduce(this, send, recv, op);
        int dtype = reduceType(call.dtype());
        int redop = redOp(op);
        long count = send.numel();
        submit(call, List.of(send, recv), () -> nccl.allReduce(send.address(), recv.address(), count, dtype, redop,
                handle(), MemorySegment.NULL), "ncclAllReduce");
    }

    @Override
    public void allGather(Tensor send, Tensor recv) {
        CollectiveCall call = CollectiveCall.allGather(this, send, recv);
        long bytes = send.byteSize();
        submit(call, List.of(send, recv), () -> nccl.allGather(send.address(), recv.address(), bytes,
                NcclNative.UINT8, handle(), MemorySegment.NULL), "ncclAllGather");
    }

    @Override
    public void reduceScatter(Tensor send, Tensor recv, ReduceOp op) {
        CollectiveCall call = CollectiveCall.reduceScatter(this, send, recv, op);
        int dtype = reduceType(call.dtype());
        int redop = redOp(op);
        long count = recv.numel();
        submit(call, List.of(send, recv), () -> nccl.reduceScatter(send.address(), recv.address(), count, dtype,
                redop, handle(), MemorySegment.NULL), "ncclReduceScatter");
    }

    @Override
    public void broadcast(Tensor buffer, int root) {
        CollectiveCall call = CollectiveCall.broadcast(this, buffer, root);
        long bytes = buffer.byteSize();
        submit(call, List.of(buffer), () -> nccl.broadcast(buffer.address(), buffer.address(), bytes,
                NcclNative.UINT8, root, handle(), MemorySegment.NULL), "ncclBroadcast");
    }

    /** An all-reduce of one element on a small device buffer, after the usual call exchange. */
    @Override
    public void barrier() {
        ensureUsable();
        Tensor b = barrierBuffer();
        submit(CollectiveCall.barrier(), List.of(b), () -> nccl.allReduce(b.address(), b.address(), 1,
                NcclNative.FLOAT32, NcclNative.SUM, handle(), MemorySegment.NULL), "ncclAllReduce (barrier)");
    }

    @Override
    public void send(Tensor buffer, int peer) {
        CollectiveCall call = CollectiveCall.send(this, buffer, peer);
        long bytes = buffer.byteSize();
        submit(call, List.of(buffer), () -> nccl.send(buffer.address(), bytes, NcclNative.UINT8, peer, handle(),
                MemorySegment.NULL), "ncclSend");
    }

    @Override
    public void recv(Tensor buffer, int peer) {
        CollectiveCall call = CollectiveCall.recv(this, buffer, peer);
        long bytes = buffer.byteSize();
        submit(call, List.of(buffer), () -> nccl.recv(buffer.address(), bytes, NcclNative.UINT8, peer, handle(),
                MemorySegment.NULL), "ncclRecv");
    }

    /**
     * {@code ncclCommSplit}: after the usual exchange (which tells every rank every color and key), the
     * new rank and size are computed here exactly as NCCL orders them (key, then parent rank). Not
     * inside a {@link CollectiveGroup}; {@code color} must be non-negative.
     */
    @Override
    public Communicator split(int color, int key) {
        if (color < 0) {
            throw new CommunicatorException(CommunicatorException.Kind.INVALID_ARGUMENT, "rank " + rank
                    + ": split color " + color + " must be non-negative");
        }
        if (CollectiveGroup.current() != null) {
            throw new CommunicatorException(CommunicatorException.Kind.INVALID_ARGUMENT, "rank " + rank
                    + ": the NCCL backend does not split inside a CollectiveGroup");
        }
        ensureUsable();
        long deadline = System.nanoTime() + timeout.toNanos();
        CollectiveCall call = CollectiveCall.split(color, key);
        long[][] all = exchangeDigests(List.of(new Pending(this, call, List.of(), null, "split")), deadline);
        List<int[]> members = new ArrayList<>(); // {key, parent rank} of my color
        for (int r = 0; r < size; r++) {
            CollectiveCall other = CollectiveCall.decode(all[r], 0);
            if (other.op() != CollectiveCall.Op.SPLIT) {
                throw fail(CommunicatorException.Kind.MISMATCH, "mismatched collective across ranks (nccl): rank "
                        + rank + " split, rank " + r + " " + other.describe());
            }
            if (other.shape()[0] == color) {
                members.add(new int[] {(int) other.shape()[1], r});
            }
        }
        members.sort((a, b) -> a[0] != b[0] ? Integer.compare(a[0], b[0]) : Integer.compare(a[1], b[1]));
        int newRank = -1;
        for (int i = 0; i < members.size(); i++) {
            if (members.get(i)[1] == rank) {
                newRank = i;
            }
        }
        MemorySegment child;
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment out = arena.allocate(ADDRESS);
            int st = nccl.commSplit(handle(), color, key, out, MemorySegment.NULL); // NULL: inherit non-blocking
            if (st != NcclNative.SUCCESS && st != NcclNative.IN_PROGRESS) {
                throw failNccl("ncclCommSplit(color=" + color + ", key=" + key + ")", st);
            }
            child = out.get(ADDRESS, 0);
        } catch (UnsupportedOperationException e) {
            throw fail(CommunicatorException.Kind.BACKEND, e.getMessage());
        }
        awaitReady(deadline, "ncclCommSplit");
        NcclCommunicator c = new NcclCommunicator(nccl, child, newRank, members.size(), device, timeout, false);
        c.awaitReady(deadline, "ncclCommSplit (new communicator)");
        return c;
    }

    @Override
    public void abort(String reason) {
        synchronized (lock) {
            if (abortReason == null && !closed) {
                abortReason = reason == null ? "aborted" : reason;
            }
            if (comm != null && !comm.equals(MemorySegment.NULL)) {
                nccl.commAbort(comm); // also frees the communicator: nothing left to destroy
                comm = MemorySegment.NULL;
            }
        }
    }

    /** Destroys the NCCL communicator (or aborts it after a failure) and frees this rank's buffers. */
    @Override
    public void close() {
        synchronized (lock) {
            if (closed) {
                return;
            }
            closed = true;
            try {
                if (comm != null && !comm.equals(MemorySegment.NULL)) {
                    int st = abortReason != null ? nccl.commAbort(comm) : nccl.commDestroy(comm);
                    comm = MemorySegment.NULL;
                    if (st != NcclNative.SUCCESS && st != NcclNative.IN_PROGRESS) {
                        throw new CommunicatorException(CommunicatorException.Kind.BACKEND, "rank " + rank
                                + ": ncclCommDestroy failed: " + nccl.errorString(st));
                    }
                }
            } finally {
                for (Tensor t : new Tensor[] {digestSend, digestRecv, barrierBuffer}) {
                    if (t != null) {
                        t.close();
                    }
                }
                if (event != null) {
                    NativeLib.get().eventDestroy(event);
                    event = null;
                }
                if (retainedContext) {
                    CudaDriverNative.get().release(device.index());
                }
            }
        }
    }

    @Override
    public String toString() {
        return "NcclCommunicator[rank " + rank + "/" + size + " on " + device + "]";
    }

    // ---- issuing ---------------------------------------------------------------------------------

    @FunctionalInterface
    private interface Issue {
        int run();
    }

    private record Pending(NcclCommunicator comm, CollectiveCall call, List<Tensor> tensors, Issue issue,
            String function) {
        boolean pointToPoint() {
            return call.op() == CollectiveCall.Op.SEND || call.op() == CollectiveCall.Op.RECV;
        }
    }

    /** The calls one thread issued inside one {@link CollectiveGroup}. */
    private static final class Batch {
        final List<Pending> calls = new ArrayList<>();
    }

    private void submit(CollectiveCall call, List<Tensor> tensors, Issue issue, String function) {
        ensureUsable();
        Pending p = new Pending(this, call, tensors, issue, function);
        CollectiveGroup group = CollectiveGroup.current();
        if (group == null) {
            flush(List.of(p));
            return;
        }
        group.join(GROUP_KEY, () -> OPEN_BATCH.set(new Batch()), () -> {
            Batch b = OPEN_BATCH.get();
            OPEN_BATCH.remove();
            if (b != null && !b.calls.isEmpty()) {
                flush(b.calls);
            }
        });
        OPEN_BATCH.get().calls.add(p);
    }

    /** Checks the calls against the other ranks', issues them in one NCCL group and waits for them. */
    private static void flush(List<Pending> calls) {
        List<NcclCommunicator> comms = new ArrayList<>(new LinkedHashSet<>(calls.stream().map(Pending::comm).toList()));
        long start = System.nanoTime();
        List<Tensor.Lease> leases = new ArrayList<>();
        try {
            for (Pending p : calls) {
                for (Tensor t : p.tensors()) {
                    leases.add(t.acquire());
                }
            }
            // 1. compare descriptions across ranks before any data moves
            checkAcrossRanks(calls, comms, start);
            // 2. issue the data movement together, 3. wait for it
            NcclNative nccl = comms.get(0).nccl;
            groupCall(nccl, true, comms);
            RuntimeException issueFailure = null;
            for (Pending p : calls) {
                int st = p.issue().run();
                if (st != NcclNative.SUCCESS && st != NcclNative.IN_PROGRESS && issueFailure == null) {
                    issueFailure = p.comm().failNccl(p.function() + " " + p.call().describe(), st);
                }
            }
            groupCall(nccl, false, comms);
            if (issueFailure != null) {
                throw issueFailure;
            }
            for (NcclCommunicator c : comms) {
                c.awaitDone(start + c.timeout.toNanos(), describe(calls, c));
            }
        } catch (RuntimeException e) {
            for (NcclCommunicator c : comms) {
                c.abort(e.getMessage());
            }
            throw e;
        } finally {
            for (Tensor.Lease l : leases) {
                l.close();
            }
        }
    }

    private static void groupCall(NcclNative nccl, boolean start, List<NcclCommunicator> comms) {
        int st = start ? nccl.groupStart() : nccl.groupEnd();
        if (st != NcclNative.SUCCESS && st != NcclNative.IN_PROGRESS) {
            throw comms.get(0).failNccl(start ? "ncclGroupStart" : "ncclGroupEnd", st);
        }
    }

    private static String describe(List<Pending> calls, NcclCommunicator c) {
        List<String> mine = calls.stream().filter(p -> p.comm() == c).map(p -> p.call().describe()).toList();
        return mine.size() == 1 ? mine.get(0) : "group " + mine;
    }

    /** The exchange: an all-gather of digests (collectives) and pairwise swaps (send/recv), then checks. */
    private static void checkAcrossRanks(List<Pending> calls, List<NcclCommunicator> comms, long start) {
        List<Pending> collective = calls.stream().filter(p -> !p.pointToPoint()).toList();
        List<Pending> p2p = calls.stream().filter(Pending::pointToPoint).toList();
        List<Tensor> scratch = new ArrayList<>();
        try {
            NcclNative nccl = comms.get(0).nccl;
            List<NcclCommunicator> gathering = new ArrayList<>();
            for (NcclCommunicator c : comms) {
                List<Pending> mine = collective.stream().filter(p -> p.comm() == c).toList();
                if (!mine.isEmpty()) {
                    c.stageDigest(digest(mine));
                    gathering.add(c);
                }
            }
            List<Tensor[]> pairs = new ArrayList<>();
            for (Pending p : p2p) {
                Tensor mine = Tensor.allocate(DType.I64, p.comm().device, CollectiveCall.ENCODED_LONGS);
                scratch.add(mine);
                Tensor theirs = Tensor.allocate(DType.I64, p.comm().device, CollectiveCall.ENCODED_LONGS);
                scratch.add(theirs);
                mine.copyFrom(longs(p.call().encode()));
                pairs.add(new Tensor[] {mine, theirs});
            }
            groupCall(nccl, true, comms);
            for (NcclCommunicator c : gathering) {
                int st = nccl.allGather(c.digestSend.address(), c.digestRecv.address(), DIGEST_LONGS,
                        NcclNative.INT64, c.handle(), MemorySegment.NULL);
                if (st != NcclNative.SUCCESS && st != NcclNative.IN_PROGRESS) {
                    groupCall(nccl, false, comms);
                    throw c.failNccl("ncclAllGather (call check)", st);
                }
            }
            for (int i = 0; i < p2p.size(); i++) {
                Pending p = p2p.get(i);
                int peer = p.call().rootOrPeer();
                MemorySegment h = p.comm().handle();
                int st1 = nccl.send(pairs.get(i)[0].address(), CollectiveCall.ENCODED_LONGS, NcclNative.INT64, peer, h,
                        MemorySegment.NULL);
                int st2 = nccl.recv(pairs.get(i)[1].address(), CollectiveCall.ENCODED_LONGS, NcclNative.INT64, peer, h,
                        MemorySegment.NULL);
                int st = st1 != NcclNative.SUCCESS && st1 != NcclNative.IN_PROGRESS ? st1 : st2;
                if (st != NcclNative.SUCCESS && st != NcclNative.IN_PROGRESS) {
                    groupCall(nccl, false, comms);
                    throw p.comm().failNccl("ncclSend/ncclRecv (call check with rank " + peer + ")", st);
                }
            }
            groupCall(nccl, false, comms);
            for (NcclCommunicator c : comms) {
                c.awaitDone(start + c.timeout.toNanos(), "the call check before " + describe(calls, c));
            }
            for (NcclCommunicator c : gathering) {
                long[][] all = c.readDigests();
                List<Pending> mine = collective.stream().filter(p -> p.comm() == c).toList();
                c.compareDigests(all, mine);
            }
            for (int i = 0; i < p2p.size(); i++) {
                Pending p = p2p.get(i);
                long[] theirs = toLongs(pairs.get(i)[1]);
                CollectiveCall other = CollectiveCall.decode(theirs, 0);
                int me = p.comm().rank;
                int peer = p.call().rootOrPeer();
                boolean paired = other.rootOrPeer() == me && (p.call().op() == CollectiveCall.Op.SEND
                        ? other.op() == CollectiveCall.Op.RECV : other.op() == CollectiveCall.Op.SEND);
                if (!paired) {
                    throw p.comm().fail(CommunicatorException.Kind.MISMATCH, "mismatched send/recv (nccl): rank " + me
                            + " " + p.call().describe() + ", rank " + peer + " " + other.describe());
                }
                if (p.call().op() == CollectiveCall.Op.SEND) {
                    CollectiveCall.requirePair("nccl", me, p.call(), peer, other);
                } else {
                    CollectiveCall.requirePair("nccl", peer, other, me, p.call());
                }
            }
        } finally {
            for (Tensor t : scratch) {
                t.close();
            }
        }
    }

    /** Exchanges the digests of {@code mine} alone (used by split, outside any group). */
    private long[][] exchangeDigests(List<Pending> mine, long deadline) {
        try {
            stageDigest(digest(mine));
            groupCall(nccl, true, List.of(this));
            int st = nccl.allGather(digestSend.address(), digestRecv.address(), DIGEST_LONGS, NcclNative.INT64,
                    handle(), MemorySegment.NULL);
            groupCall(nccl, false, List.of(this));
            if (st != NcclNative.SUCCESS && st != NcclNative.IN_PROGRESS) {
                throw failNccl("ncclAllGather (call check)", st);
            }
            awaitDone(deadline, "the call check before " + mine.get(0).call().describe());
            return readDigests();
        } catch (RuntimeException e) {
            abort(e.getMessage());
            throw e;
        }
    }

    /** The first call's encoding, the number of calls and a hash over every call's encoding. */
    static long[] digest(List<Pending> calls) {
        long[] d = new long[DIGEST_LONGS];
        long[] first = calls.get(0).call().encode();
        System.arraycopy(first, 0, d, 0, first.length);
        d[CollectiveCall.ENCODED_LONGS] = calls.size();
        long h = 0xcbf29ce484222325L;
        for (Pending p : calls) {
            for (long v : p.call().encode()) {
                h = (h ^ v) * 0x100000001b3L;
            }
        }
        d[CollectiveCall.ENCODED_LONGS + 1] = h;
        return d;
    }

    private void compareDigests(long[][] all, List<Pending> mine) {
        boolean same = true;
        for (long[] other : all) {
            same &= Arrays.equals(other, all[rank]);
        }
        if (same) {
            return;
        }
        boolean allSingle = true;
        for (long[] other : all) {
            allSingle &= other[CollectiveCall.ENCODED_LONGS] == 1;
        }
        if (allSingle) {
            List<CollectiveCall> decoded = new ArrayList<>();
            for (long[] other : all) {
                decoded.add(CollectiveCall.decode(other, 0));
            }
            try {
                CollectiveCall.requireAgreement("nccl", decoded);
            } catch (CommunicatorException e) {
                throw fail(e.kind(), e.getMessage());
            }
            // the encodings differ only where agreesWith does not look (SPLIT's color and key)
            return;
        }
        StringBuilder sb = new StringBuilder("mismatched collective group across ranks (nccl): ");
        for (int r = 0; r < size; r++) {
            sb.append(r == 0 ? "" : "; ").append("rank ").append(r).append(' ')
                    .append(all[r][CollectiveCall.ENCODED_LONGS]).append(" call(s) starting with ")
                    .append(CollectiveCall.decode(all[r], 0).describe());
        }
        sb.append("; this rank (").append(rank).append(") issued ")
                .append(mine.stream().map(p -> p.call().describe()).toList());
        throw fail(CommunicatorException.Kind.MISMATCH, sb.toString());
    }

    // ---- device buffers ----------------------------------------------------------------------------

    private void stageDigest(long[] digest) {
        synchronized (lock) {
            if (digestSend == null) {
                digestSend = Tensor.allocate(DType.I64, device, DIGEST_LONGS);
                digestRecv = Tensor.allocate(DType.I64, device, (long) DIGEST_LONGS * size);
            }
        }
        try (Tensor host = longs(digest)) {
            digestSend.copyFrom(host);
        }
    }

    private long[][] readDigests() {
        long[] flat = toLongs(digestRecv);
        long[][] all = new long[size][];
        for (int r = 0; r < size; r++) {
            all[r] = Arrays.copyOfRange(flat, r * DIGEST_LONGS, (r + 1) * DIGEST_LONGS);
        }
        return all;
    }

    private Tensor barrierBuffer() {
        synchronized (lock) {
            if (barrierBuffer == null) {
                barrierBuffer = Tensor.allocate(DType.F32, device, 1);
            }
            return barrierBuffer;
        }
    }

    private static Tensor longs(long[] values) {
        Tensor t = Tensor.allocate(DType.I64, Device.CPU, values.length);
        MemorySegment.copy(values, 0, t.segment(), JAVA_LONG, 0, values.length);
        return t;
    }

    private static long[] toLongs(Tensor deviceTensor) {
        try (Tensor host = deviceTensor.copyTo(Device.CPU)) {
            return host.segment().toArray(JAVA_LONG);
        }
    }

    // ---- waiting -----------------------------------------------------------------------------------

    /** Until NCCL has finished the non-blocking init / split / group launch (no longer ncclInProgress). */
    private void awaitReady(long deadline, String what) {
        int spins = 0;
        while (true) {
            int async = asyncError(what);
            if (async == NcclNative.SUCCESS) {
                return;
            }
            if (async != NcclNative.IN_PROGRESS) {
                throw failNccl(what, async);
            }
            if (System.nanoTime() - deadline >= 0) {
                throw fail(CommunicatorException.Kind.TIMEOUT, what + " did not finish within " + timeout
                        + " (some ranks did not arrive, or a rank died); communicator aborted");
            }
            pause(spins++);
        }
    }

    /** Until the issued work has finished on the device, polling completion and NCCL's async error. */
    private void awaitDone(long deadline, String what) {
        awaitReady(deadline, what + " (launch)");
        MemorySegment ev = event();
        NativeLib lib = NativeLib.get();
        try {
            lib.eventRecord(ev, MemorySegment.NULL); // the legacy default stream, where the calls went
        } catch (QkernException e) {
            throw fail(CommunicatorException.Kind.BACKEND, what + ": " + e.getMessage());
        }
        int spins = 0;
        while (true) {
            boolean done;
            try {
                done = NcclNative.eventQuery(ev);
            } catch (QkernException e) {
                throw fail(CommunicatorException.Kind.BACKEND, what + ": " + e.getMessage());
            }
            if (done) {
                int async = asyncError(what);
                if (async != NcclNative.SUCCESS) {
                    throw failNccl(what, async);
                }
                return;
            }
            int async = asyncError(what);
            if (async != NcclNative.SUCCESS && async != NcclNative.IN_PROGRESS) {
                throw failNccl(what, async);
            }
            if (System.nanoTime() - deadline >= 0) {
                throw fail(CommunicatorException.Kind.TIMEOUT, "rank " + rank + ": " + what + " did not complete within "
                        + timeout + " (not every rank arrived, or a rank died or stalled); communicator aborted");
            }
            pause(spins++);
        }
    }

    private int asyncError(String what) {
        int[] r;
        try {
            r = nccl.commGetAsyncError(handle());
        } catch (UnsupportedOperationException e) {
            throw fail(CommunicatorException.Kind.BACKEND, e.getMessage());
        }
        if (r[0] != NcclNative.SUCCESS) {
            throw failNccl("ncclCommGetAsyncError during " + what, r[0]);
        }
        return r[1];
    }

    private MemorySegment event() {
        synchronized (lock) {
            if (event == null) {
                event = NativeLib.get().eventCreate(Device.Kind.CUDA.code(), device.index());
            }
            return event;
        }
    }

    /** Spin briefly (collectives on one node finish in microseconds), then park in short steps. */
    private static void pause(int spins) {
        if (spins < 200) {
            Thread.onSpinWait();
        } else {
            LockSupport.parkNanos(spins < 2_000 ? 20_000 : 500_000);
        }
    }

    // ---- state and errors ----------------------------------------------------------------------------

    private MemorySegment handle() {
        synchronized (lock) {
            if (comm == null || comm.equals(MemorySegment.NULL)) {
                throw aborted();
            }
            return comm;
        }
    }

    private void ensureUsable() {
        synchronized (lock) {
            if (closed || abortReason != null || comm == null || comm.equals(MemorySegment.NULL)) {
                throw aborted();
            }
        }
    }

    private CommunicatorException aborted() {
        return new CommunicatorException(CommunicatorException.Kind.ABORTED, "rank " + rank + ": this NCCL"
                + " communicator is " + (closed ? "closed" : "aborted (" + abortReason + ")"));
    }

    /** A failure of kind {@code kind}: aborts this communicator, returns the exception to throw. */
    private CommunicatorException fail(CommunicatorException.Kind kind, String message) {
        String m = message.startsWith("rank ") || message.startsWith("mismatched") ? message
                : "rank " + rank + ": " + message;
        CommunicatorException e = new CommunicatorException(kind, m);
        abort(m);
        return e;
    }

    /** An NCCL error result: message with ncclGetErrorString and ncclGetLastError, communicator aborted. */
    private CommunicatorException failNccl(String what, int result) {
        String last;
        synchronized (lock) {
            last = nccl.lastError(comm == null ? MemorySegment.NULL : comm);
        }
        return fail(CommunicatorException.Kind.BACKEND, what + " failed: " + nccl.errorString(result)
                + " (ncclResult_t " + result + ")" + NcclUniqueId.lastErrorSuffix(last));
    }

    static int reduceType(DType dtype) {
        return switch (dtype) {
            case F32 -> NcclNative.FLOAT32;
            case F64 -> NcclNative.FLOAT64;
            case F16 -> NcclNative.FLOAT16;
            case BF16 -> NcclNative.BFLOAT16;
            case I32 -> NcclNative.INT32;
            case I64 -> NcclNative.INT64;
            default -> throw new CommunicatorException(CommunicatorException.Kind.INVALID_ARGUMENT,
                    "NCCL cannot reduce " + dtype);
        };
    }

    static int redOp(ReduceOp op) {
        return switch (op) {
            case SUM -> NcclNative.SUM;
            case MAX -> NcclNative.MAX;
            case MIN -> NcclNative.MIN;
        };
    }
}
