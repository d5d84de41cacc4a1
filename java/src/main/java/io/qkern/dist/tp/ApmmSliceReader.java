package io.qkern.dist.tp;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Tensor;
import io.qkern.apmm.Apmm;
import io.qkern.apmm.ApmmFormat;
import io.qkern.apmm.ApmmLinear;
import io.qkern.apmm.ApmmMatrix;
import io.qkern.io.SafetensorsFile;
import io.qkern.io.TensorInfo;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;

/**
 * Reads one rank's slice of a packed APMM linear layer saved by {@link ApmmLinear#save} (planes,
 * sums, scales, zero points and the activation settings in one safetensors file).
 *
 * <p>Design: the weight is quantized ONCE, over the whole [N, K] matrix, and saved packed; ranks
 * slice the packed form. Quantizing each rank's float slice instead would give a row-parallel rank
 * per-channel scales computed from its K slice only — a different quantized weight for every tp,
 * so TP > 1 could not equal TP = 1. Slicing the packed weight keeps every code and scale:
 * <ul>
 *   <li>a row slice (column-parallel, N split) is a contiguous byte range of every part;</li>
 *   <li>a column slice (row-parallel, K split) takes, for every row and bit plane, the 64-bit
 *       words of its K range, zero-padded to the layout's 256-column multiple (padding is u = 0,
 *       which the kernel corrects); so K/tp must be a multiple of 64, and of the scale group
 *       (32/64/128) so that segments and group scales split whole. Per-channel scales (group 0)
 *       belong to the output channel: every rank keeps all N of them (a partial product over a K
 *       slice uses the channel's one scale, and the partials sum to the full product). A row's
 *       code sum over its K slice is not stored for group 0; it is recomputed by unpacking and
 *       re-packing the slice's codes (native kernels, at load time).</li>
 * </ul>
 * Only the slice's bytes are copied from the file's mapping ({@link Slice#bytesRead()} counts
 * them); a slice off those boundaries, or a dimension tp does not divide, is an
 * {@link IllegalArgumentException} naming the file, the dimension, tp and the boundary.
 */
public final class ApmmSliceReader {
    private ApmmSliceReader() {}

    /** A rank's slice, the layer's settings and how many bytes of tensor data were read. */
    public record Slice(ApmmMatrix weight, ApmmLinear.Spec spec, long bytesRead) implements AutoCloseable {
        @Override
        public void close() {
            weight.close();
        }
    }

    /** Rank {@code split.rank()}'s rows W[r*N/tp, (r+1)*N/tp) (a column-parallel layer's weight). */
    public static Slice readRowShard(SafetensorsFile file, TpSplit split, Device device) {
        Header h = new Header(file);
        long rows = split.width(file.path().toString(), "N (out_features)", h.rows, 1, "row");
        long r0 = rows * split.rank();
        List<Tensor> made = new ArrayList<>();
        long[] read = {0};
        try {
            Tensor planes = rowsOf(file, "planes", r0, rows, device, made, read);
            Tensor sums = rowsOf(file, "sums", r0, rows, device, made, read);
            Tensor scales = rowsOf(file, "scales", r0, rows, device, made, read);
            Tensor zeros = h.hasZeros ? rowsOf(file, "zero_points", r0, rows, device, made, read) : null;
            ApmmMatrix w = ApmmMatrix.of(h.format, h.bits, rows, h.k, h.group, h.scaleGroup, planes, sums, scales,
                    zeros);
            return new Slice(w, h.spec(), read[0]);
        } catch (RuntimeException e) {
            made.forEach(Tensor::close);
            throw e;
        }
    }

    /** Rank {@code split.rank()}'s columns W[:, r*K/tp, (r+1)*K/tp) (a row-parallel layer's weight). */
    public static Slice readColumnShard(SafetensorsFile file, TpSplit split, Device device) {
        Header h = new Header(file);
        long multiple = split.tp() == 1 ? 1 : Math.max(64, h.group);
        long cols = split.width(file.path().toString(), "K (in_features)", h.k, multiple,
                h.group > 64 ? "APMM scale group " + h.group : "APMM plane word of 64 columns");
        long c0 = cols * split.rank();
        if (split.tp() == 1) {
            return readRowShard(file, split, device);
        }
        long n = h.rows;
        List<Tensor> made = new ArrayList<>();
        long read = 0;
        try {
            // planes: [N, bits, 8*kw] -> [N, bits, 8*kw'], the slice's words then zero words
            long kw = ApmmMatrix.wordsPerPlane(h.k), kwSlice = ApmmMatrix.wordsPerPlane(cols);
            long wordsCopied = cols / 64;
            Tensor planesHost = track(made, Tensor.allocate(DType.U8, Device.CPU, n, h.bits, kwSlice * 8));
            planesHost.fillBytes(0);
            MemorySegment src = file.data("planes");
            for (long r = 0; r < n; r++) {
                for (long b = 0; b < h.bits; b++) {
                    long plane = r * h.bits + b;
                    MemorySegment.copy(src, (plane * kw + c0 / 64) * 8, planesHost.segment(), plane * kwSlice * 8,
                            wordsCopied * 8);
                    read += wordsCopied * 8;
                }
            }
            Tensor sums;
            if (h.group != 0) {
                sums = columnsOf(file, "sums", h.group, c0, cols, made);
                read += sums.byteSize();
            } else {
                sums = recomputedSums(h, planesHost, cols, made);
            }
            Tensor scales, zeros = null;
            if (h.scaleGroup == 0) {
                scales = rowsOf(file, "scales", 0, n, Device.CPU, made, null);
                read += scales.byteSize();
                if (h.hasZeros) {
                    zeros = rowsOf(file, "zero_points", 0, n, Device.CPU, made, null);
                    read += zeros.byteSize();
                }
            } else {
                scales = columnsOf(file, "scales", h.scaleGroup, c0, cols, made);
                read += scales.byteSize();
                if (h.hasZeros) {
                    zeros = columnsOf(file, "zero_points", h.scaleGroup, c0, cols, made);
                    read += zeros.byteSize();
                }
            }
            ApmmMatrix w = ApmmMatrix.of(h.format, h.bits, n, cols, h.group, h.scaleGroup,
                    to(planesHost, device, made), to(sums, device, made), to(scales, device, made),
                    zeros == null ? null : to(zeros, device, made));
            if (!device.isCpu()) {
                for (Tensor t : made) {
                    if (t.device().isCpu()) {
                        t.close();
                    }
                }
            }
            return new Slice(w, h.spec(), read);
        } catch (RuntimeException e) {
            made.forEach(Tensor::close);
            throw e;
        }
    }

    /**
     * The rows of {@code top} followed by those of {@code bottom} as one matrix (e.g. a rank's gate
     * and up projections, multiplied in one kernel call): the same format, bits, K, groups and
     * device. The inputs stay the caller's.
     */
    public static ApmmMatrix stackRows(ApmmMatrix top, ApmmMatrix bottom) {
        if (top.format() != bottom.format() || top.bits() != bottom.bits() || top.k() != bottom.k()
                || top.group() != bottom.group() || top.scaleGroup() != bottom.scaleGroup()
                || top.hasScales() != bottom.hasScales() || (top.zeroPoints() == null) != (bottom.zeroPoints() == null)
                || !top.device().equals(bottom.device())) {
            throw new IllegalArgumentException("cannot stack APMM matrices " + top + " and " + bottom
                    + ": format, bits, K, groups, parts and device must agree");
        }
        List<Tensor> made = new ArrayList<>();
        try {
            Tensor planes = track(made, stack(top.planes(), bottom.planes()));
            Tensor sums = track(made, stack(top.sums(), bottom.sums()));
            Tensor scales = top.hasScales() ? track(made, stack(top.scales(), bottom.scales())) : null;
            Tensor zeros = top.zeroPoints() == null ? null : track(made, stack(top.zeroPoints(), bottom.zeroPoints()));
            return ApmmMatrix.of(top.format(), top.bits(), top.rows() + bottom.rows(), top.k(), top.group(),
                    top.scaleGroup(), planes, sums, scales, zeros);
        } catch (RuntimeException e) {
            made.forEach(Tensor::close);
            throw e;
        }
    }

    /** Row-major a then b (same trailing dimensions) on a's device. */
    private static Tensor stack(Tensor a, Tensor b) {
        long[] shape = a.shape();
        shape[0] += b.shape()[0];
        byte[] x = a.toByteArray(), y = b.toByteArray();
        try (Tensor h = Tensor.allocate(a.dtype(), Device.CPU, shape)) {
            MemorySegment.copy(MemorySegment.ofArray(x), 0, h.segment(), 0, x.length);
            MemorySegment.copy(MemorySegment.ofArray(y), 0, h.segment(), x.length, y.length);
            return h.copyTo(a.device());
        }
    }

    /** The header facts of a saved APMM linear layer. */
    private static final class Header {
        final ApmmFormat format;
        final int bits;
        final long rows, k, group, scaleGroup;
        final boolean hasZeros;
        final ApmmFormat activationFormat;
        final int activationBits;

        Header(SafetensorsFile f) {
            Map<String, String> meta = f.metadata();
            if (!"1".equals(meta.get("qkern.apmm.format")) || meta.get("activation_format") == null
                    || meta.get("activation_bits") == null) {
                throw new IllegalArgumentException(f.path() + " is not an APMM linear layer saved by ApmmLinear.save"
                        + " (metadata qkern.apmm.format / activation_format / activation_bits missing)");
            }
            format = ApmmFormat.parse(meta.get("format"));
            bits = (int) number(f, meta, "bits");
            k = number(f, meta, "k");
            group = number(f, meta, "group");
            scaleGroup = number(f, meta, "scale_group");
            activationFormat = ApmmFormat.parse(meta.get("activation_format"));
            activationBits = (int) number(f, meta, "activation_bits");
            if (!f.contains("planes") || !f.contains("sums") || !f.contains("scales")) {
                throw new IllegalArgumentException(f.path() + ": an APMM linear layer needs planes, sums and scales");
            }
            TensorInfo planes = f.info("planes");
            if (planes.rank() != 3) {
                throw new IllegalArgumentException(f.path() + ": planes has shape " + Arrays.toString(planes.shape())
                        + ", expected [rows, bits, 8*kw]");
            }
            rows = planes.shape()[0];
            hasZeros = f.contains("zero_points");
            // the parts' exact shapes are checked by ApmmMatrix.of on the slice; here those the slicing relies on
            expect(f, "planes", DType.U8, rows, bits, ApmmMatrix.wordsPerPlane(k) * 8);
            expect(f, "sums", DType.I32, rows, ApmmMatrix.segments(k, group));
            expect(f, "scales", DType.F32, rows, ApmmMatrix.segments(k, scaleGroup));
            if (hasZeros) {
                expect(f, "zero_points", DType.I32, rows, ApmmMatrix.segments(k, scaleGroup));
            }
        }

        ApmmLinear.Spec spec() {
            return new ApmmLinear.Spec(format, bits, activationFormat, activationBits, group);
        }

        private static long number(SafetensorsFile f, Map<String, String> meta, String key) {
            String v = meta.get(key);
            try {
                return Long.parseLong(v);
            } catch (NumberFormatException | NullPointerException e) {
                throw new IllegalArgumentException(f.path() + ": metadata \"" + key + "\" = " + v
                        + " is not an integer");
            }
        }

        private static void expect(SafetensorsFile f, String name, DType dtype, long... shape) {
            TensorInfo t = f.info(name);
            if (t.dtype() != dtype || !Arrays.equals(t.shape(), shape)) {
                throw new IllegalArgumentException(f.path() + ": " + name + " is " + t.dtype() + " "
                        + Arrays.toString(t.shape()) + ", expected " + dtype + " " + Arrays.toString(shape));
            }
        }
    }

    /** Rows [r0, r0+rows) of a part (row-major, first dimension rows) as a tensor on {@code device}. */
    private static Tensor rowsOf(SafetensorsFile f, String name, long r0, long rows, Device device, List<Tensor> made,
            long[] read) {
        TensorInfo t = f.info(name);
        long[] shape = t.shape();
        long rowBytes = t.byteSize() / shape[0];
        shape[0] = rows;
        MemorySegment bytes = f.data(name).asSlice(r0 * rowBytes, rows * rowBytes);
        if (read != null) {
            read[0] += bytes.byteSize();
        }
        try (Tensor view = Tensor.wrap(bytes, t.dtype(), shape)) {
            return track(made, view.copyTo(device));
        }
    }

    /** Columns of a [rows, segments] part covering K columns [c0, c0+cols) in segments of {@code group}. */
    private static Tensor columnsOf(SafetensorsFile f, String name, long group, long c0, long cols, List<Tensor> made) {
        TensorInfo t = f.info(name);
        long rows = t.shape()[0], segs = t.shape()[1], s0 = c0 / group, ns = cols / group;
        Tensor out = track(made, Tensor.allocate(t.dtype(), Device.CPU, rows, ns));
        MemorySegment src = f.data(name);
        for (long r = 0; r < rows; r++) {
            MemorySegment.copy(src, (r * segs + s0) * 4, out.segment(), r * ns * 4, ns * 4);
        }
        return out;
    }

    /** The per-row code sums of a slice (group 0): its codes unpacked and packed again. */
    private static Tensor recomputedSums(Header h, Tensor planes, long cols, List<Tensor> made) {
        Tensor placeholder = Tensor.allocate(DType.I32, Device.CPU, h.rows, 1);
        placeholder.fillBytes(0);
        try (Tensor planesCopy = planes.copyTo(Device.CPU);
                ApmmMatrix raw = ApmmMatrix.of(h.format, h.bits, h.rows, cols, 0, 0, planesCopy, placeholder, null,
                        null);
                Tensor codes = raw.codes();
                ApmmMatrix repacked = Apmm.pack(codes, h.format, h.bits, 0)) {
            return track(made, repacked.sums().copyTo(Device.CPU));
        } finally {
            placeholder.close();
        }
    }

    private static Tensor to(Tensor host, Device device, List<Tensor> made) {
        return device.isCpu() ? host : track(made, host.copyTo(device));
    }

    private static Tensor track(List<Tensor> made, Tensor t) {
        made.add(t);
        return t;
    }
}
