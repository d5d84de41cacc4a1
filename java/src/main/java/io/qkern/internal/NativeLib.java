package io.qkern.internal;

import static java.lang.foreign.ValueLayout.ADDRESS;
import static java.lang.foreign.ValueLayout.JAVA_DOUBLE;
import static java.lang.foreign.ValueLayout.JAVA_FLOAT;
import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;

import io.qkern.QkernException;
import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.SymbolLookup;
import java.lang.invoke.MethodHandle;
import java.nio.file.Path;

/**
 * The only class that touches the C ABI: one {@link MethodHandle} per function of
 * include/qkern.h, looked up once. Every fallible call is checked at once: a non-zero status
 * becomes a {@link QkernException} with the function name and {@code qk_last_error()} (read
 * on the same thread, before anything else can overwrite it).
 *
 * <p>If the library cannot be loaded, this class still initializes; {@link #get()} then throws
 * a {@link QkernException} with the reasons, and {@link #loadFailure()} reports them.
 */
public final class NativeLib {
    /** The ABI version this Java code was written against ({@code QK_ABI_VERSION}). */
    public static final int EXPECTED_ABI_VERSION = 1;

    private static final NativeLib INSTANCE;
    private static final String LOAD_FAILURE;

    static {
        NativeLib lib = null;
        String failure = null;
        try {
            NativeLoader.Loaded loaded = NativeLoader.load();
            lib = new NativeLib(loaded);
            int abi = lib.abiVersion();
            if (abi != EXPECTED_ABI_VERSION) {
                failure = "ABI version mismatch: " + loaded.path() + " implements qkern ABI " + abi
                        + " but this qkern jar expects ABI " + EXPECTED_ABI_VERSION
                        + " (use the library built with this jar)";
                lib = null;
            }
        } catch (RuntimeException | LinkageError e) {
            failure = e.getMessage() == null ? e.toString() : e.getMessage();
        }
        INSTANCE = lib;
        LOAD_FAILURE = failure;
    }

    /** The loaded library, or a QkernException saying why there is none. */
    public static NativeLib get() {
        if (INSTANCE == null) {
            throw new QkernException(QkernException.Status.BACKEND_UNAVAILABLE,
                    "the qkern native library is unavailable: " + LOAD_FAILURE);
        }
        return INSTANCE;
    }

    /** Null when the library loaded, else the reason it did not. */
    public static String loadFailure() {
        return LOAD_FAILURE;
    }

    private final Path path;
    private final String origin;
    private final MethodHandle abiVersion, versionString, lastError, cpuPath, cpuSetPath, cpuFeatures,
            cpuThreads, cpuSetThreads, backendAvailable, backendStatus, deviceCount, deviceName,
            deviceMemory, malloc, free, memcpy, memset, streamCreate, streamDestroy, streamSynchronize,
            deviceSynchronize, eventCreate, eventDestroy, eventRecord, eventSynchronize, eventElapsedMs,
            probeReadBandwidth, probeFmaPeak;
    private final SymbolLookup lookup;
    private final Linker linker;

    private NativeLib(NativeLoader.Loaded loaded) {
        this.path = loaded.path();
        this.origin = loaded.origin();
        this.lookup = SymbolLookup.loaderLookup();
        this.linker = Linker.nativeLinker();
        Binder b = this::bind;
        FunctionDescriptor statusOf = FunctionDescriptor.of(JAVA_INT);
        FunctionDescriptor string = FunctionDescriptor.of(ADDRESS);
        abiVersion = b.bind("qk_abi_version", statusOf);
        versionString = b.bind("qk_version_string", string);
        lastError = b.bind("qk_last_error", string);
        cpuPath = b.bind("qk_cpu_path", string);
        cpuSetPath = b.bind("qk_cpu_set_path", FunctionDescriptor.of(JAVA_INT, ADDRESS));
        cpuFeatures = b.bind("qk_cpu_features", string);
        cpuThreads = b.bind("qk_cpu_threads", statusOf);
        cpuSetThreads = b.bind("qk_cpu_set_threads", FunctionDescriptor.of(JAVA_INT, JAVA_INT));
        backendAvailable = b.bind("qk_backend_available", FunctionDescriptor.of(JAVA_INT, JAVA_INT));
        backendStatus = b.bind("qk_backend_status", FunctionDescriptor.of(ADDRESS, JAVA_INT));
        deviceCount = b.bind("qk_device_count", FunctionDescriptor.of(JAVA_INT, JAVA_INT));
        deviceName = b.bind("qk_device_name", FunctionDescriptor.of(JAVA_INT, JAVA_INT, JAVA_INT, ADDRESS, JAVA_LONG));
        deviceMemory = b.bind("qk_device_memory", FunctionDescriptor.of(JAVA_INT, JAVA_INT, JAVA_INT, ADDRESS, ADDRESS));
        malloc = b.bind("qk_malloc", FunctionDescriptor.of(JAVA_INT, JAVA_INT, JAVA_INT, JAVA_LONG, ADDRESS));
        free = b.bind("qk_free", FunctionDescriptor.of(JAVA_INT, JAVA_INT, JAVA_INT, ADDRESS));
        memcpy = b.bind("qk_memcpy", FunctionDescriptor.of(JAVA_INT, ADDRESS, JAVA_INT, JAVA_INT, ADDRESS, JAVA_INT,
                JAVA_INT, JAVA_LONG, ADDRESS));
        memset = b.bind("qk_memset", FunctionDescriptor.of(JAVA_INT, ADDRESS, JAVA_INT, JAVA_INT, JAVA_INT, JAVA_LONG,
                ADDRESS));
        streamCreate = b.bind("qk_stream_create", FunctionDescriptor.of(JAVA_INT, JAVA_INT, JAVA_INT, ADDRESS));
        streamDestroy = b.bind("qk_stream_destroy", FunctionDescriptor.of(JAVA_INT, ADDRESS));
        streamSynchronize = b.bind("qk_stream_synchronize", FunctionDescriptor.of(JAVA_INT, ADDRESS));
        deviceSynchronize = b.bind("qk_device_synchronize", FunctionDescriptor.of(JAVA_INT, JAVA_INT, JAVA_INT));
        eventCreate = b.bind("qk_event_create", FunctionDescriptor.of(JAVA_INT, JAVA_INT, JAVA_INT, ADDRESS));
        eventDestroy = b.bind("qk_event_destroy", FunctionDescriptor.of(JAVA_INT, ADDRESS));
        eventRecord = b.bind("qk_event_record", FunctionDescriptor.of(JAVA_INT, ADDRESS, ADDRESS));
        eventSynchronize = b.bind("qk_event_synchronize", FunctionDescriptor.of(JAVA_INT, ADDRESS));
        eventElapsedMs = b.bind("qk_event_elapsed_ms", FunctionDescriptor.of(JAVA_INT, ADDRESS, ADDRESS, ADDRESS));
        probeReadBandwidth = b.bind("qk_probe_read_bandwidth", FunctionDescriptor.of(JAVA_INT, ADDRESS, JAVA_INT,
                ADDRESS, ADDRESS, JAVA_LONG));
        probeFmaPeak = b.bind("qk_probe_fma_peak", FunctionDescriptor.of(JAVA_INT, JAVA_INT, ADDRESS));
    }

    @FunctionalInterface
    private interface Binder {
        MethodHandle bind(String name, FunctionDescriptor descriptor);
    }

    public Path path() {
        return path;
    }

    /** How the library was found ("-Dqkern.library.path", "jar resource ..."). */
    public String origin() {
        return origin;
    }

    /**
     * Looks up one ABI function. The kernel families bind their functions through this in their
     * own classes of this package ({@code Nf4Native}, ...); this class keeps the core ABI.
     */
    MethodHandle bind(String name, FunctionDescriptor descriptor) {
        return linker.downcallHandle(lookup.find(name).orElseThrow(
                () -> new IllegalStateException(path + " lacks the symbol " + name + " (a stale or foreign library?)")),
                descriptor);
    }

    // ---- checking ---------------------------------------------------------------------------

    /** Turns a non-zero status into a QkernException carrying qk_last_error(). */
    void check(String function, int status) {
        if (status != 0) {
            throw new QkernException(function, status, lastError());
        }
    }

    static AssertionError bug(String function, Throwable t) {
        return new AssertionError("unexpected failure calling " + function + " (a qkern bug)", t);
    }

    private static String cString(MemorySegment p) {
        return p.equals(MemorySegment.NULL) ? "" : p.reinterpret(Long.MAX_VALUE).getString(0);
    }

    // ---- library ------------------------------------------------------------------------------

    public int abiVersion() {
        try {
            return (int) abiVersion.invokeExact();
        } catch (Throwable t) {
            throw bug("qk_abi_version", t);
        }
    }

    public String versionString() {
        try {
            return cString((MemorySegment) versionString.invokeExact());
        } catch (Throwable t) {
            throw bug("qk_version_string", t);
        }
    }

    public String lastError() {
        try {
            return cString((MemorySegment) lastError.invokeExact());
        } catch (Throwable t) {
            throw bug("qk_last_error", t);
        }
    }

    // ---- CPU ------------------------------------------------------------------------------------

    public String cpuPath() {
        try {
            return cString((MemorySegment) cpuPath.invokeExact());
        } catch (Throwable t) {
            throw bug("qk_cpu_path", t);
        }
    }

    public void cpuSetPath(String path) {
        int st;
        try (Arena arena = Arena.ofConfined()) {
            st = (int) cpuSetPath.invokeExact(arena.allocateFrom(path));
        } catch (Throwable t) {
            throw bug("qk_cpu_set_path", t);
        }
        check("qk_cpu_set_path", st);
    }

    public String cpuFeatures() {
        try {
            return cString((MemorySegment) cpuFeatures.invokeExact());
        } catch (Throwable t) {
            throw bug("qk_cpu_features", t);
        }
    }

    public int cpuThreads() {
        try {
            return (int) cpuThreads.invokeExact();
        } catch (Throwable t) {
            throw bug("qk_cpu_threads", t);
        }
    }

    public void cpuSetThreads(int threads) {
        int st;
        try {
            st = (int) cpuSetThreads.invokeExact(threads);
        } catch (Throwable t) {
            throw bug("qk_cpu_set_threads", t);
        }
        check("qk_cpu_set_threads", st);
    }

    // ---- backends and devices -----------------------------------------------------------------

    public boolean backendAvailable(int kind) {
        try {
            return (int) backendAvailable.invokeExact(kind) != 0;
        } catch (Throwable t) {
            throw bug("qk_backend_available", t);
        }
    }

    public String backendStatus(int kind) {
        try {
            return cString((MemorySegment) backendStatus.invokeExact(kind));
        } catch (Throwable t) {
            throw bug("qk_backend_status", t);
        }
    }

    public int deviceCount(int kind) {
        try {
            return (int) deviceCount.invokeExact(kind);
        } catch (Throwable t) {
            throw bug("qk_device_count", t);
        }
    }

    public String deviceName(int kind, int index) {
        int st;
        String name;
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment buf = arena.allocate(256);
            st = (int) deviceName.invokeExact(kind, index, buf, 256L);
            name = st == 0 ? buf.getString(0) : null;
        } catch (Throwable t) {
            throw bug("qk_device_name", t);
        }
        check("qk_device_name", st);
        return name;
    }

    /** {free, total} bytes of a CUDA device. */
    public long[] deviceMemory(int kind, int index) {
        int st;
        long[] result = new long[2];
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment f = arena.allocate(JAVA_LONG);
            MemorySegment t = arena.allocate(JAVA_LONG);
            st = (int) deviceMemory.invokeExact(kind, index, f, t);
            result[0] = f.get(JAVA_LONG, 0);
            result[1] = t.get(JAVA_LONG, 0);
        } catch (Throwable t) {
            throw bug("qk_device_memory", t);
        }
        check("qk_device_memory", st);
        return result;
    }

    // ---- memory ---------------------------------------------------------------------------------

    public long malloc(int kind, int index, long nbytes) {
        int st;
        long address;
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment out = arena.allocate(ADDRESS);
            st = (int) malloc.invokeExact(kind, index, nbytes, out);
            address = out.get(ADDRESS, 0).address();
        } catch (Throwable t) {
            throw bug("qk_malloc", t);
        }
        check("qk_malloc", st);
        return address;
    }

    public void free(int kind, int index, long address) {
        int st;
        try {
            st = (int) free.invokeExact(kind, index, MemorySegment.ofAddress(address));
        } catch (Throwable t) {
            throw bug("qk_free", t);
        }
        check("qk_free", st);
    }

    public void memcpy(long dst, int dstKind, int dstIndex, long src, int srcKind, int srcIndex, long nbytes,
            MemorySegment stream) {
        int st;
        try {
            st = (int) memcpy.invokeExact(MemorySegment.ofAddress(dst), dstKind, dstIndex, MemorySegment.ofAddress(src),
                    srcKind, srcIndex, nbytes, stream);
        } catch (Throwable t) {
            throw bug("qk_memcpy", t);
        }
        check("qk_memcpy", st);
    }

    public void memset(long dst, int kind, int index, int value, long nbytes, MemorySegment stream) {
        int st;
        try {
            st = (int) memset.invokeExact(MemorySegment.ofAddress(dst), kind, index, value, nbytes, stream);
        } catch (Throwable t) {
            throw bug("qk_memset", t);
        }
        check("qk_memset", st);
    }

    // ---- streams and events ---------------------------------------------------------------------

    public MemorySegment streamCreate(int kind, int index) {
        return createHandle("qk_stream_create", streamCreate, kind, index);
    }

    public void streamDestroy(MemorySegment stream) {
        callHandle("qk_stream_destroy", streamDestroy, stream);
    }

    public void streamSynchronize(MemorySegment stream) {
        callHandle("qk_stream_synchronize", streamSynchronize, stream);
    }

    public void deviceSynchronize(int kind, int index) {
        int st;
        try {
            st = (int) deviceSynchronize.invokeExact(kind, index);
        } catch (Throwable t) {
            throw bug("qk_device_synchronize", t);
        }
        check("qk_device_synchronize", st);
    }

    public MemorySegment eventCreate(int kind, int index) {
        return createHandle("qk_event_create", eventCreate, kind, index);
    }

    public void eventDestroy(MemorySegment event) {
        callHandle("qk_event_destroy", eventDestroy, event);
    }

    public void eventSynchronize(MemorySegment event) {
        callHandle("qk_event_synchronize", eventSynchronize, event);
    }

    public void eventRecord(MemorySegment event, MemorySegment stream) {
        int st;
        try {
            st = (int) eventRecord.invokeExact(event, stream);
        } catch (Throwable t) {
            throw bug("qk_event_record", t);
        }
        check("qk_event_record", st);
    }

    public float eventElapsedMs(MemorySegment start, MemorySegment end) {
        int st;
        float ms;
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment out = arena.allocate(JAVA_FLOAT);
            st = (int) eventElapsedMs.invokeExact(start, end, out);
            ms = out.get(JAVA_FLOAT, 0);
        } catch (Throwable t) {
            throw bug("qk_event_elapsed_ms", t);
        }
        check("qk_event_elapsed_ms", st);
        return ms;
    }

    private MemorySegment createHandle(String function, MethodHandle h, int kind, int index) {
        int st;
        MemorySegment handle;
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment out = arena.allocate(ADDRESS);
            st = (int) h.invokeExact(kind, index, out);
            handle = out.get(ADDRESS, 0);
        } catch (Throwable t) {
            throw bug(function, t);
        }
        check(function, st);
        return handle;
    }

    private void callHandle(String function, MethodHandle h, MemorySegment handle) {
        int st;
        try {
            st = (int) h.invokeExact(handle);
        } catch (Throwable t) {
            throw bug(function, t);
        }
        check(function, st);
    }

    // ---- measurement ------------------------------------------------------------------------------

    /** Returns the best GB/s; {@code patternOut[0]} receives the winning pattern's name. */
    public double probeReadBandwidth(MemorySegment buf, int repetitions, String[] patternOut) {
        int st;
        double gbps;
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment out = arena.allocate(JAVA_DOUBLE);
            MemorySegment name = arena.allocate(128);
            st = (int) probeReadBandwidth.invokeExact(buf, repetitions, out, name, 128L);
            gbps = out.get(JAVA_DOUBLE, 0);
            patternOut[0] = st == 0 ? name.getString(0) : "";
        } catch (Throwable t) {
            throw bug("qk_probe_read_bandwidth", t);
        }
        check("qk_probe_read_bandwidth", st);
        return gbps;
    }

    /** Returns the best float32 GFLOP/s of FMA chains on every CPU worker thread. */
    public double probeFmaPeak(int repetitions) {
        int st;
        double gflops;
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment out = arena.allocate(JAVA_DOUBLE);
            st = (int) probeFmaPeak.invokeExact(repetitions, out);
            gflops = out.get(JAVA_DOUBLE, 0);
        } catch (Throwable t) {
            throw bug("qk_probe_fma_peak", t);
        }
        check("qk_probe_fma_peak", st);
        return gflops;
    }
}
