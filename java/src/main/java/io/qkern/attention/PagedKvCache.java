package io.qkern.attention;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Tensor;
import io.qkern.internal.AttentionNative;
import io.qkern.internal.NativeLib;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayList;
import java.util.List;

/**
 * The KV pool of a model on one device: per layer, K and V tensors of shape
 * {@code [numBlocks, blockSize, numKvHeads, headDim]} (F32, F16 or BF16). A token's keys and values
 * live in slot {@code block * blockSize + offset}; which blocks belong to which sequence is the
 * business of a {@link BlockManager}, whose block ids index this pool.
 */
public final class PagedKvCache implements AutoCloseable {
    /** Block size used when none is given (vLLM's default). */
    public static final int DEFAULT_BLOCK_SIZE = 16;
    public static final int MIN_BLOCK_SIZE = 8;
    public static final int MAX_BLOCK_SIZE = 256;

    /** Geometry of a pool. */
    public record Spec(int numLayers, int numBlocks, int blockSize, int numKvHeads, int headDim, DType dtype) {
        public Spec {
            if (numLayers < 1) {
                throw new IllegalArgumentException("numLayers must be >= 1, got " + numLayers);
            }
            if (numBlocks < 0) {
                throw new IllegalArgumentException("numBlocks must be >= 0, got " + numBlocks);
            }
            checkBlockSize(blockSize);
            if (numKvHeads < 1 || headDim < 1) {
                throw new IllegalArgumentException("numKvHeads and headDim must be >= 1, got " + numKvHeads + " and "
                        + headDim);
            }
            if (dtype != DType.F32 && dtype != DType.F16 && dtype != DType.BF16) {
                throw new IllegalArgumentException("KV cache dtype must be F32, F16 or BF16, got " + dtype);
            }
        }

        /** Bytes of one block of K (or V) in one layer. */
        public long blockBytes() {
            return (long) blockSize * numKvHeads * headDim * dtype.byteSize();
        }
    }

    static int checkBlockSize(int blockSize) {
        if (blockSize < MIN_BLOCK_SIZE || blockSize > MAX_BLOCK_SIZE) {
            throw new IllegalArgumentException("block size must be in " + MIN_BLOCK_SIZE + ".." + MAX_BLOCK_SIZE
                    + ", got " + blockSize);
        }
        return blockSize;
    }

    private final Spec spec;
    private final Device device;
    private final List<Tensor> keys;
    private final List<Tensor> values;

    private PagedKvCache(Spec spec, Device device, List<Tensor> keys, List<Tensor> values) {
        this.spec = spec;
        this.device = device;
        this.keys = keys;
        this.values = values;
    }

    /** Allocates the pool (contents undefined until written). */
    public static PagedKvCache allocate(Device device, Spec spec) {
        List<Tensor> k = new ArrayList<>();
        List<Tensor> v = new ArrayList<>();
        try {
            for (int layer = 0; layer < spec.numLayers(); layer++) {
                k.add(allocatePool(device, spec));
                v.add(allocatePool(device, spec));
            }
        } catch (RuntimeException e) {
            k.forEach(Tensor::close);
            v.forEach(Tensor::close);
            throw e;
        }
        return new PagedKvCache(spec, device, List.copyOf(k), List.copyOf(v));
    }

    /**
     * One layer's K or V pool. Host pools come from {@code qk_malloc}, which hands out 2 MiB pages
     * for large buffers: decode reads blocks anywhere in the pool, and with 4 KiB pages every block
     * of a shuffled table costs TLB misses that reading the same bytes in order does not.
     */
    private static Tensor allocatePool(Device device, Spec spec) {
        long[] shape = {spec.numBlocks(), spec.blockSize(), spec.numKvHeads(), spec.headDim()};
        if (!device.isCpu()) {
            return Tensor.allocate(spec.dtype(), device, shape);
        }
        long bytes = spec.dtype().byteSize();
        for (long d : shape) {
            bytes = Math.multiplyExact(bytes, d);
        }
        NativeLib lib = NativeLib.get();
        long address = lib.malloc(device.kind().code(), device.index(), bytes);
        try {
            return Tensor.wrapAddress(address, spec.dtype(), device, false,
                    () -> lib.free(device.kind().code(), device.index(), address), shape);
        } catch (RuntimeException e) {
            lib.free(device.kind().code(), device.index(), address);
            throw e;
        }
    }

    public Spec spec() {
        return spec;
    }

    public Device device() {
        return device;
    }

    /** K of {@code layer}: {@code [numBlocks, blockSize, numKvHeads, headDim]}. */
    public Tensor key(int layer) {
        return keys.get(checkLayer(layer));
    }

    /** V of {@code layer}. */
    public Tensor value(int layer) {
        return values.get(checkLayer(layer));
    }

    private int checkLayer(int layer) {
        if (layer < 0 || layer >= spec.numLayers()) {
            throw new IllegalArgumentException("layer " + layer + " is out of range (0.." + (spec.numLayers() - 1) + ")");
        }
        return layer;
    }

    /** Fills every byte of every layer with {@code value} (0xFF reads as NaN: a poison fill). */
    public void fillBytes(int value) {
        keys.forEach(t -> t.fillBytes(value));
        values.forEach(t -> t.fillBytes(value));
    }

    /**
     * Writes new keys and values {@code [T, numKvHeads, headDim]} (F32/F16/BF16; converted to the
     * cache dtype) of {@code layer} into the slots {@code slotMapping} names (a negative slot skips
     * its token). A slot beyond the pool, or one named twice, fails before anything is written.
     */
    public void write(int layer, Tensor key, Tensor value, long[] slotMapping) {
        try (Tensor slots = hostLongs(slotMapping)) {
            Tensor k = key(layer);
            Tensor v = value(layer);
            Tensor slotsOnDevice = device.isCpu() ? slots : slots.copyTo(device);
            try (Arena arena = Arena.ofConfined(); Tensor.Lease a = key.acquire(); Tensor.Lease b = value.acquire();
                    Tensor.Lease c = k.acquire(); Tensor.Lease d = v.acquire(); Tensor.Lease e = slotsOnDevice.acquire()) {
                AttentionNative.get().writeKv(key.descriptor(arena), value.descriptor(arena), k.descriptor(arena),
                        v.descriptor(arena), slotsOnDevice.descriptor(arena), MemorySegment.NULL);
            } finally {
                if (slotsOnDevice != slots) {
                    slotsOnDevice.close();
                }
            }
        }
    }

    /**
     * Copies blocks {@code src[i] -> dst[i]} in every layer (copy-on-write). Destinations must be
     * distinct and none may also be a source.
     */
    public void copyBlocks(List<BlockManager.BlockCopy> copies) {
        if (copies.isEmpty()) {
            return;
        }
        try (Tensor mapping = mappingOf(copies)) {
            for (int layer = 0; layer < spec.numLayers(); layer++) {
                for (Tensor t : List.of(keys.get(layer), values.get(layer))) {
                    try (Arena arena = Arena.ofConfined(); Tensor.Lease a = t.acquire(); Tensor.Lease b = mapping.acquire()) {
                        AttentionNative.get().copyBlocks(t.descriptor(arena), mapping.descriptor(arena),
                                MemorySegment.NULL);
                    }
                }
            }
        }
    }

    /**
     * Copies blocks {@code copies[i].src()} of {@code src} to {@code copies[i].dst()} of {@code dst}
     * in every layer: swap out (device pool to host pool) or swap in. The pools must have the same
     * layers, dtype and block shape; they may be on different devices.
     */
    public static void swapBlocks(PagedKvCache src, PagedKvCache dst, List<BlockManager.BlockCopy> copies) {
        Spec a = src.spec;
        Spec b = dst.spec;
        if (a.numLayers() != b.numLayers() || a.blockSize() != b.blockSize() || a.numKvHeads() != b.numKvHeads()
                || a.headDim() != b.headDim() || a.dtype() != b.dtype()) {
            throw new IllegalArgumentException("cannot swap between pools " + a + " and " + b);
        }
        if (copies.isEmpty()) {
            return;
        }
        try (Tensor mapping = mappingOf(copies)) {
            for (int layer = 0; layer < a.numLayers(); layer++) {
                swapTensor(src.keys.get(layer), dst.keys.get(layer), mapping);
                swapTensor(src.values.get(layer), dst.values.get(layer), mapping);
            }
        }
    }

    private static void swapTensor(Tensor s, Tensor d, Tensor mapping) {
        try (Arena arena = Arena.ofConfined(); Tensor.Lease a = s.acquire(); Tensor.Lease b = d.acquire();
                Tensor.Lease c = mapping.acquire()) {
            AttentionNative.get().swapBlocks(s.descriptor(arena), d.descriptor(arena), mapping.descriptor(arena),
                    MemorySegment.NULL);
        }
    }

    private static Tensor mappingOf(List<BlockManager.BlockCopy> copies) {
        long[] pairs = new long[copies.size() * 2];
        for (int i = 0; i < copies.size(); i++) {
            pairs[2 * i] = copies.get(i).src();
            pairs[2 * i + 1] = copies.get(i).dst();
        }
        Tensor t = Tensor.allocate(DType.I64, Device.CPU, copies.size(), 2);
        MemorySegment.copy(pairs, 0, t.segment(), ValueLayout.JAVA_LONG, 0, pairs.length);
        return t;
    }

    static Tensor hostLongs(long[] values) {
        Tensor t = Tensor.allocate(DType.I64, Device.CPU, values.length);
        MemorySegment.copy(values, 0, t.segment(), ValueLayout.JAVA_LONG, 0, values.length);
        return t;
    }

    static Tensor hostInts(int[] values, long... shape) {
        Tensor t = Tensor.allocate(DType.I32, Device.CPU, shape);
        MemorySegment.copy(values, 0, t.segment(), ValueLayout.JAVA_INT, 0, values.length);
        return t;
    }

    @Override
    public void close() {
        keys.forEach(Tensor::close);
        values.forEach(Tensor::close);
    }

    @Override
    public String toString() {
        return "PagedKvCache(" + spec + " on " + device + ")";
    }
}
