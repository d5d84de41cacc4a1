package io.qkern.dlpack;

import io.qkern.DType;
import io.qkern.apmm.ApmmFormat;
import io.qkern.apmm.ApmmMatrix;
import io.qkern.Device;
import io.qkern.Tensor;
import io.qkern.internal.DLPackNative;
import io.qkern.nf4.Nf4QuantState;
import io.qkern.nf4.Nf4Tensor;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.atomic.AtomicBoolean;

/**
 * Zero-copy exchange of tensors with other stacks through DLPack 1.x
 * ({@code DLManagedTensorVersioned}, include/qkern_dlpack.h).
 *
 * <p><b>Exporting</b> lends a tensor's memory to a consumer (PyTorch, NumPy, JAX, a C library)
 * that calls the export's deleter when done. The deleter is C code inside libqkern: it never
 * calls back into Java, so it may run on any thread, at any time, even during GC or after the
 * consumer's own thread has left the JVM. Until every export's deleter has run, the exported
 * {@link Tensor} refuses to {@link Tensor#close() close} (an {@link IllegalStateException} that
 * says so), so the memory cannot be freed under the consumer; after that, close frees it as usual.
 * Exporting a {@linkplain Tensor#wrap wrapped} tensor cannot extend the life of the caller's
 * arena: keep it open while the consumer holds the export. For a CUDA tensor, finish the work that writes it
 * (synchronize its stream) before a consumer on another stream reads the export: an export is an
 * address, not an event.
 *
 * <p><b>Importing</b> takes a producer's {@code DLManagedTensorVersioned*}. qkern checks it (DLPack
 * major version 1, CPU or CUDA device, a dtype qkern has, compact row-major strides in elements,
 * byte offset, alignment, the read-only flag) and returns a {@link Tensor} over the same memory
 * that calls the producer's deleter when closed. A tensor qkern cannot take is refused with a
 * {@link io.qkern.QkernException} giving the reason, after its deleter has been called, so the
 * producer's memory is never leaked. Imports are host or device tensors like any other; a
 * read-only import reports {@link Tensor#isReadOnly()} and refuses writes from Java.
 *
 * <p><b>Quantized tensors</b> travel as their parts: an NF4 tensor is its packed codes (U8) plus its
 * scale tensors, with bitsandbytes' quant-state JSON beside them ({@link #exportNf4}, {@link #importNf4});
 * an APMM bit-plane matrix is its planes (U8) plus its code sums, scales and zero points
 * ({@link #exportApmm}, {@link #importApmm}).
 */
public final class DLPack {
    private DLPack() {}

    /** Exports {@code tensor}, read-only exactly when the tensor is. */
    public static MemorySegment export(Tensor tensor) {
        return export(tensor, tensor.isReadOnly());
    }

    /**
     * Exports {@code tensor} without copying and returns the address of a new
     * {@code DLManagedTensorVersioned} (a zero-length segment) that now belongs to the consumer.
     * Hand it to exactly one consumer, or give it back with {@link #release} if none takes it.
     *
     * @param readOnly marks the export with DLPACK_FLAG_BITMASK_READ_ONLY (required for a read-only tensor)
     */
    public static MemorySegment export(Tensor tensor, boolean readOnly) {
        if (tensor == null) {
            throw new IllegalArgumentException("tensor is null");
        }
        if (tensor.isReadOnly() && !readOnly) {
            throw new IllegalArgumentException("tensor " + tensor + " is read-only: export it with readOnly = true");
        }
        DLPackNative dl = DLPackNative.get();
        try (Tensor.Lease lease = tensor.acquire(); Arena arena = Arena.ofConfined()) {
            MemorySegment owner = dl.ownerCreate();
            MemorySegment managed;
            try {
                managed = dl.export(tensor.descriptor(arena), readOnly ? DLPackNative.FLAG_READ_ONLY : 0, owner);
            } catch (RuntimeException e) {
                dl.ownerRelease(owner);
                throw e;
            }
            tensor.hold(new ExportHold(dl, owner));
            return managed;
        }
    }

    /** Calls the deleter of an export no consumer took (or of any DLPack tensor this code owns). */
    public static void release(MemorySegment managed) {
        if (managed == null || managed.address() == 0) {
            throw new IllegalArgumentException("managed tensor is NULL");
        }
        DLPackNative.get().release(managed);
    }

    /** How many exports of {@code tensor} a consumer has not deleted yet. */
    public static int liveExports(Tensor tensor) {
        return tensor.externalHolds();
    }

    /**
     * Takes a producer's {@code DLManagedTensorVersioned*} as a tensor over the same memory. The
     * tensor calls the producer's deleter when closed; on refusal the deleter has already run.
     * Read-only tensors are accepted and stay read-only.
     */
    public static Tensor importTensor(MemorySegment managed) {
        return importTensor(managed, false);
    }

    /** As {@link #importTensor(MemorySegment)}, but refuses (and hands back) a read-only tensor. */
    public static Tensor importWritable(MemorySegment managed) {
        return importTensor(managed, true);
    }

    private static Tensor importTensor(MemorySegment managed, boolean writable) {
        if (managed == null || managed.address() == 0) {
            throw new IllegalArgumentException("managed tensor is NULL");
        }
        DLPackNative dl = DLPackNative.get();
        int flags = DLPackNative.IMPORT_CONTIGUOUS | (writable ? DLPackNative.IMPORT_WRITABLE : 0);
        DLPackNative.Imported t = dl.importTensor(managed, flags);
        AtomicBoolean released = new AtomicBoolean();
        Runnable giveBack = () -> {
            if (released.compareAndSet(false, true)) {
                dl.release(managed);
            }
        };
        try {
            Device device = t.deviceKind() == Device.Kind.CUDA.code() ? Device.cuda(t.deviceIndex()) : Device.CPU;
            return Tensor.wrapAddress(t.data(), dtypeOf(t.dtype()), device, t.readOnly(), giveBack, t.shape());
        } catch (RuntimeException e) {
            giveBack.run();
            throw e;
        }
    }

    private static DType dtypeOf(int code) {
        for (DType d : DType.values()) {
            if (d.code() == code) {
                return d;
            }
        }
        throw new AssertionError("qk_dlpack_import returned unknown dtype code " + code + " (a qkern bug)");
    }

    // ---- NF4 -------------------------------------------------------------------------------------

    /**
     * The parts of an NF4 tensor as DLPack exports: {@code packed} (U8 codes, two per byte, first
     * in the high nibble) and either {@code absmax} (F32 per block) or, with double quantization,
     * {@code absmaxCodes} (U8), {@code nestedAbsmax} (F32) and {@code nestedMap} (F32[256]); the
     * others are {@link MemorySegment#NULL}. {@code quantState} is bitsandbytes' quant-state JSON
     * (shape, dtype, blocksize, nested offset) that a consumer needs to decode them.
     */
    public record Nf4Parts(String quantState, MemorySegment packed, MemorySegment absmax, MemorySegment absmaxCodes,
            MemorySegment nestedAbsmax, MemorySegment nestedMap) {
        /** The exports that are present, for handing back with {@link DLPack#release} unused. */
        public List<MemorySegment> exports() {
            List<MemorySegment> list = new ArrayList<>();
            for (MemorySegment m : new MemorySegment[] {packed, absmax, absmaxCodes, nestedAbsmax, nestedMap}) {
                if (m != null && m.address() != 0) {
                    list.add(m);
                }
            }
            return list;
        }
    }

    /** Exports every part of {@code q} (read-only: the parts are shared, not copied). */
    public static Nf4Parts exportNf4(Nf4Tensor q) {
        List<MemorySegment> made = new ArrayList<>();
        try {
            MemorySegment packed = add(made, export(q.packed(), true));
            if (!q.isDoubleQuantized()) {
                MemorySegment absmax = add(made, export(q.absmax(), true));
                return new Nf4Parts(q.quantState().toJson(), packed, absmax, MemorySegment.NULL, MemorySegment.NULL,
                        MemorySegment.NULL);
            }
            Nf4Tensor.DoubleQuant dq = q.doubleQuant();
            MemorySegment codes = add(made, export(dq.codes(), true));
            MemorySegment nested = add(made, export(dq.nestedAbsmax(), true));
            MemorySegment map = add(made, export(dq.nestedMap(), true));
            return new Nf4Parts(q.quantState().toJson(), packed, MemorySegment.NULL, codes, nested, map);
        } catch (RuntimeException e) {
            made.forEach(DLPack::release);
            throw e;
        }
    }

    /**
     * Assembles an NF4 tensor from parts another stack exported (see {@link Nf4Parts}), checking
     * them against the quant state. On failure every part has been handed back to its producer.
     */
    public static Nf4Tensor importNf4(Nf4Parts parts) {
        List<Tensor> made = new ArrayList<>();
        List<MemorySegment> pending = new ArrayList<>(parts.exports());
        try {
            Nf4QuantState state = Nf4QuantState.parse(parts.quantState());
            Tensor packed = take(parts.packed(), made, pending);
            if (!state.doubleQuant()) {
                Tensor absmax = take(parts.absmax(), made, pending);
                return Nf4Tensor.of(state, packed, absmax, null);
            }
            Tensor codes = take(parts.absmaxCodes(), made, pending);
            Tensor nested = take(parts.nestedAbsmax(), made, pending);
            Tensor map = take(parts.nestedMap(), made, pending);
            return Nf4Tensor.of(state, packed, null, new Nf4Tensor.DoubleQuant(codes, nested, map, state.nestedOffset()));
        } catch (RuntimeException e) {
            made.forEach(Tensor::close);
            pending.forEach(DLPack::release);
            throw e;
        }
    }

    // ---- APMM bit planes ----------------------------------------------------------------------------

    /**
     * The parts of an APMM bit-plane matrix as DLPack exports: {@code planes} (U8 [rows, bits,
     * 8 * wordsPerPlane(k)], the layout in include/qkern.h), {@code sums} (I32 per row and segment),
     * and, for a matrix quantized from floats, {@code scales} (F32) and for the unsigned format
     * {@code zeroPoints} (I32); absent parts are {@link MemorySegment#NULL}. The numbers a consumer
     * needs to read them travel beside: format, bits, rows, k, group and scale group.
     */
    public record ApmmParts(String format, int bits, long rows, long k, long group, long scaleGroup,
            MemorySegment planes, MemorySegment sums, MemorySegment scales, MemorySegment zeroPoints) {
        /** The exports that are present, for handing back with {@link DLPack#release} unused. */
        public List<MemorySegment> exports() {
            List<MemorySegment> list = new ArrayList<>();
            for (MemorySegment m : new MemorySegment[] {planes, sums, scales, zeroPoints}) {
                if (m != null && m.address() != 0) {
                    list.add(m);
                }
            }
            return list;
        }
    }

    /** Exports every part of {@code m} (read-only: the parts are shared, not copied). */
    public static ApmmParts exportApmm(ApmmMatrix m) {
        List<MemorySegment> made = new ArrayList<>();
        try {
            MemorySegment planes = add(made, export(m.planes(), true));
            MemorySegment sums = add(made, export(m.sums(), true));
            MemorySegment scales = m.scales() == null ? MemorySegment.NULL : add(made, export(m.scales(), true));
            MemorySegment zeros = m.zeroPoints() == null ? MemorySegment.NULL : add(made, export(m.zeroPoints(), true));
            return new ApmmParts(m.format().lowerName(), m.bits(), m.rows(), m.k(), m.group(), m.scaleGroup(), planes,
                    sums, scales, zeros);
        } catch (RuntimeException e) {
            made.forEach(DLPack::release);
            throw e;
        }
    }

    /**
     * Assembles an APMM matrix from parts another stack exported (see {@link ApmmParts}), checking
     * their dtypes and shapes; on failure every part has been handed back to its producer.
     */
    public static ApmmMatrix importApmm(ApmmParts parts) {
        List<Tensor> made = new ArrayList<>();
        List<MemorySegment> pending = new ArrayList<>(parts.exports());
        try {
            ApmmFormat format = ApmmFormat.parse(parts.format());
            Tensor planes = takeApmm(parts.planes(), "planes", made, pending);
            Tensor sums = takeApmm(parts.sums(), "sums", made, pending);
            Tensor scales = present(parts.scales()) ? takeApmm(parts.scales(), "scales", made, pending) : null;
            Tensor zeros = present(parts.zeroPoints()) ? takeApmm(parts.zeroPoints(), "zero_points", made, pending) : null;
            return ApmmMatrix.of(format, parts.bits(), parts.rows(), parts.k(), parts.group(), parts.scaleGroup(), planes,
                    sums, scales, zeros);
        } catch (RuntimeException e) {
            made.forEach(Tensor::close);
            pending.forEach(DLPack::release);
            throw e;
        }
    }

    private static boolean present(MemorySegment m) {
        return m != null && m.address() != 0;
    }

    private static Tensor takeApmm(MemorySegment part, String name, List<Tensor> made, List<MemorySegment> pending) {
        if (!present(part)) {
            throw new IllegalArgumentException("the APMM part " + name + " is missing");
        }
        pending.remove(part);
        Tensor t = importTensor(part);
        made.add(t);
        return t;
    }

    private static MemorySegment add(List<MemorySegment> made, MemorySegment m) {
        made.add(m);
        return m;
    }

    private static Tensor take(MemorySegment part, List<Tensor> made, List<MemorySegment> pending) {
        if (part == null || part.address() == 0) {
            throw new IllegalArgumentException("an NF4 part the quant state needs is missing");
        }
        pending.remove(part);
        Tensor t = importTensor(part);
        made.add(t);
        return t;
    }

    /** Polls the owner's live-export count; frees the owner once it reaches zero. */
    private record ExportHold(DLPackNative dl, MemorySegment owner) implements Tensor.ExternalHold {
        @Override
        public boolean released() {
            return dl.ownerLiveExports(owner) == 0;
        }

        @Override
        public void dispose() {
            dl.ownerRelease(owner);
        }

        @Override
        public String holder() {
            return "a DLPack consumer that has not called the export's deleter";
        }
    }
}
