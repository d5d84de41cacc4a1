package io.qkern.internal;

import static java.lang.foreign.ValueLayout.ADDRESS;
import static java.lang.foreign.ValueLayout.JAVA_BYTE;
import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;

import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.foreign.MemoryLayout;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.StructLayout;
import java.lang.foreign.SymbolLookup;
import java.lang.invoke.MethodHandle;
import java.nio.file.DirectoryStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.Set;

/**
 * FFM downcalls into NVIDIA's NCCL ({@code libnccl.so.2}), found at run time: qkern has no build-time
 * dependency on NCCL. Signatures and enum values follow NCCL's public {@code nccl.h} (2.14 or newer
 * for the communicator; any 2.x for the version).
 *
 * <p>Only {@code ncclGetVersion} and {@code ncclGetErrorString} are required to load; every other
 * function is optional here and a missing one fails when used, naming the function (an old NCCL, or
 * a partial test double). Calls return NCCL's raw {@code ncclResult_t}; {@code io.qkern.dist} turns
 * them into exceptions with {@link #errorString} and {@link #lastError}.
 *
 * <p>Never run against a real NCCL or GPU on the machine this was written on (no GPU, no libnccl);
 * exercised there only through the test double in the tests.
 */
public final class NcclNative {
    /** Where the library is searched for, in order, when {@code -Dqkern.nccl.path} is not set. */
    public static final List<String> LIBRARY_NAMES = List.of("libnccl.so.2", "libnccl.so");

    public static final String PATH_PROPERTY = "qkern.nccl.path";

    // ncclResult_t
    public static final int SUCCESS = 0, INVALID_ARGUMENT = 4, IN_PROGRESS = 7;

    // ncclDataType_t
    public static final int INT8 = 0, UINT8 = 1, INT32 = 2, INT64 = 4, FLOAT16 = 6, FLOAT32 = 7, FLOAT64 = 8,
            BFLOAT16 = 9;

    // ncclRedOp_t
    public static final int SUM = 0, MAX = 2, MIN = 3;

    public static final int UNIQUE_ID_BYTES = 128;

    /** {@code ncclUniqueId}: {@code struct { char internal[128]; }}, passed by value to the init calls. */
    public static final StructLayout UNIQUE_ID = MemoryLayout.structLayout(
            MemoryLayout.sequenceLayout(UNIQUE_ID_BYTES, JAVA_BYTE).withName("internal")).withName("ncclUniqueId");

    /**
     * The NCCL 2.14 prefix of {@code ncclConfig_t} (size, magic, version, blocking, cgaClusterSize,
     * minCTAs, maxCTAs, netName). NCCL reads {@code size} bytes and treats fields a config of an older
     * {@code version} lacks as unset, so this prefix stays valid for every later NCCL.
     */
    public static final StructLayout CONFIG_2_14 = MemoryLayout.structLayout(
            JAVA_LONG.withName("size"), JAVA_INT.withName("magic"), JAVA_INT.withName("version"),
            JAVA_INT.withName("blocking"), JAVA_INT.withName("cgaClusterSize"), JAVA_INT.withName("minCTAs"),
            JAVA_INT.withName("maxCTAs"), ADDRESS.withName("netName")).withName("ncclConfig_v21400");

    private static final int CONFIG_MAGIC = 0xcafebeef;
    private static final int CONFIG_VERSION_2_14 = 21400;
    private static final int CONFIG_UNDEF_INT = Integer.MIN_VALUE;

    // ---- discovery ---------------------------------------------------------------------------

    /** The outcome of a search: the library found (and how), or null and every place tried. */
    public record Discovery(NcclNative library, List<String> searched) {
        public String describeSearch() {
            return String.join("; ", searched);
        }
    }

    private static volatile Discovery discovered;

    /** Searches once per JVM (see {@link #candidates}) and remembers the outcome. */
    public static Discovery discover() {
        Discovery d = discovered;
        if (d == null) {
            synchronized (NcclNative.class) {
                d = discovered;
                if (d == null) {
                    d = search(System.getProperty(PATH_PROPERTY), System.getenv());
                    discovered = d;
                }
            }
        }
        return d;
    }

    /**
     * Searches for NCCL. With {@code override} (the value of {@code -Dqkern.nccl.path}) only that file is
     * tried: an explicit choice that fails must not silently fall back to another NCCL. Otherwise: the
     * dynamic loader's own search for {@link #LIBRARY_NAMES}, then those names in each
     * {@code LD_LIBRARY_PATH} directory, {@code $CUDA_HOME/lib64}, /usr/local/cuda/lib64,
     * /usr/lib/x86_64-linux-gnu and the {@code nvidia/nccl/lib} directory of the pip wheel
     * {@code nvidia-nccl-cu12/13} in the Python environments it can see.
     */
    public static Discovery search(String override, Map<String, String> env) {
        List<String> searched = new ArrayList<>();
        if (override != null && !override.isBlank()) {
            Path p = Path.of(override);
            String how = "-D" + PATH_PROPERTY + "=" + override;
            if (!Files.isRegularFile(p)) {
                searched.add(how + " (no such file)");
                return new Discovery(null, searched);
            }
            return tryOpen(p.toString(), how, searched);
        }
        searched.add("-D" + PATH_PROPERTY + " (not set)");
        for (String name : LIBRARY_NAMES) {
            Discovery d = tryOpen(name, "dynamic loader name " + name, searched);
            if (d.library() != null) {
                return d;
            }
        }
        for (Path dir : candidateDirectories(env)) {
            boolean any = false;
            for (String name : LIBRARY_NAMES) {
                Path p = dir.resolve(name);
                if (Files.isRegularFile(p)) {
                    any = true;
                    Discovery d = tryOpen(p.toString(), p.toString(), searched);
                    if (d.library() != null) {
                        return d;
                    }
                }
            }
            if (!any) {
                searched.add(dir + (Files.isDirectory(dir) ? " (no libnccl.so.2 / libnccl.so)" : " (no such directory)"));
            }
        }
        return new Discovery(null, searched);
    }

    /** The directories searched after the loader, in order, without duplicates. */
    public static List<Path> candidateDirectories(Map<String, String> env) {
        Set<Path> dirs = new LinkedHashSet<>();
        String ld = env.get("LD_LIBRARY_PATH");
        if (ld != null) {
            for (String part : ld.split(":")) {
                if (!part.isBlank()) {
                    dirs.add(Path.of(part));
                }
            }
        }
        String cudaHome = env.get("CUDA_HOME");
        if (cudaHome != null && !cudaHome.isBlank()) {
            dirs.add(Path.of(cudaHome, "lib64"));
        }
        dirs.add(Path.of("/usr/local/cuda/lib64"));
        dirs.add(Path.of("/usr/lib/x86_64-linux-gnu"));
        // pip install nvidia-nccl-cu12 puts the library at <site-packages>/nvidia/nccl/lib/libnccl.so.2
        List<Path> pythonLibs = new ArrayList<>();
        String venv = env.get("VIRTUAL_ENV");
        if (venv != null && !venv.isBlank()) {
            pythonLibs.add(Path.of(venv, "lib"));
        }
        String conda = env.get("CONDA_PREFIX");
        if (conda != null && !conda.isBlank()) {
            pythonLibs.add(Path.of(conda, "lib"));
        }
        String home = env.get("HOME");
        if (home != null && !home.isBlank()) {
            pythonLibs.add(Path.of(home, ".local", "lib"));
        }
        pythonLibs.add(Path.of("/usr/local/lib"));
        pythonLibs.add(Path.of("/usr/lib"));
        for (Path lib : pythonLibs) {
            for (Path python : pythonDirs(lib)) {
                for (String packages : List.of("site-packages", "dist-packages")) {
                    Path wheel = python.resolve(packages).resolve("nvidia").resolve("nccl").resolve("lib");
                    if (Files.isDirectory(wheel)) {
                        dirs.add(wheel);
                    }
                }
            }
        }
        return List.copyOf(dirs);
    }

    private static List<Path> pythonDirs(Path lib) {
        List<Path> out = new ArrayList<>();
        if (!Files.isDirectory(lib)) {
            return out;
        }
        try (DirectoryStream<Path> ds = Files.newDirectoryStream(lib, "python3*")) {
            for (Path p : ds) {
                out.add(p);
            }
        } catch (IOException | SecurityException e) {
            // an unreadable directory holds no wheel we could load anyway
        }
        out.sort(null);
        return out;
    }

    private static Discovery tryOpen(String nameOrPath, String how, List<String> searched) {
        try {
            NcclNative lib = open(nameOrPath, how);
            searched.add(how + " (found: NCCL " + lib.versionString() + ")");
            return new Discovery(lib, searched);
        } catch (IllegalArgumentException | IllegalStateException e) {
            searched.add(how + " (" + e.getMessage() + ")");
            return new Discovery(null, searched);
        }
    }

    /**
     * Loads one library (a path, or a bare name for the dynamic loader) and binds NCCL's functions.
     * Throws IllegalArgumentException when it cannot be loaded, IllegalStateException when it is not an
     * NCCL (no ncclGetVersion / ncclGetErrorString).
     */
    public static NcclNative open(String nameOrPath, String how) {
        SymbolLookup lookup;
        try {
            lookup = nameOrPath.contains("/") ? SymbolLookup.libraryLookup(Path.of(nameOrPath), Arena.global())
                    : SymbolLookup.libraryLookup(nameOrPath, Arena.global());
        } catch (IllegalArgumentException e) {
            throw new IllegalArgumentException("cannot be loaded: " + (e.getMessage() == null ? e : e.getMessage()));
        }
        return new NcclNative(lookup, nameOrPath, how);
    }

    // ---- bindings -------------------------------------------------------------------------------

    private final String location;
    private final String how;
    private final SymbolLookup lookup;
    private final Linker linker = Linker.nativeLinker();
    private final int versionCode;
    private final MethodHandle getErrorString;
    private final MethodHandle getLastError, getUniqueId, commInitRankConfig, commInitAll, commDestroy, commAbort,
            commGetAsyncError, commSplit, groupStart, groupEnd, allReduce, allGather, reduceScatter, broadcast, send,
            recv;

    private NcclNative(SymbolLookup lookup, String location, String how) {
        this.lookup = lookup;
        this.location = location;
        this.how = how;
        MethodHandle getVersion = required("ncclGetVersion", FunctionDescriptor.of(JAVA_INT, ADDRESS));
        getErrorString = required("ncclGetErrorString", FunctionDescriptor.of(ADDRESS, JAVA_INT));
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment out = arena.allocate(JAVA_INT);
            int st = (int) getVersion.invokeExact(out);
            if (st != SUCCESS) {
                throw new IllegalStateException("ncclGetVersion failed: " + errorString(st));
            }
            versionCode = out.get(JAVA_INT, 0);
        } catch (IllegalStateException e) {
            throw e;
        } catch (Throwable t) {
            throw NativeLib.bug("ncclGetVersion", t);
        }
        FunctionDescriptor commOnly = FunctionDescriptor.of(JAVA_INT, ADDRESS);
        getLastError = optional("ncclGetLastError", FunctionDescriptor.of(ADDRESS, ADDRESS));
        getUniqueId = optional("ncclGetUniqueId", commOnly);
        commInitRankConfig = optional("ncclCommInitRankConfig",
                FunctionDescriptor.of(JAVA_INT, ADDRESS, JAVA_INT, UNIQUE_ID, JAVA_INT, ADDRESS));
        commInitAll = optional("ncclCommInitAll", FunctionDescriptor.of(JAVA_INT, ADDRESS, JAVA_INT, ADDRESS));
        commDestroy = optional("ncclCommDestroy", commOnly);
        commAbort = optional("ncclCommAbort", commOnly);
        commGetAsyncError = optional("ncclCommGetAsyncError", FunctionDescriptor.of(JAVA_INT, ADDRESS, ADDRESS));
        commSplit = optional("ncclCommSplit",
                FunctionDescriptor.of(JAVA_INT, ADDRESS, JAVA_INT, JAVA_INT, ADDRESS, ADDRESS));
        groupStart = optional("ncclGroupStart", FunctionDescriptor.of(JAVA_INT));
        groupEnd = optional("ncclGroupEnd", FunctionDescriptor.of(JAVA_INT));
        // size_t counts are JAVA_LONG (LP64); cudaStream_t is a pointer
        allReduce = optional("ncclAllReduce", FunctionDescriptor.of(JAVA_INT, ADDRESS, ADDRESS, JAVA_LONG, JAVA_INT,
                JAVA_INT, ADDRESS, ADDRESS));
        allGather = optional("ncclAllGather", FunctionDescriptor.of(JAVA_INT, ADDRESS, ADDRESS, JAVA_LONG, JAVA_INT,
                ADDRESS, ADDRESS));
        reduceScatter = optional("ncclReduceScatter", FunctionDescriptor.of(JAVA_INT, ADDRESS, ADDRESS, JAVA_LONG,
                JAVA_INT, JAVA_INT, ADDRESS, ADDRESS));
        broadcast = optional("ncclBroadcast", FunctionDescriptor.of(JAVA_INT, ADDRESS, ADDRESS, JAVA_LONG, JAVA_INT,
                JAVA_INT, ADDRESS, ADDRESS));
        send = optional("ncclSend", FunctionDescriptor.of(JAVA_INT, ADDRESS, JAVA_LONG, JAVA_INT, JAVA_INT, ADDRESS,
                ADDRESS));
        recv = optional("ncclRecv", FunctionDescriptor.of(JAVA_INT, ADDRESS, JAVA_LONG, JAVA_INT, JAVA_INT, ADDRESS,
                ADDRESS));
    }

    private MethodHandle required(String name, FunctionDescriptor d) {
        return linker.downcallHandle(lookup.find(name).orElseThrow(
                () -> new IllegalStateException("not an NCCL library: it lacks " + name)), d);
    }

    private MethodHandle optional(String name, FunctionDescriptor d) {
        Optional<MemorySegment> symbol = lookup.find(name);
        return symbol.map(s -> linker.downcallHandle(s, d)).orElse(null);
    }

    private MethodHandle need(MethodHandle h, String name) {
        if (h == null) {
            throw new UnsupportedOperationException("NCCL " + versionString() + " at " + location + " lacks " + name
                    + " (qkern's NCCL communicator needs NCCL 2.14 or newer)");
        }
        return h;
    }

    /** The file or loader name it was loaded from. */
    public String location() {
        return location;
    }

    /** How it was found ("-Dqkern.nccl.path=...", "dynamic loader name libnccl.so.2", a directory). */
    public String how() {
        return how;
    }

    /** {@code ncclGetVersion}'s code. */
    public int versionCode() {
        return versionCode;
    }

    /** "2.x.y": codes from 2.9 on are {@code major*10000 + minor*100 + patch}, older ones {@code *1000}. */
    public String versionString() {
        return decodeVersion(versionCode);
    }

    public static String decodeVersion(int code) {
        int major, minor, patch;
        if (code >= 10000) {
            major = code / 10000;
            minor = (code % 10000) / 100;
            patch = code % 100;
        } else {
            major = code / 1000;
            minor = (code % 1000) / 100;
            patch = code % 100;
        }
        return major + "." + minor + "." + patch;
    }

    // ---- calls ----------------------------------------------------------------------------------

    public String errorString(int result) {
        try {
            return cString((MemorySegment) getErrorString.invokeExact(result));
        } catch (Throwable t) {
            throw NativeLib.bug("ncclGetErrorString", t);
        }
    }

    /** {@code ncclGetLastError(comm)} ("" when this NCCL lacks it or has nothing to say). */
    public String lastError(MemorySegment comm) {
        if (getLastError == null) {
            return "";
        }
        try {
            return cString((MemorySegment) getLastError.invokeExact(comm));
        } catch (Throwable t) {
            throw NativeLib.bug("ncclGetLastError", t);
        }
    }

    /** Fills {@code id} (an {@link #UNIQUE_ID}-shaped segment); returns ncclResult_t. */
    public int getUniqueId(MemorySegment id) {
        try {
            return (int) need(getUniqueId, "ncclGetUniqueId").invokeExact(id);
        } catch (UnsupportedOperationException e) {
            throw e;
        } catch (Throwable t) {
            throw NativeLib.bug("ncclGetUniqueId", t);
        }
    }

    /** A non-blocking (blocking = 0) {@code ncclConfig_t} in {@code arena}. */
    public static MemorySegment nonBlockingConfig(Arena arena) {
        MemorySegment c = arena.allocate(CONFIG_2_14);
        c.set(JAVA_LONG, CONFIG_2_14.byteOffset(MemoryLayout.PathElement.groupElement("size")), CONFIG_2_14.byteSize());
        c.set(JAVA_INT, CONFIG_2_14.byteOffset(MemoryLayout.PathElement.groupElement("magic")), CONFIG_MAGIC);
        c.set(JAVA_INT, CONFIG_2_14.byteOffset(MemoryLayout.PathElement.groupElement("version")), CONFIG_VERSION_2_14);
        c.set(JAVA_INT, CONFIG_2_14.byteOffset(MemoryLayout.PathElement.groupElement("blocking")), 0);
        for (String f : List.of("cgaClusterSize", "minCTAs", "maxCTAs")) {
            c.set(JAVA_INT, CONFIG_2_14.byteOffset(MemoryLayout.PathElement.groupElement(f)), CONFIG_UNDEF_INT);
        }
        c.set(ADDRESS, CONFIG_2_14.byteOffset(MemoryLayout.PathElement.groupElement("netName")), MemorySegment.NULL);
        return c;
    }

    /** {@code ncclCommInitRankConfig(commOut, nranks, id (by value), rank, config)}. */
    public int commInitRankConfig(MemorySegment commOut, int nranks, MemorySegment id, int rank, MemorySegment config) {
        try {
            return (int) need(commInitRankConfig, "ncclCommInitRankConfig").invokeExact(commOut, nranks, id, rank,
                    config);
        } catch (UnsupportedOperationException e) {
            throw e;
        } catch (Throwable t) {
            throw NativeLib.bug("ncclCommInitRankConfig", t);
        }
    }

    public int commInitAll(MemorySegment commsOut, int ndev, MemorySegment devlist) {
        try {
            return (int) need(commInitAll, "ncclCommInitAll").invokeExact(commsOut, ndev, devlist);
        } catch (UnsupportedOperationException e) {
            throw e;
        } catch (Throwable t) {
            throw NativeLib.bug("ncclCommInitAll", t);
        }
    }

    public int commDestroy(MemorySegment comm) {
        return commCall(commDestroy, "ncclCommDestroy", comm);
    }

    public int commAbort(MemorySegment comm) {
        return commCall(commAbort, "ncclCommAbort", comm);
    }

    private int commCall(MethodHandle h, String name, MemorySegment comm) {
        try {
            return (int) need(h, name).invokeExact(comm);
        } catch (UnsupportedOperationException e) {
            throw e;
        } catch (Throwable t) {
            throw NativeLib.bug(name, t);
        }
    }

    /** {@code ncclCommGetAsyncError}: returns {result of the call, the async error}. */
    public int[] commGetAsyncError(MemorySegment comm) {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment out = arena.allocate(JAVA_INT);
            out.set(JAVA_INT, 0, SUCCESS);
            int st = (int) need(commGetAsyncError, "ncclCommGetAsyncError").invokeExact(comm, out);
            return new int[] {st, out.get(JAVA_INT, 0)};
        } catch (UnsupportedOperationException e) {
            throw e;
        } catch (Throwable t) {
            throw NativeLib.bug("ncclCommGetAsyncError", t);
        }
    }

    public int commSplit(MemorySegment comm, int color, int key, MemorySegment newCommOut, MemorySegment config) {
        try {
            return (int) need(commSplit, "ncclCommSplit").invokeExact(comm, color, key, newCommOut, config);
        } catch (UnsupportedOperationException e) {
            throw e;
        } catch (Throwable t) {
            throw NativeLib.bug("ncclCommSplit", t);
        }
    }

    public int groupStart() {
        try {
            return (int) need(groupStart, "ncclGroupStart").invokeExact();
        } catch (UnsupportedOperationException e) {
            throw e;
        } catch (Throwable t) {
            throw NativeLib.bug("ncclGroupStart", t);
        }
    }

    public int groupEnd() {
        try {
            return (int) need(groupEnd, "ncclGroupEnd").invokeExact();
        } catch (UnsupportedOperationException e) {
            throw e;
        } catch (Throwable t) {
            throw NativeLib.bug("ncclGroupEnd", t);
        }
    }

    public int allReduce(long send, long recv, long count, int dtype, int op, MemorySegment comm, MemorySegment stream) {
        try {
            return (int) need(allReduce, "ncclAllReduce").invokeExact(MemorySegment.ofAddress(send),
                    MemorySegment.ofAddress(recv), count, dtype, op, comm, stream);
        } catch (UnsupportedOperationException e) {
            throw e;
        } catch (Throwable t) {
            throw NativeLib.bug("ncclAllReduce", t);
        }
    }

    public int allGather(long send, long recv, long sendCount, int dtype, MemorySegment comm, MemorySegment stream) {
        try {
            return (int) need(allGather, "ncclAllGather").invokeExact(MemorySegment.ofAddress(send),
                    MemorySegment.ofAddress(recv), sendCount, dtype, comm, stream);
        } catch (UnsupportedOperationException e) {
            throw e;
        } catch (Throwable t) {
            throw NativeLib.bug("ncclAllGather", t);
        }
    }

    public int reduceScatter(long send, long recv, long recvCount, int dtype, int op, MemorySegment comm,
            MemorySegment stream) {
        try {
            return (int) need(reduceScatter, "ncclReduceScatter").invokeExact(MemorySegment.ofAddress(send),
                    MemorySegment.ofAddress(recv), recvCount, dtype, op, comm, stream);
        } catch (UnsupportedOperationException e) {
            throw e;
        } catch (Throwable t) {
            throw NativeLib.bug("ncclReduceScatter", t);
        }
    }

    public int broadcast(long send, long recv, long count, int dtype, int root, MemorySegment comm,
            MemorySegment stream) {
        try {
            return (int) need(broadcast, "ncclBroadcast").invokeExact(MemorySegment.ofAddress(send),
                    MemorySegment.ofAddress(recv), count, dtype, root, comm, stream);
        } catch (UnsupportedOperationException e) {
            throw e;
        } catch (Throwable t) {
            throw NativeLib.bug("ncclBroadcast", t);
        }
    }

    public int send(long buffer, long count, int dtype, int peer, MemorySegment comm, MemorySegment stream) {
        try {
            return (int) need(send, "ncclSend").invokeExact(MemorySegment.ofAddress(buffer), count, dtype, peer, comm,
                    stream);
        } catch (UnsupportedOperationException e) {
            throw e;
        } catch (Throwable t) {
            throw NativeLib.bug("ncclSend", t);
        }
    }

    public int recv(long buffer, long count, int dtype, int peer, MemorySegment comm, MemorySegment stream) {
        try {
            return (int) need(recv, "ncclRecv").invokeExact(MemorySegment.ofAddress(buffer), count, dtype, peer, comm,
                    stream);
        } catch (UnsupportedOperationException e) {
            throw e;
        } catch (Throwable t) {
            throw NativeLib.bug("ncclRecv", t);
        }
    }

    private static String cString(MemorySegment p) {
        return p.equals(MemorySegment.NULL) ? "" : p.reinterpret(Long.MAX_VALUE).getString(0);
    }

    // ---- qkern core: qk_event_query ---------------------------------------------------------------

    private static volatile MethodHandle eventQuery;

    /** {@code qk_event_query}: whether the work recorded into {@code event} has finished (non-blocking). */
    public static boolean eventQuery(MemorySegment event) {
        NativeLib lib = NativeLib.get();
        MethodHandle h = eventQuery;
        if (h == null) {
            h = lib.bind("qk_event_query", FunctionDescriptor.of(JAVA_INT, ADDRESS, ADDRESS));
            eventQuery = h;
        }
        int st;
        int done;
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment out = arena.allocate(JAVA_INT);
            st = (int) h.invokeExact(event, out);
            done = out.get(JAVA_INT, 0);
        } catch (Throwable t) {
            throw NativeLib.bug("qk_event_query", t);
        }
        lib.check("qk_event_query", st);
        return done != 0;
    }
}
