package io.qkern.attention;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.QkernException;
import io.qkern.Tensor;
import io.qkern.internal.AttentionNative;
import io.qkern.internal.TensorStruct;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.function.Executable;

/**
 * Every paged-attention ABI entry point fed bad descriptors from Java: NULL, a buffer smaller than
 * the shape, an overflowing shape, negative sizes, wrong dtypes and a CUDA descriptor on a machine
 * without CUDA. Each must fail with a QkernException naming the argument; the JVM keeps running.
 */
class AttentionAbiBadArgumentsTest {
    private static final int CPU = Device.Kind.CPU.code();
    private static final int CUDA = Device.Kind.CUDA.code();
    private final AttentionNative lib = AttentionNative.get();
    private Arena arena;
    private MemorySegment kBuf;
    private MemorySegment vBuf;
    private MemorySegment qBuf;
    private MemorySegment outBuf;
    private MemorySegment lseBuf;
    private MemorySegment tableBuf;
    private MemorySegment lensBuf;
    private MemorySegment slotsBuf;

    @BeforeEach
    void buffers() {
        arena = Arena.ofConfined();
        kBuf = arena.allocate(2 * 8 * 1 * 4 * 4, 64);  // [2, 8, 1, 4] F32
        vBuf = arena.allocate(2 * 8 * 1 * 4 * 4, 64);
        qBuf = arena.allocate(1 * 2 * 4 * 4, 64);      // [1, 2, 4]
        outBuf = arena.allocate(1 * 2 * 4 * 4, 64);
        lseBuf = arena.allocate(2 * 4, 64);
        tableBuf = arena.allocate(2 * 4, 64);          // [1, 2] I32 = {0, 1}
        tableBuf.setAtIndex(java.lang.foreign.ValueLayout.JAVA_INT, 1, 1);
        lensBuf = arena.allocate(4, 64);               // [1] I32 = {9}
        lensBuf.set(java.lang.foreign.ValueLayout.JAVA_INT, 0, 9);
        slotsBuf = arena.allocate(8, 64);              // [1] I64 = {3}
        slotsBuf.set(java.lang.foreign.ValueLayout.JAVA_LONG, 0, 3);
    }

    @AfterEach
    void close() {
        arena.close();
    }

    MemorySegment t(MemorySegment buf, long nbytes, DType dtype, int device, long... shape) {
        return TensorStruct.write(arena, buf.address(), nbytes, dtype.code(), device, 0, shape,
                TensorStruct.contiguousStrides(shape));
    }

    MemorySegment k() {
        return t(kBuf, kBuf.byteSize(), DType.F32, CPU, 2, 8, 1, 4);
    }

    MemorySegment v() {
        return t(vBuf, vBuf.byteSize(), DType.F32, CPU, 2, 8, 1, 4);
    }

    MemorySegment q() {
        return t(qBuf, qBuf.byteSize(), DType.F32, CPU, 1, 2, 4);
    }

    MemorySegment out() {
        return t(outBuf, outBuf.byteSize(), DType.F32, CPU, 1, 2, 4);
    }

    MemorySegment lse() {
        return t(lseBuf, lseBuf.byteSize(), DType.F32, CPU, 1, 2);
    }

    MemorySegment table() {
        return t(tableBuf, tableBuf.byteSize(), DType.I32, CPU, 1, 2);
    }

    MemorySegment lens() {
        return t(lensBuf, lensBuf.byteSize(), DType.I32, CPU, 1);
    }

    static void fails(String expect, Executable call) {
        QkernException e = assertThrows(QkernException.class, call);
        assertTrue(e.getMessage().contains(expect), () -> "\"" + expect + "\" not in: " + e.getMessage());
    }

    void decode(MemorySegment q, MemorySegment k, MemorySegment v, MemorySegment table, MemorySegment lens,
            MemorySegment out, MemorySegment lse) {
        lib.pagedDecode(q, k, v, table, lens, 0.5f, 0, out, lse, MemorySegment.NULL);
    }

    @Test
    void decodeRefusesBadDescriptors() {
        decode(q(), k(), v(), table(), lens(), out(), lse());  // the valid call works
        decode(q(), k(), v(), table(), lens(), out(), MemorySegment.NULL);  // lse is optional
        fails("q is NULL", () -> decode(MemorySegment.NULL, k(), v(), table(), lens(), out(), lse()));
        fails("k_cache is NULL", () -> decode(q(), MemorySegment.NULL, v(), table(), lens(), out(), lse()));
        fails("block_tables is NULL", () -> decode(q(), k(), v(), MemorySegment.NULL, lens(), out(), lse()));
        fails("k_cache needs", () -> decode(q(), t(kBuf, 100, DType.F32, CPU, 2, 8, 1, 4), v(), table(), lens(),
                out(), lse()));
        fails("overflows", () -> decode(q(), t(kBuf, kBuf.byteSize(), DType.F32, CPU, 1L << 40, 1L << 40, 1, 4), v(),
                table(), lens(), out(), lse()));
        fails("negative size", () -> decode(q(), k(), v(), table(), t(lensBuf, 4, DType.I32, CPU, -1), out(), lse()));
        fails("block_size 4", () -> decode(q(), t(kBuf, kBuf.byteSize(), DType.F32, CPU, 4, 4, 1, 4),
                t(vBuf, vBuf.byteSize(), DType.F32, CPU, 4, 4, 1, 4), table(), lens(), out(), lse()));
        fails("seq_lens has dtype I64", () -> decode(q(), k(), v(), table(), t(slotsBuf, 8, DType.I64, CPU, 1), out(),
                lse()));
        fails("v_cache is BF16", () -> decode(q(), k(), t(vBuf, vBuf.byteSize(), DType.BF16, CPU, 2, 8, 1, 4), table(),
                lens(), out(), lse()));
        fails("out and q overlap", () -> decode(q(), k(), v(), table(), lens(),
                t(qBuf, qBuf.byteSize(), DType.F32, CPU, 1, 2, 4), lse()));
        fails("CUDA", () -> decode(t(qBuf, qBuf.byteSize(), DType.F32, CUDA, 1, 2, 4), k(), v(), table(), lens(),
                out(), lse()));
        lensBuf.set(java.lang.foreign.ValueLayout.JAVA_INT, 0, 17);
        fails("seq_lens[0] = 17", () -> decode(q(), k(), v(), table(), lens(), out(), lse()));
    }

    @Test
    void csrWriteCopySwapAndMergeRefuseBadDescriptors() {
        MemorySegment indptr = t(tableBuf, 8, DType.I32, CPU, 2);  // {0, 1}
        MemorySegment indices = t(tableBuf, 8, DType.I32, CPU, 2);
        fails("kv_last_page_len is NULL", () -> lib.pagedDecodeCsr(q(), k(), v(), indptr, indices, MemorySegment.NULL,
                0.5f, 0, out(), lse(), MemorySegment.NULL));
        fails("partition_blocks -1", () -> lib.pagedDecodeCsr(q(), k(), v(), indptr, indices, lens(), 0.5f, -1, out(),
                lse(), MemorySegment.NULL));
        MemorySegment kv = t(qBuf, qBuf.byteSize(), DType.F32, CPU, 1, 1, 4);
        MemorySegment slots = t(slotsBuf, 8, DType.I64, CPU, 1);
        lib.writeKv(kv, kv, k(), v(), slots, MemorySegment.NULL);
        fails("value is NULL", () -> lib.writeKv(kv, MemorySegment.NULL, k(), v(), slots, MemorySegment.NULL));
        fails("slot_mapping has dtype I32", () -> lib.writeKv(kv, kv, k(), v(), t(lensBuf, 4, DType.I32, CPU, 1),
                MemorySegment.NULL));
        fails("key must be [1, 1, 4]", () -> lib.writeKv(t(qBuf, qBuf.byteSize(), DType.F32, CPU, 1, 2, 4), kv, k(), v(),
                slots, MemorySegment.NULL));
        MemorySegment map = t(slotsBuf, 8, DType.I64, CPU, 1, 2);
        MemorySegment mapBuf = arena.allocate(16, 64);
        fails("block_mapping must be [N, 2]", () -> lib.copyBlocks(k(), t(mapBuf, 16, DType.I64, CPU, 2, 1),
                MemorySegment.NULL));
        fails("block_mapping needs", () -> lib.copyBlocks(k(), map, MemorySegment.NULL));
        fails("cache is NULL", () -> lib.copyBlocks(MemorySegment.NULL, map, MemorySegment.NULL));
        fails("dst_cache is NULL", () -> lib.swapBlocks(k(), MemorySegment.NULL, map, MemorySegment.NULL));
        fails("overlap", () -> lib.swapBlocks(k(), k(), t(slotsBuf, 8, DType.I64, CPU, 0, 2), MemorySegment.NULL));
        fails("lse_b is NULL", () -> lib.merge(out(), lse(), out(), MemorySegment.NULL, out(), lse(), MemorySegment.NULL));
        fails("lse has dtype I32", () -> lib.merge(out(), lse(), out(), lse(), out(), t(lensBuf, 4, DType.I32, CPU, 1),
                MemorySegment.NULL));
    }

    @Test
    void closedTensorsAreRefusedBeforeNativeCode() {
        PagedKvCache cache = AttentionFixtures.poisonedCache(2, 8, 1, 4, DType.F32);
        cache.close();
        try (Tensor q = Tensor.ofFloats(new float[8], 1, 2, 4)) {
            assertThrows(IllegalStateException.class,
                    () -> PagedAttention.decode(q, cache, 0, new int[][] {{0}}, new int[] {1}, 1f, 0));
        }
    }

    /** On a machine with CUDA the kernels must agree with the CPU; without one this is reported as skipped. */
    @Test
    void cudaDecodeMatchesTheCpu() {
        Assumptions.assumeTrue(io.qkern.Qkern.cudaAvailable(), "needs a CUDA device");
        java.util.SplittableRandom rng = new java.util.SplittableRandom(9);
        int bs = 16;
        int[] lens = {1, 15, 17, 513, 0};
        int[][] tables = new int[lens.length][];
        int next = 0;
        for (int b = 0; b < lens.length; b++) {
            tables[b] = new int[(lens[b] + bs - 1) / bs];
            for (int j = 0; j < tables[b].length; j++) {
                tables[b][j] = next++;
            }
        }
        for (DType dt : new DType[] {DType.F32, DType.F16, DType.BF16}) {
            PagedKvCache.Spec spec = new PagedKvCache.Spec(1, next, bs, 8, 128, dt);
            try (PagedKvCache cpu = PagedKvCache.allocate(Device.CPU, spec);
                    PagedKvCache gpu = PagedKvCache.allocate(Device.cuda(0), spec)) {
                for (int b = 0; b < lens.length; b++) {
                    AttentionFixtures.writeTokens(cpu, tables[b], lens[b], rng);
                }
                gpu.key(0).copyFrom(cpu.key(0));
                gpu.value(0).copyFrom(cpu.value(0));
                float[] q = AttentionFixtures.gaussian(rng, lens.length * 64 * 128);
                try (Tensor qc = Tensor.ofFloats(q, lens.length, 64, 128); Tensor qg = qc.copyTo(Device.cuda(0));
                        PagedAttention.Result rc = PagedAttention.decode(qc, cpu, 0, tables, lens, 0.09f, 0);
                        PagedAttention.Result rg = PagedAttention.decode(qg, gpu, 0, tables, lens, 0.09f, 0)) {
                    float[] a = rc.out().toFloatArray();
                    float[] g = rg.out().toFloatArray();
                    for (int i = 0; i < a.length; i++) {
                        assertEquals(a[i], g[i], 1e-5 * (1 + Math.abs(a[i])), "out[" + i + "] " + dt);
                    }
                }
            }
        }
    }
}
