package io.qkern.internal;

import static java.lang.foreign.ValueLayout.ADDRESS;
import static java.lang.foreign.ValueLayout.JAVA_INT;

import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.SymbolLookup;
import java.lang.invoke.MethodHandle;

/**
 * Makes a CUDA device current on the calling thread through the driver API ({@code libcuda.so.1}),
 * for libraries that take "the current device" implicitly: {@code ncclCommInitRankConfig} has no
 * device argument. qkern's own ABI never leaves a device current (every call restores the caller's),
 * and libqkern links the CUDA runtime statically, so there is no {@code cudaSetDevice} to call.
 *
 * <p>Retaining the device's primary context and making it current is what {@code cudaSetDevice}
 * does; every CUDA runtime in the process (qkern's, NCCL's) then reports that device as current.
 * Never run on a GPU on the machine this was written on.
 */
public final class CudaDriverNative {
    private static final Object LOCK = new Object();
    private static CudaDriverNative instance;
    private static String failure;

    private final MethodHandle init, deviceGet, primaryCtxRetain, primaryCtxRelease, ctxSetCurrent, getErrorString;

    private CudaDriverNative(SymbolLookup lookup) {
        Linker linker = Linker.nativeLinker();
        init = bind(linker, lookup, "cuInit", FunctionDescriptor.of(JAVA_INT, JAVA_INT));
        deviceGet = bind(linker, lookup, "cuDeviceGet", FunctionDescriptor.of(JAVA_INT, ADDRESS, JAVA_INT));
        primaryCtxRetain = bind(linker, lookup, "cuDevicePrimaryCtxRetain",
                FunctionDescriptor.of(JAVA_INT, ADDRESS, JAVA_INT));
        // the _v2 entry points are the current ABI of these two (cuda.h maps the plain names to them)
        primaryCtxRelease = bind(linker, lookup, "cuDevicePrimaryCtxRelease_v2",
                FunctionDescriptor.of(JAVA_INT, JAVA_INT));
        ctxSetCurrent = bind(linker, lookup, "cuCtxSetCurrent", FunctionDescriptor.of(JAVA_INT, ADDRESS));
        getErrorString = bind(linker, lookup, "cuGetErrorString", FunctionDescriptor.of(JAVA_INT, JAVA_INT, ADDRESS));
    }

    private static MethodHandle bind(Linker linker, SymbolLookup lookup, String name, FunctionDescriptor d) {
        return linker.downcallHandle(lookup.find(name).orElseThrow(
                () -> new IllegalStateException("libcuda.so.1 lacks " + name + " (driver too old?)")), d);
    }

    /** The driver, or an IllegalStateException saying why there is none. */
    public static CudaDriverNative get() {
        synchronized (LOCK) {
            if (instance == null && failure == null) {
                try {
                    instance = new CudaDriverNative(SymbolLookup.libraryLookup("libcuda.so.1", Arena.global()));
                    instance.check("cuInit", (int) instance.init.invokeExact(0));
                } catch (IllegalArgumentException e) {
                    failure = "the CUDA driver (libcuda.so.1) cannot be loaded: " + e.getMessage();
                } catch (IllegalStateException e) {
                    failure = e.getMessage();
                    instance = null;
                } catch (Throwable t) {
                    throw NativeLib.bug("cuInit", t);
                }
            }
            if (instance == null) {
                throw new IllegalStateException(failure);
            }
            return instance;
        }
    }

    /** Retains device {@code ordinal}'s primary context and makes it current on this thread. */
    public void makeCurrent(int ordinal) {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment dev = arena.allocate(JAVA_INT);
            check("cuDeviceGet", (int) deviceGet.invokeExact(dev, ordinal));
            MemorySegment ctx = arena.allocate(ADDRESS);
            int device = dev.get(JAVA_INT, 0);
            check("cuDevicePrimaryCtxRetain", (int) primaryCtxRetain.invokeExact(ctx, device));
            int st = (int) ctxSetCurrent.invokeExact(ctx.get(ADDRESS, 0));
            if (st != 0) {
                int ignored = (int) primaryCtxRelease.invokeExact(device);
                check("cuCtxSetCurrent", st);
            }
        } catch (IllegalStateException e) {
            throw e;
        } catch (Throwable t) {
            throw NativeLib.bug("cuda driver", t);
        }
    }

    /** Balances {@link #makeCurrent}'s retain (the context lives on while the runtime holds it). */
    public void release(int ordinal) {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment dev = arena.allocate(JAVA_INT);
            if ((int) deviceGet.invokeExact(dev, ordinal) == 0) {
                int ignored = (int) primaryCtxRelease.invokeExact(dev.get(JAVA_INT, 0));
            }
        } catch (Throwable t) {
            throw NativeLib.bug("cuDevicePrimaryCtxRelease_v2", t);
        }
    }

    private void check(String function, int result) {
        if (result == 0) {
            return;
        }
        String text;
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment out = arena.allocate(ADDRESS);
            int st = (int) getErrorString.invokeExact(result, out);
            MemorySegment p = out.get(ADDRESS, 0);
            text = st == 0 && !p.equals(MemorySegment.NULL) ? p.reinterpret(Long.MAX_VALUE).getString(0) : "";
        } catch (Throwable t) {
            throw NativeLib.bug("cuGetErrorString", t);
        }
        throw new IllegalStateException(function + " failed: CUDA driver error " + result + " " + text);
    }
}
