package io.qkern.apmm;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.QkernException;
import io.qkern.Tensor;
import io.qkern.internal.ApmmNative;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

/**
 * Arbitrary-precision quantized matmul: p-bit weights x q-bit activations (1..8 each, formats
 * chosen independently) decomposed into bit planes; C = A W^T is accumulated exactly in int32 from
 * p*q binary products (or 8-bit products, whichever the kernel chooses per (p, q, M)), then scales
 * and zero points are applied once. Kernels run on the device of the operands.
 */
public final class Apmm {
    private Apmm() {}

    /** A matmul's output and the kernel that produced it ("avx2-bitserial", "cuda-b1-mma", ...). */
    public record Product(Tensor out, String path) {}

    /**
     * Packs integer codes (I8, U8, I16 or I32 [rows, K]) of {@code format} at {@code bits} bits.
     * {@code group} (0, 32, 64 or 128) segments the code sums; the other operand of a matmul must
     * use the same. A code outside the format's range throws IllegalArgumentException naming it.
     */
    public static ApmmMatrix pack(Tensor codes, ApmmFormat format, int bits, long group) {
        ApmmFormat.checkBits("bits", bits);
        ApmmFormat.checkGroup("group", group);
        DType dt = codes.dtype();
        if (dt != DType.I8 && dt != DType.U8 && dt != DType.I16 && dt != DType.I32) {
            throw new IllegalArgumentException("codes must be I8, U8, I16 or I32, got " + dt);
        }
        long[] shape = checkMatrix("codes", codes);
        long rows = shape[0], k = shape[1];
        List<Tensor> made = new ArrayList<>();
        try {
            Tensor planes = track(made, Tensor.allocate(DType.U8, codes.device(), rows, bits,
                    ApmmMatrix.wordsPerPlane(k) * 8));
            Tensor sums = track(made, Tensor.allocate(DType.I32, codes.device(), rows, ApmmMatrix.segments(k, group)));
            long[] bad = {-1};
            try (Arena arena = Arena.ofConfined(); Tensor.Lease a = codes.acquire(); Tensor.Lease b = planes.acquire();
                    Tensor.Lease c = sums.acquire()) {
                ApmmNative.get().pack(codes.descriptor(arena), format.code(), bits, group, planes.descriptor(arena),
                        sums.descriptor(arena), bad, MemorySegment.NULL);
            } catch (QkernException e) {
                if (e.status() == QkernException.Status.INVALID_ARGUMENT && bad[0] >= 0) {
                    throw new IllegalArgumentException(e.getMessage(), e);
                }
                throw e;
            }
            return new ApmmMatrix(format, bits, rows, k, group, 0, planes, sums, null, null);
        } catch (RuntimeException e) {
            made.forEach(Tensor::close);
            throw e;
        }
    }

    /**
     * Quantizes weights x (F32, F16 or BF16 [N, K]) with one scale per row ({@code group} 0) or per
     * {@code group} (32, 64, 128) columns, and packs them. Unsigned gets integer zero points.
     */
    public static ApmmMatrix quantize(Tensor x, ApmmFormat format, int bits, long group) {
        return quantize(x, format, bits, group, group);
    }

    /**
     * Dynamic per-token activation quantization fused with packing: one scale per row of x (F32,
     * F16 or BF16 [M, K]); {@code group} must be the weights' group.
     */
    public static ApmmMatrix quantizeActivations(Tensor x, ApmmFormat format, int bits, long group) {
        return quantize(x, format, bits, 0, group);
    }

    private static ApmmMatrix quantize(Tensor x, ApmmFormat format, int bits, long scaleGroup, long group) {
        ApmmFormat.checkBits("bits", bits);
        ApmmFormat.checkGroup("group", group);
        DType dt = x.dtype();
        if (dt != DType.F32 && dt != DType.F16 && dt != DType.BF16) {
            throw new IllegalArgumentException("APMM quantizes F32, F16 or BF16, got " + dt);
        }
        long[] shape = checkMatrix("x", x);
        long rows = shape[0], k = shape[1];
        Device dev = x.device();
        List<Tensor> made = new ArrayList<>();
        try {
            Tensor planes = track(made, Tensor.allocate(DType.U8, dev, rows, bits, ApmmMatrix.wordsPerPlane(k) * 8));
            Tensor sums = track(made, Tensor.allocate(DType.I32, dev, rows, ApmmMatrix.segments(k, group)));
            long scaleCols = ApmmMatrix.segments(k, scaleGroup);
            Tensor scales = track(made, Tensor.allocate(DType.F32, dev, rows, scaleCols));
            Tensor zeros = format == ApmmFormat.UNSIGNED ? track(made, Tensor.allocate(DType.I32, dev, rows, scaleCols))
                    : null;
            long[] bad = {-1};
            try (Arena arena = Arena.ofConfined(); Tensor.Lease a = x.acquire(); Tensor.Lease b = planes.acquire();
                    Tensor.Lease c = sums.acquire(); Tensor.Lease d = scales.acquire();
                    Tensor.Lease e = zeros == null ? null : zeros.acquire()) {
                ApmmNative.get().quantize(x.descriptor(arena), format.code(), bits, scaleGroup, group,
                        planes.descriptor(arena), sums.descriptor(arena), scales.descriptor(arena),
                        zeros == null ? MemorySegment.NULL : zeros.descriptor(arena), bad, MemorySegment.NULL);
            }
            return new ApmmMatrix(format, bits, rows, k, group, scaleGroup, planes, sums, scales, zeros);
        } catch (RuntimeException e) {
            made.forEach(Tensor::close);
            throw e;
        }
    }

    /**
     * C[M, N] = A[M, K] W[N, K]^T. Without scales on both operands the result is the exact integer
     * product of the codes ({@code out} must be I32); with scales, F32, F16 or BF16.
     */
    public static Product matmul(ApmmMatrix a, ApmmMatrix w, DType out, ApmmPath path) {
        if (a.k() != w.k()) {
            throw new IllegalArgumentException("A has K = " + a.k() + " but W has K = " + w.k());
        }
        if (a.group() != w.group()) {
            throw new IllegalArgumentException("A is packed with group " + a.group() + " but W with group " + w.group());
        }
        if (!a.device().equals(w.device())) {
            throw new IllegalArgumentException("A is on " + a.device() + " but W is on " + w.device());
        }
        boolean scaled = out != DType.I32;
        if (scaled && (out != DType.F32 && out != DType.F16 && out != DType.BF16)) {
            throw new IllegalArgumentException("output dtype " + out + " is not I32, F32, F16 or BF16");
        }
        if (scaled && (!a.hasScales() || !w.hasScales())) {
            throw new IllegalArgumentException("a " + out + " output needs scales on both operands (quantized"
                    + " matrices); raw codes give an I32 output");
        }
        if (!scaled && (a.hasScales() || w.hasScales())) {
            throw new IllegalArgumentException("an I32 output is the product of raw codes: the operands must not"
                    + " carry scales (use F32, F16 or BF16)");
        }
        Tensor c = Tensor.allocate(out, a.device(), a.rows(), w.rows());
        try {
            int used = run(a, w, c, path);
            return new Product(c, ApmmNative.get().pathName(used));
        } catch (RuntimeException e) {
            c.close();
            throw e;
        }
    }

    /** Writes A W^T into {@code out} (I32, or F32/F16/BF16 with scales); returns the path that ran. */
    public static String matmulInto(ApmmMatrix a, ApmmMatrix w, Tensor out, ApmmPath path) {
        return ApmmNative.get().pathName(run(a, w, out, path));
    }

    private static int run(ApmmMatrix a, ApmmMatrix w, Tensor out, ApmmPath path) {
        try (Arena arena = Arena.ofConfined(); Tensor.Lease l1 = a.planes().acquire(); Tensor.Lease l2 = a.sums().acquire();
                Tensor.Lease l3 = w.planes().acquire(); Tensor.Lease l4 = w.sums().acquire();
                Tensor.Lease l5 = out.acquire(); Tensor.Lease l6 = lease(a.scales()); Tensor.Lease l7 = lease(w.scales());
                Tensor.Lease l8 = lease(a.zeroPoints()); Tensor.Lease l9 = lease(w.zeroPoints())) {
            boolean scaled = out.dtype() != DType.I32;
            return ApmmNative.get().matmul(a.planes().descriptor(arena), a.sums().descriptor(arena),
                    scaled ? desc(a.scales(), arena) : MemorySegment.NULL,
                    scaled ? desc(a.zeroPoints(), arena) : MemorySegment.NULL, a.format().code(), a.bits(),
                    w.planes().descriptor(arena), w.sums().descriptor(arena),
                    scaled ? desc(w.scales(), arena) : MemorySegment.NULL,
                    scaled ? desc(w.zeroPoints(), arena) : MemorySegment.NULL, w.format().code(), w.bits(), a.k(),
                    a.group(), out.descriptor(arena), path.code(), MemorySegment.NULL);
        }
    }

    /** The kernel a matmul of M rows would run, without running it. */
    public static String choosePath(int aBits, int wBits, long m, Device device, ApmmPath request) {
        ApmmNative lib = ApmmNative.get();
        return lib.pathName(lib.choosePath(aBits, wBits, m, device.kind().code(), request.code()));
    }

    private static Tensor.Lease lease(Tensor t) {
        return t == null ? null : t.acquire();
    }

    private static MemorySegment desc(Tensor t, Arena arena) {
        return t == null ? MemorySegment.NULL : t.descriptor(arena);
    }

    private static long[] checkMatrix(String name, Tensor t) {
        long[] s = t.shape();
        if (s.length != 2) {
            throw new IllegalArgumentException(name + " must be 2-d [rows, K], got shape " + Arrays.toString(s));
        }
        return s;
    }

    private static Tensor track(List<Tensor> made, Tensor t) {
        made.add(t);
        return t;
    }
}
