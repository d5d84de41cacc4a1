package io.qkern.internal;

import static java.lang.foreign.ValueLayout.ADDRESS;
import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;

import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.MemorySegment;
import java.lang.invoke.MethodHandle;

/** The APMM functions of the C ABI, checked like every {@link NativeLib} call. */
public final class ApmmNative {
    private static volatile ApmmNative instance;

    /** The bindings, or a QkernException saying why the library is unavailable. */
    public static ApmmNative get() {
        ApmmNative n = instance;
        if (n == null) {
            synchronized (ApmmNative.class) {
                if (instance == null) {
                    instance = new ApmmNative(NativeLib.get());
                }
                n = instance;
            }
        }
        return n;
    }

    private final NativeLib lib;
    private final MethodHandle pathName, choosePath, pack, unpack, quantize, matmul;

    private ApmmNative(NativeLib lib) {
        this.lib = lib;
        pathName = lib.bind("qk_apmm_path_name", FunctionDescriptor.of(ADDRESS, JAVA_INT));
        choosePath = lib.bind("qk_apmm_choose_path", FunctionDescriptor.of(JAVA_INT, JAVA_INT, JAVA_INT, JAVA_LONG,
                JAVA_INT, JAVA_INT, ADDRESS));
        pack = lib.bind("qk_apmm_pack", FunctionDescriptor.of(JAVA_INT, ADDRESS, JAVA_INT, JAVA_INT, JAVA_LONG,
                ADDRESS, ADDRESS, ADDRESS, ADDRESS));
        unpack = lib.bind("qk_apmm_unpack", FunctionDescriptor.of(JAVA_INT, ADDRESS, JAVA_INT, JAVA_INT, ADDRESS,
                ADDRESS));
        quantize = lib.bind("qk_apmm_quantize", FunctionDescriptor.of(JAVA_INT, ADDRESS, JAVA_INT, JAVA_INT,
                JAVA_LONG, JAVA_LONG, ADDRESS, ADDRESS, ADDRESS, ADDRESS, ADDRESS, ADDRESS));
        matmul = lib.bind("qk_apmm_matmul", FunctionDescriptor.of(JAVA_INT, ADDRESS, ADDRESS, ADDRESS, ADDRESS,
                JAVA_INT, JAVA_INT, ADDRESS, ADDRESS, ADDRESS, ADDRESS, JAVA_INT, JAVA_INT, JAVA_LONG, JAVA_LONG,
                ADDRESS, JAVA_INT, ADDRESS, ADDRESS));
    }

    /** The name of an {@code enum qk_apmm_path} value ("avx2-bitserial", ...). */
    public String pathName(int path) {
        try {
            MemorySegment p = (MemorySegment) pathName.invokeExact(path);
            return p.reinterpret(Long.MAX_VALUE).getString(0);
        } catch (Throwable t) {
            throw NativeLib.bug("qk_apmm_path_name", t);
        }
    }

    public int choosePath(int aBits, int wBits, long m, int deviceKind, int request) {
        int st, path;
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment out = arena.allocate(JAVA_INT);
            st = (int) choosePath.invokeExact(aBits, wBits, m, deviceKind, request, out);
            path = out.get(JAVA_INT, 0);
        } catch (Throwable t) {
            throw NativeLib.bug("qk_apmm_choose_path", t);
        }
        lib.check("qk_apmm_choose_path", st);
        return path;
    }

    /** {@code badIndexOut[0]} receives the flat index of an invalid code (else -1) before any exception. */
    public void pack(MemorySegment codes, int format, int bits, long group, MemorySegment planes, MemorySegment sums,
            long[] badIndexOut, MemorySegment stream) {
        int st;
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment bad = arena.allocate(JAVA_LONG);
            st = (int) pack.invokeExact(codes, format, bits, group, planes, sums, bad, stream);
            badIndexOut[0] = bad.get(JAVA_LONG, 0);
        } catch (Throwable t) {
            throw NativeLib.bug("qk_apmm_pack", t);
        }
        lib.check("qk_apmm_pack", st);
    }

    public void unpack(MemorySegment planes, int format, int bits, MemorySegment codes, MemorySegment stream) {
        int st;
        try {
            st = (int) unpack.invokeExact(planes, format, bits, codes, stream);
        } catch (Throwable t) {
            throw NativeLib.bug("qk_apmm_unpack", t);
        }
        lib.check("qk_apmm_unpack", st);
    }

    /** {@code badIndexOut[0]} receives the flat index of a NaN/Inf element (else -1) before any exception. */
    public void quantize(MemorySegment x, int format, int bits, long scaleGroup, long sumGroup, MemorySegment planes,
            MemorySegment sums, MemorySegment scales, MemorySegment zeroPoints, long[] badIndexOut,
            MemorySegment stream) {
        int st;
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment bad = arena.allocate(JAVA_LONG);
            st = (int) quantize.invokeExact(x, format, bits, scaleGroup, sumGroup, planes, sums, scales, zeroPoints,
                    bad, stream);
            badIndexOut[0] = bad.get(JAVA_LONG, 0);
        } catch (Throwable t) {
            throw NativeLib.bug("qk_apmm_quantize", t);
        }
        lib.check("qk_apmm_quantize", st);
    }

    /** Returns the {@code enum qk_apmm_path} that ran. */
    public int matmul(MemorySegment aPlanes, MemorySegment aSums, MemorySegment aScales, MemorySegment aZeros,
            int aFormat, int aBits, MemorySegment wPlanes, MemorySegment wSums, MemorySegment wScales,
            MemorySegment wZeros, int wFormat, int wBits, long k, long group, MemorySegment out, int request,
            MemorySegment stream) {
        int st, path;
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment used = arena.allocate(JAVA_INT);
            st = (int) matmul.invokeExact(aPlanes, aSums, aScales, aZeros, aFormat, aBits, wPlanes, wSums, wScales,
                    wZeros, wFormat, wBits, k, group, out, request, used, stream);
            path = used.get(JAVA_INT, 0);
        } catch (Throwable t) {
            throw NativeLib.bug("qk_apmm_matmul", t);
        }
        lib.check("qk_apmm_matmul", st);
        return path;
    }
}
