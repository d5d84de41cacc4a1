package io.qkern.dist;

import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.SymbolLookup;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.MethodHandle;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.locks.ReentrantLock;

/**
 * Open MPI's libmpi, found and bound at run time (no build-time dependency).
 *
 * <p>The library is opened with libc's {@code dlopen(path, RTLD_NOW | RTLD_GLOBAL)}: Open MPI loads
 * its components (btl, pml, coll plugins) with dlopen too, and they resolve libmpi's symbols from
 * the global namespace, which {@link SymbolLookup#libraryLookup} (RTLD_LOCAL) would hide. Symbols
 * are then looked up with {@code dlsym}.
 *
 * <p>Only Open MPI's ABI is bound: its handles ({@code MPI_Comm}, {@code MPI_Datatype}, {@code MPI_Op},
 * {@code MPI_Request}, {@code MPI_Errhandler}) are pointers, the predefined ones being the addresses
 * of globals such as {@code ompi_mpi_comm_world}; {@code MPI_IN_PLACE} is {@code (void*)1} and
 * {@code MPI_STATUS_IGNORE} is NULL. MPICH-derived libraries use integer handles and are refused.
 *
 * <p>Every call into MPI holds {@link #LOCK}: MPI is initialized at {@code MPI_THREAD_SERIALIZED}
 * (see {@link MpiCommunicator}), which allows calls from any thread but never two at once.
 */
final class MpiLibrary {
    static final int RTLD_NOW = 0x2;
    static final int RTLD_GLOBAL = 0x100;
    static final int MPI_SUCCESS = 0;
    static final int MPI_THREAD_SERIALIZED = 2;
    static final int MPI_MAX_ERROR_STRING = 256;
    static final int MPI_MAX_LIBRARY_VERSION_STRING = 256;
    static final MemorySegment MPI_IN_PLACE = MemorySegment.ofAddress(1);

    /** Serializes every MPI call in the process (MPI_THREAD_SERIALIZED). */
    static final ReentrantLock LOCK = new ReentrantLock();

    private static final Linker LINKER = Linker.nativeLinker();
    private static final ValueLayout.OfInt I = ValueLayout.JAVA_INT;
    private static final ValueLayout P = ValueLayout.ADDRESS;
    private static MpiLibrary instance;

    final String path;
    // predefined handles (addresses of Open MPI globals)
    final MemorySegment commWorld;
    final MemorySegment errorsReturn;
    final MemorySegment requestNull;
    final MemorySegment typeByte;
    final MemorySegment typeU16;
    final MemorySegment typeU32;
    final MemorySegment typeU64;
    final MemorySegment typeFloat;
    final MemorySegment typeDouble;
    final MemorySegment typeI32;
    final MemorySegment typeI64;

    final MethodHandle initThread;        // (int*, char***, int, int*) -> int
    final MethodHandle initialized;       // (int*) -> int
    final MethodHandle finalized;         // (int*) -> int
    final MethodHandle finalizeMpi;       // () -> int
    final MethodHandle abort;             // (MPI_Comm, int) -> int
    final MethodHandle commRank;          // (MPI_Comm, int*) -> int
    final MethodHandle commSize;          // (MPI_Comm, int*) -> int
    final MethodHandle commIdup;          // (MPI_Comm, MPI_Comm*, MPI_Request*) -> int
    final MethodHandle commSplit;         // (MPI_Comm, int, int, MPI_Comm*) -> int
    final MethodHandle commFree;          // (MPI_Comm*) -> int
    final MethodHandle commSetErrhandler; // (MPI_Comm, MPI_Errhandler) -> int
    final MethodHandle errorString;       // (int, char*, int*) -> int
    final MethodHandle libraryVersion;    // (char*, int*) -> int
    final MethodHandle isend;             // (void*, int, type, int, int, comm, req*) -> int
    final MethodHandle irecv;             // (void*, int, type, int, int, comm, req*) -> int
    final MethodHandle test;              // (req*, int*, status*) -> int
    final MethodHandle cancel;            // (req*) -> int
    final MethodHandle requestFree;       // (req*) -> int
    final MethodHandle iallgather;        // (void*, int, type, void*, int, type, comm, req*) -> int
    final MethodHandle ibcast;            // (void*, int, type, int, comm, req*) -> int

    private MpiLibrary(String path, MemorySegment handle, Dl dl) {
        this.path = path;
        commWorld = dl.symbol(handle, path, "ompi_mpi_comm_world");
        errorsReturn = dl.symbol(handle, path, "ompi_mpi_errors_return");
        requestNull = dl.symbol(handle, path, "ompi_request_null");
        typeByte = dl.symbol(handle, path, "ompi_mpi_byte");
        typeU16 = dl.symbol(handle, path, "ompi_mpi_uint16_t");
        typeU32 = dl.symbol(handle, path, "ompi_mpi_uint32_t");
        typeU64 = dl.symbol(handle, path, "ompi_mpi_uint64_t");
        typeFloat = dl.symbol(handle, path, "ompi_mpi_float");
        typeDouble = dl.symbol(handle, path, "ompi_mpi_double");
        typeI32 = dl.symbol(handle, path, "ompi_mpi_int32_t");
        typeI64 = dl.symbol(handle, path, "ompi_mpi_int64_t");

        initThread = dl.function(handle, path, "MPI_Init_thread", FunctionDescriptor.of(I, P, P, I, P));
        initialized = dl.function(handle, path, "MPI_Initialized", FunctionDescriptor.of(I, P));
        finalized = dl.function(handle, path, "MPI_Finalized", FunctionDescriptor.of(I, P));
        finalizeMpi = dl.function(handle, path, "MPI_Finalize", FunctionDescriptor.of(I));
        abort = dl.function(handle, path, "MPI_Abort", FunctionDescriptor.of(I, P, I));
        commRank = dl.function(handle, path, "MPI_Comm_rank", FunctionDescriptor.of(I, P, P));
        commSize = dl.function(handle, path, "MPI_Comm_size", FunctionDescriptor.of(I, P, P));
        commIdup = dl.function(handle, path, "MPI_Comm_idup", FunctionDescriptor.of(I, P, P, P));
        commSplit = dl.function(handle, path, "MPI_Comm_split", FunctionDescriptor.of(I, P, I, I, P));
        commFree = dl.function(handle, path, "MPI_Comm_free", FunctionDescriptor.of(I, P));
        commSetErrhandler = dl.function(handle, path, "MPI_Comm_set_errhandler", FunctionDescriptor.of(I, P, P));
        errorString = dl.function(handle, path, "MPI_Error_string", FunctionDescriptor.of(I, I, P, P));
        libraryVersion = dl.function(handle, path, "MPI_Get_library_version", FunctionDescriptor.of(I, P, P));
        isend = dl.function(handle, path, "MPI_Isend", FunctionDescriptor.of(I, P, I, P, I, I, P, P));
        irecv = dl.function(handle, path, "MPI_Irecv", FunctionDescriptor.of(I, P, I, P, I, I, P, P));
        test = dl.function(handle, path, "MPI_Test", FunctionDescriptor.of(I, P, P, P));
        cancel = dl.function(handle, path, "MPI_Cancel", FunctionDescriptor.of(I, P));
        requestFree = dl.function(handle, path, "MPI_Request_free", FunctionDescriptor.of(I, P));
        iallgather = dl.function(handle, path, "MPI_Iallgather", FunctionDescriptor.of(I, P, I, P, P, I, P, P, P));
        ibcast = dl.function(handle, path, "MPI_Ibcast", FunctionDescriptor.of(I, P, I, P, I, P, P));
    }

    /** The process's libmpi, opened on first use; a failed attempt is not cached (the path may be fixed). */
    static synchronized MpiLibrary get() {
        if (instance == null) {
            instance = open(System.getProperty("qkern.mpi.path"));
        }
        return instance;
    }

    /**
     * Opens libmpi: {@code overridePath} if not null, else libmpi.so.40 then libmpi.so through the
     * dynamic loader's search (LD_LIBRARY_PATH, ld.so.cache, default directories).
     */
    static MpiLibrary open(String overridePath) {
        Dl dl = Dl.get();
        List<String> candidates = overridePath != null && !overridePath.isBlank()
                ? List.of(overridePath)
                : List.of("libmpi.so.40", "libmpi.so");
        List<String> tried = new ArrayList<>();
        for (String candidate : candidates) {
            MemorySegment handle = dl.open(candidate);
            if (handle.equals(MemorySegment.NULL)) {
                tried.add(candidate + " (" + dl.lastError() + ")");
                continue;
            }
            if (dl.lookup(handle, "ompi_mpi_comm_world").equals(MemorySegment.NULL)) {
                throw new CommunicatorException(CommunicatorException.Kind.BACKEND, "MPI library " + candidate
                        + " is not Open MPI (it has no symbol ompi_mpi_comm_world): qkern's MPI communicator"
                        + " binds only Open MPI's ABI, where handles are pointers to ompi_* globals");
            }
            return new MpiLibrary(candidate, handle, dl);
        }
        String where = overridePath != null && !overridePath.isBlank()
                ? "-Dqkern.mpi.path=" + overridePath
                : "libmpi.so.40 and libmpi.so through the dynamic loader's search path (LD_LIBRARY_PATH, ld.so.cache)";
        throw new CommunicatorException(CommunicatorException.Kind.BACKEND, "Open MPI's libmpi was not found: looked at "
                + where + "; tried " + String.join(", ", tried) + ". Install Open MPI (Debian/Ubuntu: apt-get install"
                + " openmpi-bin libopenmpi3) or point -Dqkern.mpi.path at libmpi.so.40");
    }

    // ---- typed wrappers (invokeExact needs exact types); callers hold LOCK ------------------------

    int initThread(MemorySegment provided) {
        try {
            return (int) initThread.invokeExact(MemorySegment.NULL, MemorySegment.NULL, MPI_THREAD_SERIALIZED, provided);
        } catch (Throwable t) {
            throw MpiLibrary.<RuntimeException>rethrow(t);
        }
    }

    boolean flag(MethodHandle query) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment f = a.allocate(ValueLayout.JAVA_INT);
            int rc = (int) query.invokeExact(f);
            return rc == MPI_SUCCESS && f.get(ValueLayout.JAVA_INT, 0) != 0;
        } catch (Throwable t) {
            throw MpiLibrary.<RuntimeException>rethrow(t);
        }
    }

    int finalizeMpi() {
        try {
            return (int) finalizeMpi.invokeExact();
        } catch (Throwable t) {
            throw MpiLibrary.<RuntimeException>rethrow(t);
        }
    }

    int abort(MemorySegment comm, int code) {
        try {
            return (int) abort.invokeExact(comm, code);
        } catch (Throwable t) {
            throw MpiLibrary.<RuntimeException>rethrow(t);
        }
    }

    int commQuery(MethodHandle rankOrSize, MemorySegment comm, MemorySegment out) {
        try {
            return (int) rankOrSize.invokeExact(comm, out);
        } catch (Throwable t) {
            throw MpiLibrary.<RuntimeException>rethrow(t);
        }
    }

    int commIdup(MemorySegment comm, MemorySegment newComm, MemorySegment request) {
        try {
            return (int) commIdup.invokeExact(comm, newComm, request);
        } catch (Throwable t) {
            throw MpiLibrary.<RuntimeException>rethrow(t);
        }
    }

    int commSplit(MemorySegment comm, int color, int key, MemorySegment newComm) {
        try {
            return (int) commSplit.invokeExact(comm, color, key, newComm);
        } catch (Throwable t) {
            throw MpiLibrary.<RuntimeException>rethrow(t);
        }
    }

    int commFree(MemorySegment commSlot) {
        try {
            return (int) commFree.invokeExact(commSlot);
        } catch (Throwable t) {
            throw MpiLibrary.<RuntimeException>rethrow(t);
        }
    }

    int commSetErrhandler(MemorySegment comm, MemorySegment errhandler) {
        try {
            return (int) commSetErrhandler.invokeExact(comm, errhandler);
        } catch (Throwable t) {
            throw MpiLibrary.<RuntimeException>rethrow(t);
        }
    }

    int isend(MemorySegment buf, int count, MemorySegment type, int dest, int tag, MemorySegment comm,
            MemorySegment request) {
        try {
            return (int) isend.invokeExact(buf, count, type, dest, tag, comm, request);
        } catch (Throwable t) {
            throw MpiLibrary.<RuntimeException>rethrow(t);
        }
    }

    int irecv(MemorySegment buf, int count, MemorySegment type, int source, int tag, MemorySegment comm,
            MemorySegment request) {
        try {
            return (int) irecv.invokeExact(buf, count, type, source, tag, comm, request);
        } catch (Throwable t) {
            throw MpiLibrary.<RuntimeException>rethrow(t);
        }
    }

    int test(MemorySegment request, MemorySegment flag) {
        try {
            return (int) test.invokeExact(request, flag, MemorySegment.NULL);
        } catch (Throwable t) {
            throw MpiLibrary.<RuntimeException>rethrow(t);
        }
    }

    int cancel(MemorySegment request) {
        try {
            return (int) cancel.invokeExact(request);
        } catch (Throwable t) {
            throw MpiLibrary.<RuntimeException>rethrow(t);
        }
    }

    int iallgather(MemorySegment send, int sendCount, MemorySegment sendType, MemorySegment recv, int recvCount,
            MemorySegment recvType, MemorySegment comm, MemorySegment request) {
        try {
            return (int) iallgather.invokeExact(send, sendCount, sendType, recv, recvCount, recvType, comm, request);
        } catch (Throwable t) {
            throw MpiLibrary.<RuntimeException>rethrow(t);
        }
    }

    int ibcast(MemorySegment buf, int count, MemorySegment type, int root, MemorySegment comm,
            MemorySegment request) {
        try {
            return (int) ibcast.invokeExact(buf, count, type, root, comm, request);
        } catch (Throwable t) {
            throw MpiLibrary.<RuntimeException>rethrow(t);
        }
    }


    /** "Open MPI v4.1.4, ..." — MPI_Get_library_version's first line. */
    String version() {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment buf = a.allocate(MPI_MAX_LIBRARY_VERSION_STRING + 1);
            MemorySegment len = a.allocate(ValueLayout.JAVA_INT);
            int rc = (int) libraryVersion.invokeExact(buf, len);
            if (rc != MPI_SUCCESS) {
                return "unknown MPI version";
            }
            String s = buf.getString(0);
            int nl = s.indexOf('\n');
            return (nl >= 0 ? s.substring(0, nl) : s).strip();
        } catch (Throwable t) {
            throw MpiLibrary.<RuntimeException>rethrow(t);
        }
    }

    /** MPI's own text for an error code. */
    String errorText(int code) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment buf = a.allocate(MPI_MAX_ERROR_STRING + 1);
            MemorySegment len = a.allocate(ValueLayout.JAVA_INT);
            int rc = (int) errorString.invokeExact(code, buf, len);
            return rc == MPI_SUCCESS ? buf.getString(0) : "MPI error " + code;
        } catch (Throwable t) {
            throw MpiLibrary.<RuntimeException>rethrow(t);
        }
    }

    @SuppressWarnings("unchecked")
    static <T extends Throwable> T rethrow(Throwable t) throws T {
        throw (T) t;
    }

    /** libc's dlopen / dlsym / dlerror. */
    static final class Dl {
        private static Dl instance;
        private final MethodHandle dlopen;
        private final MethodHandle dlsym;
        private final MethodHandle dlerror;

        private Dl(SymbolLookup libc) {
            dlopen = LINKER.downcallHandle(find(libc, "dlopen"), FunctionDescriptor.of(P, P, I));
            dlsym = LINKER.downcallHandle(find(libc, "dlsym"), FunctionDescriptor.of(P, P, P));
            dlerror = LINKER.downcallHandle(find(libc, "dlerror"), FunctionDescriptor.of(P));
        }

        static synchronized Dl get() {
            if (instance == null) {
                SymbolLookup lookup = LINKER.defaultLookup();
                if (lookup.find("dlopen").isEmpty()) {
                    // glibc before 2.34 keeps dlopen in libdl
                    lookup = SymbolLookup.libraryLookup("libdl.so.2", Arena.global());
                }
                instance = new Dl(lookup);
            }
            return instance;
        }

        private static MemorySegment find(SymbolLookup lookup, String name) {
            return lookup.find(name).orElseThrow(() -> new CommunicatorException(CommunicatorException.Kind.BACKEND,
                    "the C library has no " + name + ": cannot load MPI at run time"));
        }

        MemorySegment open(String path) {
            try (Arena a = Arena.ofConfined()) {
                return (MemorySegment) dlopen.invokeExact(a.allocateFrom(path), RTLD_NOW | RTLD_GLOBAL);
            } catch (Throwable t) {
                throw MpiLibrary.<RuntimeException>rethrow(t);
            }
        }

        MemorySegment lookup(MemorySegment handle, String name) {
            try (Arena a = Arena.ofConfined()) {
                return (MemorySegment) dlsym.invokeExact(handle, a.allocateFrom(name));
            } catch (Throwable t) {
                throw MpiLibrary.<RuntimeException>rethrow(t);
            }
        }

        String lastError() {
            try {
                MemorySegment s = (MemorySegment) dlerror.invokeExact();
                return s.equals(MemorySegment.NULL) ? "no error text" : s.reinterpret(4096).getString(0);
            } catch (Throwable t) {
                throw MpiLibrary.<RuntimeException>rethrow(t);
            }
        }

        MemorySegment symbol(MemorySegment handle, String path, String name) {
            MemorySegment s = lookup(handle, name);
            if (s.equals(MemorySegment.NULL)) {
                throw new CommunicatorException(CommunicatorException.Kind.BACKEND, "MPI library " + path
                        + " has no symbol " + name + " (qkern needs Open MPI 3.0 or newer)");
            }
            return s;
        }

        MethodHandle function(MemorySegment handle, String path, String name, FunctionDescriptor fd) {
            return LINKER.downcallHandle(symbol(handle, path, name), fd);
        }
    }
}
