package io.qkern.nf4;

import io.qkern.DType;
import io.qkern.QkernException;
import io.qkern.Tensor;
import io.qkern.internal.Nf4Native;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

/**
 * NF4 (QLoRA NormalFloat-4) quantization and dequantization, bit-compatible with bitsandbytes.
 * Kernels run on the device of the input tensor (CPU: AVX-512 / AVX2 / scalar chosen at run
 * time, all worker threads; CUDA).
 */
public final class Nf4 {
    private Nf4() {}

    /** Quantization settings: blocksize (power of two, 32..4096) and double quantization. */
    public record Options(int blocksize, boolean doubleQuant) {
        public static final Options DEFAULT = new Options(Nf4Format.DEFAULT_BLOCKSIZE, false);

        public Options {
            Nf4Format.checkBlocksize(blocksize);
        }
    }

    /** Quantizes {@code x} (F32, F16 or BF16) with the default options. */
    public static Nf4Tensor quantize(Tensor x) {
        return quantize("tensor", x, Options.DEFAULT);
    }

    public static Nf4Tensor quantize(Tensor x, Options options) {
        return quantize("tensor", x, options);
    }

    /**
     * Quantizes {@code x}; {@code name} appears in error messages. NaN or Inf in {@code x} throws
     * a {@link NonFiniteException} naming the tensor and the element's index.
     */
    public static Nf4Tensor quantize(String name, Tensor x, Options options) {
        DType dtype = x.dtype();
        if (dtype != DType.F32 && dtype != DType.F16 && dtype != DType.BF16) {
            throw new IllegalArgumentException("NF4 quantizes F32, F16 or BF16 tensors; \"" + name + "\" is " + dtype);
        }
        long n = x.numel();
        int bs = options.blocksize();
        long blocks = Nf4Format.blocks(n, bs);
        Nf4Native lib = Nf4Native.get();
        List<Tensor> made = new ArrayList<>();
        try {
            Tensor packed = track(made, Tensor.allocate(DType.U8, x.device(), Nf4Format.packedBytes(n)));
            Tensor absmax = track(made, Tensor.allocate(DType.F32, x.device(), blocks));
            long[] bad = {-1};
            try (Arena arena = Arena.ofConfined(); Tensor.Lease a = x.acquire(); Tensor.Lease b = packed.acquire();
                    Tensor.Lease c = absmax.acquire()) {
                lib.nf4Quantize(x.descriptor(arena), bs, packed.descriptor(arena), absmax.descriptor(arena), bad,
                        MemorySegment.NULL);
            } catch (QkernException e) {
                if (e.status() == QkernException.Status.NON_FINITE && bad[0] >= 0) {
                    throw new NonFiniteException(name, x.shape(), bad[0], e);
                }
                throw e;
            }
            Nf4QuantState state;
            if (!options.doubleQuant()) {
                state = new Nf4QuantState(bs, dtype, x.shape(), false, 0f);
                return new Nf4Tensor(state, packed, absmax, null);
            }
            Tensor codes = track(made, Tensor.allocate(DType.U8, x.device(), blocks));
            Tensor nested = track(made, Tensor.allocate(DType.F32, x.device(),
                    Nf4Format.blocks(blocks, Nf4Format.NESTED_BLOCKSIZE)));
            Tensor map = track(made, upload(Nf4Format.dynamicMap(), x));
            float offset;
            try (Arena arena = Arena.ofConfined(); Tensor.Lease a = absmax.acquire(); Tensor.Lease b = map.acquire();
                    Tensor.Lease c = codes.acquire(); Tensor.Lease d = nested.acquire()) {
                offset = lib.nf4DoubleQuantize(absmax.descriptor(arena), map.descriptor(arena),
                        codes.descriptor(arena), nested.descriptor(arena), MemorySegment.NULL);
            }
            absmax.close();
            state = new Nf4QuantState(bs, dtype, x.shape(), true, offset);
            return new Nf4Tensor(state, packed, null, new Nf4Tensor.DoubleQuant(codes, nested, map, offset));
        } catch (RuntimeException e) {
            made.forEach(Tensor::close);
            throw e;
        }
    }

    /** Dequantizes into a new tensor of {@code dtype} (F32, F16 or BF16) on the NF4 tensor's device. */
    public static Tensor dequantize(Nf4Tensor q, DType dtype) {
        Tensor out = Tensor.allocate(checkOutputDtype(dtype), q.device(), q.shape());
        try {
            dequantizeInto(q, out);
            return out;
        } catch (RuntimeException e) {
            out.close();
            throw e;
        }
    }

    /** Dequantizes into {@code out}: F32/F16/BF16, same element count and device as {@code q}. */
    public static void dequantizeInto(Nf4Tensor q, Tensor out) {
        checkOutputDtype(out.dtype());
        if (out.numel() != q.numel()) {
            throw new IllegalArgumentException("output has " + out.numel() + " elements but the NF4 tensor of shape "
                    + Arrays.toString(q.shape()) + " has " + q.numel());
        }
        if (!out.device().equals(q.device())) {
            throw new IllegalArgumentException("output is on " + out.device() + " but the NF4 tensor is on " + q.device());
        }
        if (out.isReadOnly()) {  // the kernel would write into read-only (possibly PROT_READ-mapped) memory
            throw new IllegalArgumentException("output " + out + " wraps read-only memory");
        }
        Nf4Native lib = Nf4Native.get();
        Tensor absmax = q.isDoubleQuantized() ? rebuildAbsmax(q) : q.absmax();
        try (Arena arena = Arena.ofConfined(); Tensor.Lease a = q.packed().acquire(); Tensor.Lease b = absmax.acquire();
                Tensor.Lease c = out.acquire()) {
            lib.nf4Dequantize(q.packed().descriptor(arena), absmax.descriptor(arena), q.blocksize(),
                    out.descriptor(arena), MemorySegment.NULL);
        } finally {
            if (q.isDoubleQuantized()) {
                absmax.close();
            }
        }
    }

    /** The float32 absmax per block (rebuilt from the 8-bit codes when double-quantized). */
    public static Tensor absmaxOf(Nf4Tensor q) {
        return q.isDoubleQuantized() ? rebuildAbsmax(q) : q.absmax().copyTo(q.device());
    }

    private static Tensor rebuildAbsmax(Nf4Tensor q) {
        Nf4Tensor.DoubleQuant dq = q.doubleQuant();
        Tensor absmax = Tensor.allocate(DType.F32, q.device(), dq.codes().numel());
        try (Arena arena = Arena.ofConfined(); Tensor.Lease a = dq.codes().acquire();
                Tensor.Lease b = dq.nestedAbsmax().acquire(); Tensor.Lease c = dq.nestedMap().acquire();
                Tensor.Lease d = absmax.acquire()) {
            Nf4Native.get().nf4DoubleDequantize(dq.codes().descriptor(arena), dq.nestedAbsmax().descriptor(arena),
                    dq.nestedMap().descriptor(arena), dq.offset(), absmax.descriptor(arena), MemorySegment.NULL);
            return absmax;
        } catch (RuntimeException e) {
            absmax.close();
            throw e;
        }
    }

    private static DType checkOutputDtype(DType dtype) {
        if (dtype != DType.F32 && dtype != DType.F16 && dtype != DType.BF16) {
            throw new IllegalArgumentException("NF4 dequantizes to F32, F16 or BF16, not " + dtype);
        }
        return dtype;
    }

    private static Tensor upload(float[] values, Tensor like) {
        try (Tensor h = Tensor.ofFloats(values, values.length)) {
            return h.copyTo(like.device());
        }
    }

    private static Tensor track(List<Tensor> made, Tensor t) {
        made.add(t);
        return t;
    }
}
