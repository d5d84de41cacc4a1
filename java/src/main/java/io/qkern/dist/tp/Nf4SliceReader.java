package io.qkern.dist.tp;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Tensor;
import io.qkern.internal.Floats;
import io.qkern.io.SafetensorsFile;
import io.qkern.io.SafetensorsFormatException;
import io.qkern.io.TensorInfo;
import io.qkern.nf4.Nf4Format;
import io.qkern.nf4.Nf4QuantState;
import io.qkern.nf4.Nf4Tensor;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;

/**
 * Reads one rank's slice of an NF4 weight W [N, K] stored in bitsandbytes' layout (see
 * {@link Nf4Tensor}) without touching the rest of it: only the slice's bytes are copied out of the
 * file's memory mapping.
 *
 * <p>bitsandbytes quantizes the flattened tensor in blocks of {@code blocksize} elements, two
 * codes per byte, one absmax per block. So:
 * <ul>
 *   <li>a row slice [r0, r1) is the flat range [r0*K, r1*K): one contiguous run of bytes and
 *       absmax entries, provided r0*K and r1*K fall on block boundaries (r1 = N may end in the
 *       tensor's last, short block);</li>
 *   <li>a column slice [c0, c1) is N runs, one per row; each is whole blocks only when K, c0 and
 *       c1 are multiples of the blocksize (then no block straddles two rows or the slice's edge).
 *       The runs' bytes and absmax entries are gathered into a contiguous slice.</li>
 * </ul>
 * A slice whose edges cut a block cannot be represented (its blocks would mix elements of two
 * ranks under one scale) and is an {@link IllegalArgumentException} naming the tensor, the
 * dimension, tp and the blocksize.
 *
 * <p>Double quantization: absmax is stored as 8-bit codes with one float scale per 256 blocks and
 * a global offset. The slice's absmax is decoded here for the slice's blocks only, exactly as
 * {@code qk_nf4_double_dequantize} does it ({@code fl(fl(map[code] * nested[b / 256]) + offset)},
 * two float32 roundings, bit for bit the same as {@link io.qkern.nf4.Nf4#absmaxOf}); this is
 * 1/blocksize of the weight's elements and keeps the nested scales' grouping, which a slice does
 * not in general respect, out of the result. The slice is returned as a plain (not
 * double-quantized) {@link Nf4Tensor} with a float32 absmax, ready for {@link io.qkern.nf4.Nf4Matmul}.
 *
 * <p>Every companion tensor the slice uses is validated as {@link Nf4Tensor#read} validates it
 * (quant state, code table, sizes, finite non-negative scales) — for the slice's entries only.
 */
public final class Nf4SliceReader {
    private Nf4SliceReader() {}

    /** A rank's slice and how many bytes of tensor data were read from the file to make it. */
    public record Slice(Nf4Tensor weight, long bytesRead) implements AutoCloseable {
        @Override
        public void close() {
            weight.close();
        }
    }

    /** The shape [N, K] of the NF4 weight {@code name}, from its quant state. */
    public static long[] shape(SafetensorsFile file, String name) throws SafetensorsFormatException {
        return new Reader(file, name).shape.clone();
    }

    /** Rank {@code split.rank()}'s rows: W[r*N/tp, (r+1)*N/tp) (a column-parallel layer's weight). */
    public static Slice readRowShard(SafetensorsFile file, String name, TpSplit split, Device device)
            throws SafetensorsFormatException {
        Reader r = new Reader(file, name);
        long n = r.shape[0], k = r.shape[1];
        long rows = split.width(name, "N (out_features)", n, 1, "row");
        long begin = rows * split.rank();
        if (split.tp() > 1 && (rows * k) % r.blocksize != 0) {
            throw new IllegalArgumentException(name + ": dimension N (out_features) = " + n + " split over tp = "
                    + split.tp() + " gives slices of " + rows + " rows x K = " + k + " = " + rows * k
                    + " elements, not a multiple of the NF4 blocksize " + r.blocksize
                    + " (a rank's rows must be whole blocks of the flattened weight)");
        }
        return r.read(begin, begin + rows, 0, k, device);
    }

    /** Rank {@code split.rank()}'s columns: W[:, r*K/tp, (r+1)*K/tp) (a row-parallel layer's weight). */
    public static Slice readColumnShard(SafetensorsFile file, String name, TpSplit split, Device device)
            throws SafetensorsFormatException {
        Reader r = new Reader(file, name);
        long n = r.shape[0], k = r.shape[1];
        if (split.tp() > 1 && k % r.blocksize != 0) {
            throw new IllegalArgumentException(name + ": dimension K (in_features) = " + k
                    + " is not a multiple of the NF4 blocksize " + r.blocksize + ", so its NF4 blocks straddle rows"
                    + " and no column split over tp = " + split.tp() + " consists of whole blocks");
        }
        long cols = split.width(name, "K (in_features)", k, split.tp() > 1 ? r.blocksize : 1,
                "NF4 blocksize " + r.blocksize);
        long begin = cols * split.rank();
        return r.read(0, n, begin, begin + cols, device);
    }

    /**
     * W[r0:r1, c0:c1]. Rows need r0*K and r1*K on block boundaries (r1 = N may end in a short
     * block); a column range other than [0, K) needs K, c0 and c1 to be multiples of the blocksize.
     */
    public static Slice read(SafetensorsFile file, String name, long r0, long r1, long c0, long c1, Device device)
            throws SafetensorsFormatException {
        return new Reader(file, name).read(r0, r1, c0, c1, device);
    }

    /**
     * The rows of {@code top} followed by the rows of {@code bottom} as one NF4 weight (e.g. a rank's
     * gate and up projections, multiplied in one kernel call). Both must have the same K, blocksize
     * and device, and {@code top} must be whole blocks so that {@code bottom}'s blocks keep their
     * boundaries. The inputs stay the caller's.
     */
    public static Nf4Tensor stackRows(Nf4Tensor top, Nf4Tensor bottom) {
        long[] a = top.shape(), b = bottom.shape();
        if (a.length != 2 || b.length != 2 || a[1] != b[1] || top.blocksize() != bottom.blocksize()
                || !top.device().equals(bottom.device()) || top.isDoubleQuantized() || bottom.isDoubleQuantized()) {
            throw new IllegalArgumentException("cannot stack NF4 weights " + Arrays.toString(a) + " (blocksize "
                    + top.blocksize() + ", " + top.device() + ") and " + Arrays.toString(b) + " (blocksize "
                    + bottom.blocksize() + ", " + bottom.device() + "): they need the same K, blocksize and device,"
                    + " and a float32 absmax");
        }
        if (top.numel() % top.blocksize() != 0) {
            throw new IllegalArgumentException("cannot stack NF4 weights: the first has " + top.numel()
                    + " elements, not whole blocks of " + top.blocksize());
        }
        Device device = top.device();
        Tensor packed = Tensor.allocate(DType.U8, device, top.packed().numel() + bottom.packed().numel());
        Tensor absmax = null;
        try {
            absmax = Tensor.allocate(DType.F32, device, top.absmax().numel() + bottom.absmax().numel());
            concat(top.packed(), bottom.packed(), packed);
            concat(top.absmax(), bottom.absmax(), absmax);
            return Nf4Tensor.of(new Nf4QuantState(top.blocksize(), top.originalDtype(), new long[] {a[0] + b[0], a[1]},
                    false, 0f), packed, absmax, null);
        } catch (RuntimeException e) {
            packed.close();
            if (absmax != null) {
                absmax.close();
            }
            throw e;
        }
    }

    private static void concat(Tensor first, Tensor second, Tensor out) {
        try (Tensor h = Tensor.allocate(out.dtype(), Device.CPU, out.numel())) {
            byte[] x = first.toByteArray(), y = second.toByteArray();
            MemorySegment.copy(MemorySegment.ofArray(x), 0, h.segment(), 0, x.length);
            MemorySegment.copy(MemorySegment.ofArray(y), 0, h.segment(), x.length, y.length);
            out.copyFrom(h);
        }
    }

    /** Parses and checks the header-level facts of one NF4 weight; reads no bulk data. */
    private static final class Reader {
        final SafetensorsFile file;
        final String name;
        final Nf4QuantState state;
        final long[] shape;
        final int blocksize;
        final long blocks;
        long bytesRead;

        Reader(SafetensorsFile file, String name) throws SafetensorsFormatException {
            this.file = file;
            this.name = name;
            if (!Nf4Tensor.isNf4(file, name)) {
                throw new IllegalArgumentException(file.path() + " has no NF4 tensor \"" + name + "\""
                        + (file.contains(name) ? " (it is stored unquantized)" : ""));
            }
            MemorySegment js = file.data(name + Nf4Tensor.QUANT_STATE);
            bytesRead += js.byteSize();
            try {
                state = Nf4QuantState.parse(new String(js.toArray(ValueLayout.JAVA_BYTE), StandardCharsets.UTF_8));
            } catch (IllegalArgumentException e) {
                throw error("bad quant state: " + e.getMessage());
            }
            shape = state.shape();
            if (shape.length != 2) {
                throw new IllegalArgumentException(name + ": a tensor-parallel linear weight must be 2-D [N, K], the"
                        + " quant state says shape " + Arrays.toString(shape));
            }
            blocksize = state.blocksize();
            long n;
            try {
                n = state.numel();
            } catch (ArithmeticException e) {
                throw error("shape " + Arrays.toString(shape) + " overflows");
            }
            blocks = ceilDiv(n, blocksize);
            TensorInfo w = require(name);
            if (w.byteSize() != ceilDiv(n, 2)) {
                throw error("holds " + w.byteSize() + " bytes of codes but shape " + Arrays.toString(shape)
                        + " needs " + ceilDiv(n, 2));
            }
            TensorInfo map = require(name + Nf4Tensor.QUANT_MAP);
            if (map.numel() != 16 || !Arrays.equals(floats(map, 0, map.numel()), Nf4Format.codeTable())) {
                throw error(name + Nf4Tensor.QUANT_MAP + " is not the NF4 code table (FP4 and custom tables are not"
                        + " supported)");
            }
            TensorInfo absmax = require(name + Nf4Tensor.ABSMAX);
            if (absmax.numel() != blocks) {
                throw error(name + Nf4Tensor.ABSMAX + " has " + absmax.numel() + " elements but " + blocks
                        + " blocks of " + blocksize + " need " + blocks);
            }
            if (state.doubleQuant() && absmax.dtype() != DType.U8) {
                throw error("with double quantization " + name + Nf4Tensor.ABSMAX + " must be U8 codes, is "
                        + absmax.dtype());
            }
        }

        Slice read(long r0, long r1, long c0, long c1, Device device) throws SafetensorsFormatException {
            long n = shape[0], k = shape[1];
            if (r0 < 0 || r0 > r1 || r1 > n || c0 < 0 || c0 > c1 || c1 > k) {
                throw new IllegalArgumentException(name + ": slice rows [" + r0 + ", " + r1 + ") x columns [" + c0
                        + ", " + c1 + ") is outside the shape " + Arrays.toString(shape));
            }
            boolean allColumns = c0 == 0 && c1 == k;
            if (!allColumns && (k % blocksize != 0 || c0 % blocksize != 0 || c1 % blocksize != 0)) {
                throw new IllegalArgumentException(name + ": columns [" + c0 + ", " + c1 + ") of K = " + k
                        + " are not whole NF4 blocks of " + blocksize + " (K and both edges must be multiples of the"
                        + " blocksize)");
            }
            // The slice as runs of the flattened tensor: one run for full rows, one per row otherwise.
            long runs = allColumns ? 1 : r1 - r0;
            long runLength = allColumns ? (r1 - r0) * k : c1 - c0;
            long firstStart = r0 * k + (allColumns ? 0 : c0);
            if (firstStart % blocksize != 0
                    || (allColumns && r1 != n && (r1 * k) % blocksize != 0)) {
                throw new IllegalArgumentException(name + ": rows [" + r0 + ", " + r1 + ") of K = " + k
                        + " do not start and end on NF4 block boundaries (blocksize " + blocksize + ")");
            }
            long sliceElems = runs * runLength;
            long sliceBytes = ceilDiv(sliceElems, 2);
            long sliceBlocks = ceilDiv(sliceElems, blocksize);
            long runBlocks = ceilDiv(runLength, blocksize);  // exact except for a run ending the tensor
            if (sliceBytes > Integer.MAX_VALUE - 8 || sliceBlocks > Integer.MAX_VALUE - 8) {
                throw new IllegalArgumentException(name + ": a slice of " + sliceElems + " elements is too large");
            }

            MemorySegment codes = file.data(name);
            float[] absmax = new float[(int) sliceBlocks];
            Tensor packed = Tensor.allocate(DType.U8, Device.CPU, sliceBytes);
            try {
                long rowStride = allColumns ? 0 : k;
                for (long i = 0; i < runs; i++) {
                    long start = firstStart + i * rowStride;
                    long bytes = ceilDiv(runLength, 2);  // an odd length only for a run that ends the tensor
                    MemorySegment.copy(codes, start / 2, packed.segment(), i * (runLength / 2), bytes);
                    bytesRead += bytes;
                }
                readAbsmax(firstStart / blocksize, rowStride / blocksize, runs, runBlocks, absmax);
                Nf4QuantState sliceState = new Nf4QuantState(blocksize, state.dtype(),
                        new long[] {r1 - r0, c1 - c0}, false, 0f);
                Tensor packedOnDevice = device.isCpu() ? packed : packed.copyTo(device);
                Tensor absmaxOnDevice = null;
                try {
                    try (Tensor h = Tensor.ofFloats(absmax, absmax.length)) {
                        absmaxOnDevice = h.copyTo(device);
                    }
                    Nf4Tensor t = Nf4Tensor.of(sliceState, packedOnDevice, absmaxOnDevice, null);
                    if (packedOnDevice != packed) {
                        packed.close();
                    }
                    return new Slice(t, bytesRead);
                } catch (RuntimeException e) {
                    if (packedOnDevice != packed) {
                        packedOnDevice.close();
                    }
                    if (absmaxOnDevice != null) {
                        absmaxOnDevice.close();
                    }
                    throw e;
                }
            } catch (RuntimeException e) {
                packed.close();
                throw e;
            }
        }

        /** Fills {@code out} with the float32 absmax of {@code runs} runs of {@code runBlocks} blocks. */
        private void readAbsmax(long firstBlock, long blockStride, long runs, long runBlocks, float[] out)
                throws SafetensorsFormatException {
            TensorInfo info = file.info(name + Nf4Tensor.ABSMAX);
            if (!state.doubleQuant()) {
                checkFloatDtype(info);
                for (long i = 0; i < runs; i++) {
                    float[] a = floats(info, firstBlock + i * blockStride, runBlocks);
                    for (int j = 0; j < a.length; j++) {
                        if (!Float.isFinite(a[j]) || a[j] < 0) {
                            throw error(name + Nf4Tensor.ABSMAX + "[" + (firstBlock + i * blockStride + j) + "] is "
                                    + a[j] + " (a block scale must be finite and >= 0)");
                        }
                    }
                    System.arraycopy(a, 0, out, (int) (i * runBlocks), a.length);
                }
                return;
            }
            // Double quantization: only the nested scales covering the slice's blocks are read.
            long lastBlock = firstBlock + (runs - 1) * blockStride + runBlocks - 1;
            long g0 = firstBlock / Nf4Format.NESTED_BLOCKSIZE, g1 = lastBlock / Nf4Format.NESTED_BLOCKSIZE;
            TensorInfo nestedInfo = require(name + Nf4Tensor.NESTED_ABSMAX);
            long nestedBlocks = ceilDiv(blocks, Nf4Format.NESTED_BLOCKSIZE);
            if (nestedInfo.numel() != nestedBlocks) {
                throw error(name + Nf4Tensor.NESTED_ABSMAX + " has " + nestedInfo.numel() + " elements, expected "
                        + nestedBlocks);
            }
            checkFloatDtype(nestedInfo);
            float[] nested = floats(nestedInfo, g0, g1 - g0 + 1);
            for (int i = 0; i < nested.length; i++) {
                if (!Float.isFinite(nested[i]) || nested[i] < 0) {
                    throw error(name + Nf4Tensor.NESTED_ABSMAX + "[" + (g0 + i) + "] is " + nested[i]
                            + " (a block scale must be finite and >= 0)");
                }
            }
            TensorInfo mapInfo = require(name + Nf4Tensor.NESTED_QUANT_MAP);
            if (mapInfo.numel() != 256) {
                throw error(name + Nf4Tensor.NESTED_QUANT_MAP + " has " + mapInfo.numel() + " entries, expected 256");
            }
            checkFloatDtype(mapInfo);
            float[] map = floats(mapInfo, 0, 256);
            for (int i = 0; i < 256; i++) {
                if (!Float.isFinite(map[i])) {
                    throw error(name + Nf4Tensor.NESTED_QUANT_MAP + "[" + i + "] is not finite");
                }
            }
            MemorySegment codes = file.data(name + Nf4Tensor.ABSMAX);
            float offset = state.nestedOffset();
            int o = 0;
            for (long i = 0; i < runs; i++) {
                long b0 = firstBlock + i * blockStride;
                for (long b = b0; b < b0 + runBlocks; b++) {
                    int code = codes.get(ValueLayout.JAVA_BYTE, b) & 0xff;
                    // qk_nf4_double_dequantize's two float32 roundings, in the same order
                    float scaled = map[code] * nested[(int) (b / Nf4Format.NESTED_BLOCKSIZE - g0)];
                    out[o++] = scaled + offset;
                }
                bytesRead += runBlocks;
            }
        }

        private void checkFloatDtype(TensorInfo info) throws SafetensorsFormatException {
            if (info.dtype() != DType.F32 && info.dtype() != DType.F16 && info.dtype() != DType.BF16) {
                throw error(info.name() + " has dtype " + info.dtype() + ", expected F32 (or BF16/F16)");
            }
        }

        /** Elements [first, first + count) of a float tensor, widened; counted as read. */
        private float[] floats(TensorInfo info, long first, long count) throws SafetensorsFormatException {
            checkFloatDtype(info);
            int es = info.dtype().byteSize();
            MemorySegment s = file.data(info.name()).asSlice(first * es, count * es);
            bytesRead += count * es;
            return Floats.widen(s, info.dtype(), (int) count);
        }

        private TensorInfo require(String tensor) throws SafetensorsFormatException {
            if (!file.contains(tensor)) {
                throw error("has no companion tensor \"" + tensor + "\"");
            }
            return file.info(tensor);
        }

        private SafetensorsFormatException error(String problem) {
            return new SafetensorsFormatException(file.path(), name, "NF4 weight: " + problem);
        }
    }

    static long ceilDiv(long a, long b) {
        return a / b + (a % b != 0 ? 1 : 0);
    }
}
