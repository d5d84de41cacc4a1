package io.qkern.internal;

import static java.lang.foreign.ValueLayout.ADDRESS;
import static java.lang.foreign.ValueLayout.JAVA_FLOAT;
import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;

import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.MemorySegment;
import java.lang.invoke.MethodHandle;

/** The paged-attention functions of the C ABI, checked like every {@link NativeLib} call. */
public final class AttentionNative {
    private static volatile AttentionNative instance;

    /** The bindings, or a QkernException saying why the library is unavailable. */
    public static AttentionNative get() {
        AttentionNative n = instance;
        if (n == null) {
            synchronized (AttentionNative.class) {
                if (instance == null) {
                    instance = new AttentionNative(NativeLib.get());
                }
                n = instance;
            }
        }
        return n;
    }

    private final NativeLib lib;
    private final MethodHandle writeKv, copyBlocks, swapBlocks, pagedDecode, pagedDecodeCsr, merge;

    private AttentionNative(NativeLib lib) {
        this.lib = lib;
        writeKv = lib.bind("qk_attention_write_kv", FunctionDescriptor.of(JAVA_INT, ADDRESS, ADDRESS, ADDRESS, ADDRESS,
                ADDRESS, ADDRESS));
        copyBlocks = lib.bind("qk_attention_copy_blocks", FunctionDescriptor.of(JAVA_INT, ADDRESS, ADDRESS, ADDRESS));
        swapBlocks = lib.bind("qk_attention_swap_blocks", FunctionDescriptor.of(JAVA_INT, ADDRESS, ADDRESS, ADDRESS,
                ADDRESS));
        pagedDecode = lib.bind("qk_attention_paged_decode", FunctionDescriptor.of(JAVA_INT, ADDRESS, ADDRESS, ADDRESS,
                ADDRESS, ADDRESS, JAVA_FLOAT, JAVA_LONG, ADDRESS, ADDRESS, ADDRESS));
        pagedDecodeCsr = lib.bind("qk_attention_paged_decode_csr", FunctionDescriptor.of(JAVA_INT, ADDRESS, ADDRESS,
                ADDRESS, ADDRESS, ADDRESS, ADDRESS, JAVA_FLOAT, JAVA_LONG, ADDRESS, ADDRESS, ADDRESS));
        merge = lib.bind("qk_attention_merge", FunctionDescriptor.of(JAVA_INT, ADDRESS, ADDRESS, ADDRESS, ADDRESS,
                ADDRESS, ADDRESS, ADDRESS));
    }

    public void writeKv(MemorySegment key, MemorySegment value, MemorySegment kCache, MemorySegment vCache,
            MemorySegment slotMapping, MemorySegment stream) {
        int st;
        try {
            st = (int) writeKv.invokeExact(key, value, kCache, vCache, slotMapping, stream);
        } catch (Throwable t) {
            throw NativeLib.bug("qk_attention_write_kv", t);
        }
        lib.check("qk_attention_write_kv", st);
    }

    public void copyBlocks(MemorySegment cache, MemorySegment blockMapping, MemorySegment stream) {
        int st;
        try {
            st = (int) copyBlocks.invokeExact(cache, blockMapping, stream);
        } catch (Throwable t) {
            throw NativeLib.bug("qk_attention_copy_blocks", t);
        }
        lib.check("qk_attention_copy_blocks", st);
    }

    public void swapBlocks(MemorySegment src, MemorySegment dst, MemorySegment blockMapping, MemorySegment stream) {
        int st;
        try {
            st = (int) swapBlocks.invokeExact(src, dst, blockMapping, stream);
        } catch (Throwable t) {
            throw NativeLib.bug("qk_attention_swap_blocks", t);
        }
        lib.check("qk_attention_swap_blocks", st);
    }

    public void pagedDecode(MemorySegment q, MemorySegment kCache, MemorySegment vCache, MemorySegment blockTables,
            MemorySegment seqLens, float scale, long partitionBlocks, MemorySegment out, MemorySegment lse,
            MemorySegment stream) {
        int st;
        try {
            st = (int) pagedDecode.invokeExact(q, kCache, vCache, blockTables, seqLens, scale, partitionBlocks, out,
                    lse, stream);
        } catch (Throwable t) {
            throw NativeLib.bug("qk_attention_paged_decode", t);
        }
        lib.check("qk_attention_paged_decode", st);
    }

    public void pagedDecodeCsr(MemorySegment q, MemorySegment kCache, MemorySegment vCache, MemorySegment indptr,
            MemorySegment indices, MemorySegment lastPageLen, float scale, long partitionBlocks, MemorySegment out,
            MemorySegment lse, MemorySegment stream) {
        int st;
        try {
            st = (int) pagedDecodeCsr.invokeExact(q, kCache, vCache, indptr, indices, lastPageLen, scale,
                    partitionBlocks, out, lse, stream);
        } catch (Throwable t) {
            throw NativeLib.bug("qk_attention_paged_decode_csr", t);
        }
        lib.check("qk_attention_paged_decode_csr", st);
    }

    public void merge(MemorySegment outA, MemorySegment lseA, MemorySegment outB, MemorySegment lseB,
            MemorySegment out, MemorySegment lse, MemorySegment stream) {
        int st;
        try {
            st = (int) merge.invokeExact(outA, lseA, outB, lseB, out, lse, stream);
        } catch (Throwable t) {
            throw NativeLib.bug("qk_attention_merge", t);
        }
        lib.check("qk_attention_merge", st);
    }
}
