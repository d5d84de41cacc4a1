package io.qkern.internal;

import static java.lang.foreign.ValueLayout.ADDRESS;
import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;

import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.MemoryLayout;
import java.lang.foreign.MemorySegment;
import java.lang.invoke.MethodHandle;

/** The DLPack functions of the C ABI (include/qkern_dlpack.h), checked like every {@link NativeLib} call. */
public final class DLPackNative {
    /** DLPACK_FLAG_BITMASK_READ_ONLY. */
    public static final long FLAG_READ_ONLY = 1;
    /** QK_DLPACK_IMPORT_WRITABLE / QK_DLPACK_IMPORT_CONTIGUOUS. */
    public static final int IMPORT_WRITABLE = 1;
    public static final int IMPORT_CONTIGUOUS = 2;

    private static volatile DLPackNative instance;

    public static DLPackNative get() {
        DLPackNative n = instance;
        if (n == null) {
            synchronized (DLPackNative.class) {
                if (instance == null) {
                    instance = new DLPackNative(NativeLib.get());
                }
                n = instance;
            }
        }
        return n;
    }

    /** What qk_dlpack_import describes: a qk_tensor plus the producer's read-only mark. */
    public record Imported(long data, long nbytes, int dtype, int deviceKind, int deviceIndex, long[] shape,
            long[] strides, boolean readOnly) {}

    private static final long SHAPE_OFFSET = TensorStruct.LAYOUT.byteOffset(MemoryLayout.PathElement.groupElement("shape"));
    private static final long STRIDES_OFFSET =
            TensorStruct.LAYOUT.byteOffset(MemoryLayout.PathElement.groupElement("strides"));

    private final NativeLib lib;
    private final MethodHandle ownerCreate, ownerLiveExports, ownerRelease, export, importTensor, release;

    private DLPackNative(NativeLib lib) {
        this.lib = lib;
        ownerCreate = lib.bind("qk_dlpack_owner_create", FunctionDescriptor.of(JAVA_INT, ADDRESS, ADDRESS, ADDRESS));
        ownerLiveExports = lib.bind("qk_dlpack_owner_live_exports", FunctionDescriptor.of(JAVA_LONG, ADDRESS));
        ownerRelease = lib.bind("qk_dlpack_owner_release", FunctionDescriptor.ofVoid(ADDRESS));
        export = lib.bind("qk_dlpack_export", FunctionDescriptor.of(JAVA_INT, ADDRESS, JAVA_LONG, ADDRESS, ADDRESS));
        importTensor = lib.bind("qk_dlpack_import", FunctionDescriptor.of(JAVA_INT, ADDRESS, JAVA_INT, ADDRESS, ADDRESS));
        release = lib.bind("qk_dlpack_release", FunctionDescriptor.ofVoid(ADDRESS));
    }

    /** A new owner without a release function (Java frees its own memory once no export is live). */
    public MemorySegment ownerCreate() {
        int st;
        MemorySegment owner;
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment out = arena.allocate(ADDRESS);
            st = (int) ownerCreate.invokeExact(MemorySegment.NULL, MemorySegment.NULL, out);
            owner = out.get(ADDRESS, 0);
        } catch (Throwable t) {
            throw NativeLib.bug("qk_dlpack_owner_create", t);
        }
        lib.check("qk_dlpack_owner_create", st);
        return owner;
    }

    public long ownerLiveExports(MemorySegment owner) {
        try {
            return (long) ownerLiveExports.invokeExact(owner);
        } catch (Throwable t) {
            throw NativeLib.bug("qk_dlpack_owner_live_exports", t);
        }
    }

    public void ownerRelease(MemorySegment owner) {
        try {
            ownerRelease.invokeExact(owner);
        } catch (Throwable t) {
            throw NativeLib.bug("qk_dlpack_owner_release", t);
        }
    }

    /** Returns the DLManagedTensorVersioned* of a new export of {@code tensor} (a qk_tensor descriptor). */
    public MemorySegment export(MemorySegment tensor, long flags, MemorySegment owner) {
        int st;
        MemorySegment managed;
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment out = arena.allocate(ADDRESS);
            st = (int) export.invokeExact(tensor, flags, owner, out);
            managed = out.get(ADDRESS, 0);
        } catch (Throwable t) {
            throw NativeLib.bug("qk_dlpack_export", t);
        }
        lib.check("qk_dlpack_export", st);
        return managed;
    }

    /** Checks and describes a producer's tensor; on failure its deleter has run and this throws. */
    public Imported importTensor(MemorySegment managed, int flags) {
        int st;
        Imported result = null;
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment out = arena.allocate(TensorStruct.LAYOUT);
            MemorySegment readOnly = arena.allocate(JAVA_INT);
            st = (int) importTensor.invokeExact(managed, flags, out, readOnly);
            if (st == 0) {
                int ndim = out.get(JAVA_INT, 28);
                long[] shape = new long[ndim];
                long[] strides = new long[ndim];
                for (int i = 0; i < ndim; i++) {
                    shape[i] = out.get(JAVA_LONG, SHAPE_OFFSET + 8L * i);
                    strides[i] = out.get(JAVA_LONG, STRIDES_OFFSET + 8L * i);
                }
                result = new Imported(out.get(ADDRESS, 0).address(), out.get(JAVA_LONG, 8), out.get(JAVA_INT, 16),
                        out.get(JAVA_INT, 20), out.get(JAVA_INT, 24), shape, strides, readOnly.get(JAVA_INT, 0) != 0);
            }
        } catch (Throwable t) {
            throw NativeLib.bug("qk_dlpack_import", t);
        }
        lib.check("qk_dlpack_import", st);
        return result;
    }

    /** Calls the managed tensor's deleter (qk_dlpack_release). */
    public void release(MemorySegment managed) {
        try {
            release.invokeExact(managed);
        } catch (Throwable t) {
            throw NativeLib.bug("qk_dlpack_release", t);
        }
    }
}
