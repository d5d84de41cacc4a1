package io.qkern.apmm;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Tensor;
import io.qkern.internal.ApmmNative;
import io.qkern.io.SafetensorsFile;
import io.qkern.io.SafetensorsWriter;
import io.qkern.io.TensorInfo;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.AtomicBoolean;

/**
 * One packed APMM operand: {@code rows} rows of {@code k} integer codes stored as bit planes in the
 * layout the matmul reads (see include/qkern.h), with per-segment code sums and, when quantized
 * from floats, scales and zero points. Weights are [N, K], activations [M, K].
 *
 * <p>Owns its tensors; {@link #close()} is idempotent. Saved and loaded as safetensors
 * ({@code planes} U8, {@code sums} I32, {@code scales} F32, {@code zero_points} I32, the format in
 * the metadata).
 */
public final class ApmmMatrix implements AutoCloseable {
    static final String FORMAT_KEY = "qkern.apmm.format";

    private final ApmmFormat format;
    private final int bits;
    private final long rows, k, group, scaleGroup;
    private final Tensor planes, sums, scales, zeroPoints;
    private final AtomicBoolean closed = new AtomicBoolean();

    ApmmMatrix(ApmmFormat format, int bits, long rows, long k, long group, long scaleGroup, Tensor planes, Tensor sums,
            Tensor scales, Tensor zeroPoints) {
        this.format = format;
        this.bits = bits;
        this.rows = rows;
        this.k = k;
        this.group = group;
        this.scaleGroup = scaleGroup;
        this.planes = planes;
        this.sums = sums;
        this.scales = scales;
        this.zeroPoints = zeroPoints;
    }

    /** 64-bit words per plane row: K padded to a multiple of 256. */
    public static long wordsPerPlane(long k) {
        return (k + 255) / 256 * 4;
    }

    /** Segments of {@code group} columns per row (1 for group 0). */
    public static long segments(long k, long group) {
        return group == 0 ? 1 : (k + group - 1) / group;
    }

    public ApmmFormat format() {
        return format;
    }

    public int bits() {
        return bits;
    }

    public long rows() {
        return rows;
    }

    public long k() {
        return k;
    }

    /** Columns per segment of the sums (0: whole rows); both operands of a matmul must agree. */
    public long group() {
        return group;
    }

    /** Columns per scale (0: one per row). */
    public long scaleGroup() {
        return scaleGroup;
    }

    public Device device() {
        return planes.device();
    }

    /** Whether scales are attached (quantized from floats) rather than raw codes. */
    public boolean hasScales() {
        return scales != null;
    }

    public Tensor planes() {
        return planes;
    }

    public Tensor sums() {
        return sums;
    }

    /** F32 [rows, 1 or segments], or null for raw codes. */
    public Tensor scales() {
        return scales;
    }

    /** I32 like the scales (unsigned format only), or null. */
    public Tensor zeroPoints() {
        return zeroPoints;
    }

    /** Packed bytes of the planes (what a weight-streaming kernel reads). */
    public long packedBytes() {
        return planes.byteSize();
    }

    /** The integer codes, I32 [rows, k], on this matrix's device. */
    public Tensor codes() {
        Tensor out = Tensor.allocate(DType.I32, device(), rows, k);
        try (Arena arena = Arena.ofConfined(); Tensor.Lease a = planes.acquire(); Tensor.Lease b = out.acquire()) {
            ApmmNative.get().unpack(planes.descriptor(arena), format.code(), bits, out.descriptor(arena),
                    MemorySegment.NULL);
            return out;
        } catch (RuntimeException e) {
            out.close();
            throw e;
        }
    }

    /** Writes this matrix to a safetensors file (atomically replacing {@code target}). */
    public void save(Path target) throws IOException {
        save(target, Map.of());
    }

    void save(Path target, Map<String, String> extraMetadata) throws IOException {
        Map<String, String> meta = new LinkedHashMap<>(extraMetadata);
        meta.put(FORMAT_KEY, "1");
        meta.put("format", format.lowerName());
        meta.put("bits", Integer.toString(bits));
        meta.put("k", Long.toString(k));
        meta.put("group", Long.toString(group));
        meta.put("scale_group", Long.toString(scaleGroup));
        List<Tensor> host = new ArrayList<>();
        try {
            SafetensorsWriter w = SafetensorsWriter.create(target).metadata(meta);
            add(w, "planes", planes, host);
            add(w, "sums", sums, host);
            if (scales != null) {
                add(w, "scales", scales, host);
            }
            if (zeroPoints != null) {
                add(w, "zero_points", zeroPoints, host);
            }
            w.write();
        } finally {
            host.forEach(Tensor::close);
        }
    }

    private static void add(SafetensorsWriter w, String name, Tensor t, List<Tensor> host) {
        Tensor h = t;
        if (!t.device().isCpu()) {
            h = t.copyTo(Device.CPU);
            host.add(h);
        }
        w.add(name, t.dtype(), t.shape(), h.segment());
    }

    /** Reads a matrix written by {@link #save} onto {@code device}. */
    public static ApmmMatrix load(Path source, Device device) throws IOException {
        try (SafetensorsFile f = SafetensorsFile.open(source)) {
            return read(f, device);
        }
    }

    /**
     * Assembles a matrix from its parts (all on one device, e.g. imported through DLPack), checking
     * every dtype and shape against the layout in include/qkern.h; takes ownership of the tensors.
     * {@code scales} is null for a matrix of raw codes; {@code zeroPoints} only for a quantized
     * unsigned matrix. (The plane bits themselves are data: like a file's, they are trusted.)
     */
    public static ApmmMatrix of(ApmmFormat format, int bits, long rows, long k, long group, long scaleGroup,
            Tensor planes, Tensor sums, Tensor scales, Tensor zeroPoints) {
        ApmmFormat.checkBits("bits", bits);
        ApmmFormat.checkGroup("group", group);
        ApmmFormat.checkGroup("scale_group", scaleGroup);
        if (rows < 0 || k < 0 || (scaleGroup != 0 && scaleGroup != group)) {
            throw new IllegalArgumentException("inconsistent rows " + rows + " / k " + k + " / group " + group
                    + " / scale_group " + scaleGroup);
        }
        expect(planes, "planes", DType.U8, rows, bits, wordsPerPlane(k) * 8);
        expect(sums, "sums", DType.I32, rows, segments(k, group));
        if (scales != null) {
            expect(scales, "scales", DType.F32, rows, segments(k, scaleGroup));
        }
        if (zeroPoints != null) {
            if (format != ApmmFormat.UNSIGNED || scales == null) {
                throw new IllegalArgumentException("zero_points only belong to a quantized unsigned matrix");
            }
            expect(zeroPoints, "zero_points", DType.I32, rows, segments(k, scaleGroup));
        }
        for (Tensor t : new Tensor[] {sums, scales, zeroPoints}) {
            if (t != null && !t.device().equals(planes.device())) {
                throw new IllegalArgumentException("APMM parts are on different devices: " + planes.device() + " and "
                        + t.device());
            }
        }
        return new ApmmMatrix(format, bits, rows, k, group, scaleGroup, planes, sums, scales, zeroPoints);
    }

    private static void expect(Tensor t, String name, DType dtype, long... shape) {
        if (t == null) {
            throw new IllegalArgumentException("APMM part " + name + " is missing");
        }
        if (t.dtype() != dtype || !Arrays.equals(t.shape(), shape)) {
            throw new IllegalArgumentException(name + " is " + t.dtype() + " " + Arrays.toString(t.shape())
                    + ", expected " + dtype + " " + Arrays.toString(shape));
        }
    }

    static ApmmMatrix read(SafetensorsFile f, Device device) {
        Map<String, String> meta = f.metadata();
        if (!"1".equals(meta.get(FORMAT_KEY))) {
            throw new IllegalArgumentException(f.path() + " is not a qkern APMM file (metadata " + FORMAT_KEY
                    + " is " + meta.get(FORMAT_KEY) + ", expected 1)");
        }
        ApmmFormat format = ApmmFormat.parse(require(f, meta, "format"));
        int bits = ApmmFormat.checkBits("bits", (int) number(f, meta, "bits"));
        long k = number(f, meta, "k");
        long group = ApmmFormat.checkGroup("group", number(f, meta, "group"));
        long scaleGroup = ApmmFormat.checkGroup("scale_group", number(f, meta, "scale_group"));
        if (k < 0 || (scaleGroup != 0 && scaleGroup != group)) {
            throw new IllegalArgumentException(f.path() + ": inconsistent k " + k + " / group " + group
                    + " / scale_group " + scaleGroup);
        }
        TensorInfo pi = f.info("planes");
        if (pi.rank() != 3) {
            throw new IllegalArgumentException(f.path() + ": planes has shape " + Arrays.toString(pi.shape())
                    + ", expected [rows, bits, 8*kw]");
        }
        long rows = pi.shape()[0];
        expect(f, "planes", DType.U8, rows, bits, wordsPerPlane(k) * 8);
        long segs = segments(k, group);
        expect(f, "sums", DType.I32, rows, segs);
        boolean hasScales = f.contains("scales");
        long scaleCols = segments(k, scaleGroup);
        if (hasScales) {
            expect(f, "scales", DType.F32, rows, scaleCols);
        }
        boolean hasZeros = f.contains("zero_points");
        if (hasZeros) {
            if (format != ApmmFormat.UNSIGNED || !hasScales) {
                throw new IllegalArgumentException(f.path() + ": zero_points only belong to a quantized unsigned matrix");
            }
            expect(f, "zero_points", DType.I32, rows, scaleCols);
        }
        List<Tensor> made = new ArrayList<>();
        try {
            Tensor planes = copy(f, "planes", device, made);
            Tensor sums = copy(f, "sums", device, made);
            Tensor scales = hasScales ? copy(f, "scales", device, made) : null;
            Tensor zeros = hasZeros ? copy(f, "zero_points", device, made) : null;
            return new ApmmMatrix(format, bits, rows, k, group, scaleGroup, planes, sums, scales, zeros);
        } catch (RuntimeException e) {
            made.forEach(Tensor::close);
            throw e;
        }
    }

    private static String require(SafetensorsFile f, Map<String, String> meta, String key) {
        String v = meta.get(key);
        if (v == null) {
            throw new IllegalArgumentException(f.path() + ": metadata lacks \"" + key + "\"");
        }
        return v;
    }

    private static long number(SafetensorsFile f, Map<String, String> meta, String key) {
        String v = require(f, meta, key);
        try {
            return Long.parseLong(v);
        } catch (NumberFormatException e) {
            throw new IllegalArgumentException(f.path() + ": metadata \"" + key + "\" = \"" + v + "\" is not an integer");
        }
    }

    private static void expect(SafetensorsFile f, String name, DType dtype, long... shape) {
        TensorInfo t = f.info(name);
        if (t.dtype() != dtype || !Arrays.equals(t.shape(), shape)) {
            throw new IllegalArgumentException(f.path() + ": " + name + " is " + t.dtype() + " "
                    + Arrays.toString(t.shape()) + ", expected " + dtype + " " + Arrays.toString(shape));
        }
    }

    private static Tensor copy(SafetensorsFile f, String name, Device device, List<Tensor> made) {
        TensorInfo t = f.info(name);
        try (Tensor view = Tensor.wrap(f.data(name), t.dtype(), t.shape())) {
            Tensor c = view.copyTo(device);
            made.add(c);
            return c;
        }
    }

    @Override
    public void close() {
        if (closed.compareAndSet(false, true)) {
            planes.close();
            sums.close();
            if (scales != null) {
                scales.close();
            }
            if (zeroPoints != null) {
                zeroPoints.close();
            }
        }
    }

    @Override
    public String toString() {
        return "ApmmMatrix[" + format.lowerName() + " " + bits + "-bit, " + rows + " x " + k
                + (group == 0 ? "" : ", group " + group) + (scales == null ? ", codes" : ", scaled") + "]";
    }
}
