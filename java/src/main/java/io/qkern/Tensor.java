package io.qkern;

import io.qkern.internal.NativeLib;
import io.qkern.internal.TensorStruct;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.atomic.AtomicLong;

/**
 * A dense n-dimensional array on a {@link Device}: host memory (a {@link MemorySegment}) or
 * device memory (an address Java never dereferences; copies are explicit).
 *
 * <p>Lifetimes are explicit: a tensor that owns its memory frees it on {@link #close()}
 * (idempotent); a tensor made by {@link #wrap} borrows memory the caller keeps alive. Native
 * calls hold a {@linkplain #acquire() lease}, so closing a tensor while a kernel runs on it
 * fails instead of freeing memory under the kernel. No Cleaner frees device memory: the GC does
 * not see GPU memory pressure.
 */
public final class Tensor implements AutoCloseable {
    private static final long CLOSED = -1;

    private final DType dtype;
    private final long[] shape;
    private final long[] strides;
    private final Device device;
    private final long numel;
    private final long byteSize;
    private final MemorySegment host;     // CPU tensors
    private final long deviceAddress;     // CUDA tensors
    private final Arena ownedArena;       // owned host memory, else null
    private final boolean ownsDeviceMemory;
    private final boolean readOnly;       // marked read-only by whoever lent the memory
    private final Runnable onClose;       // returns lent memory to its owner (wrapAddress), else null
    /** Holders outside Java (DLPack consumers) that close() waits for; guarded by itself. */
    private final List<ExternalHold> holds = new ArrayList<>();
    /** Number of active leases, or CLOSED. */
    private final AtomicLong leases = new AtomicLong();

    private Tensor(DType dtype, long[] shape, Device device, MemorySegment host, long deviceAddress,
            Arena ownedArena, boolean ownsDeviceMemory) {
        this(dtype, shape, device, host, deviceAddress, ownedArena, ownsDeviceMemory, false, null);
    }

    private Tensor(DType dtype, long[] shape, Device device, MemorySegment host, long deviceAddress,
            Arena ownedArena, boolean ownsDeviceMemory, boolean readOnly, Runnable onClose) {
        this.dtype = dtype;
        this.shape = shape;
        this.strides = TensorStruct.contiguousStrides(shape);
        this.device = device;
        this.numel = checkedNumel(shape);
        this.byteSize = bytesOf(dtype, shape);
        this.host = host;
        this.deviceAddress = deviceAddress;
        this.ownedArena = ownedArena;
        this.ownsDeviceMemory = ownsDeviceMemory;
        this.readOnly = readOnly;
        this.onClose = onClose;
    }

    // ---- creation ---------------------------------------------------------------------------------

    /** Uninitialized memory for a contiguous tensor (host memory is 64-byte aligned). */
    public static Tensor allocate(DType dtype, Device device, long... shape) {
        long[] s = checkShape(shape);
        long bytes = bytesOf(dtype, s);
        if (device.isCpu()) {
            Arena arena = Arena.ofShared();
            try {
                MemorySegment seg = arena.allocate(Math.max(bytes, 1), 64).asSlice(0, bytes);
                return new Tensor(dtype, s, device, seg, 0, arena, false);
            } catch (OutOfMemoryError | RuntimeException e) {
                arena.close();
                throw e instanceof OutOfMemoryError oom
                        ? new QkernException(QkernException.Status.OUT_OF_MEMORY,
                                "cannot allocate " + bytes + " host bytes for a " + dtype + " tensor of shape "
                                        + Arrays.toString(s), oom)
                        : (RuntimeException) e;
            }
        }
        long address = NativeLib.get().malloc(device.kind().code(), device.index(), bytes);
        return new Tensor(dtype, s, device, null, address, null, true);
    }

    /** A host tensor over memory the caller owns and keeps alive (no copy). */
    public static Tensor wrap(MemorySegment segment, DType dtype, long... shape) {
        long[] s = checkShape(shape);
        long bytes = bytesOf(dtype, s);
        if (segment == null) {
            throw new IllegalArgumentException("segment is null");
        }
        if (!segment.isNative()) {  // a heap segment's address() is an array offset: native code would crash on it
            throw new IllegalArgumentException("wrap needs native memory (an Arena or a mapped file), not a heap"
                    + " segment; copy it with ofBytes or ofFloats");
        }
        if (segment.byteSize() != bytes) {
            throw new IllegalArgumentException("segment has " + segment.byteSize() + " bytes but a " + dtype
                    + " tensor of shape " + Arrays.toString(s) + " needs " + bytes);
        }
        if (!segment.scope().isAlive()) {
            throw new IllegalStateException("segment's arena is already closed");
        }
        return new Tensor(dtype, s, Device.CPU, segment, 0, null, false);
    }

    /**
     * A contiguous tensor over memory another library allocated and keeps alive — a device
     * pointer from JCuda or LWJGL, an address from a DLPack producer — without copying. Like
     * {@link MemorySegment#reinterpret}, this trusts the caller: the address must hold
     * {@code numel * dtype.byteSize()} bytes on {@code device} for as long as the tensor is open.
     */
    public static Tensor wrapAddress(long address, DType dtype, Device device, long... shape) {
        return wrapAddress(address, dtype, device, false, null, shape);
    }

    /**
     * As {@link #wrapAddress(long, DType, Device, long...)}, and: a {@code readOnly} tensor refuses
     * {@link #copyFrom} and {@link #fillBytes} (host memory is also mapped read-only for Java);
     * {@code onClose} (may be null) runs once, when the tensor is closed, to hand the memory back.
     */
    public static Tensor wrapAddress(long address, DType dtype, Device device, boolean readOnly, Runnable onClose,
            long... shape) {
        if (dtype == null || device == null) {
            throw new IllegalArgumentException("dtype and device must not be null");
        }
        long[] s = checkShape(shape);
        long bytes = bytesOf(dtype, s);
        if (address == 0 && bytes != 0) {
            throw new IllegalArgumentException("address is 0 (NULL) for a " + dtype + " tensor of shape "
                    + Arrays.toString(s));
        }
        if (address % dtype.byteSize() != 0) {
            throw new IllegalArgumentException("address 0x" + Long.toHexString(address) + " is not aligned to the "
                    + dtype.byteSize() + "-byte " + dtype + " element");
        }
        if (device.isCpu()) {
            MemorySegment seg = MemorySegment.ofAddress(address).reinterpret(bytes);
            return new Tensor(dtype, s, device, readOnly ? seg.asReadOnly() : seg, 0, null, false, readOnly, onClose);
        }
        return new Tensor(dtype, s, device, null, address, null, false, readOnly, onClose);
    }

    /** A new host F32 tensor holding a copy of {@code values}. */
    public static Tensor ofFloats(float[] values, long... shape) {
        Tensor t = allocate(DType.F32, Device.CPU, shape);
        if (t.numel != values.length) {
            t.close();
            throw new IllegalArgumentException(values.length + " values do not fill shape " + Arrays.toString(shape));
        }
        MemorySegment.copy(values, 0, t.host, ValueLayout.JAVA_FLOAT, 0, values.length);
        return t;
    }

    /** A new host tensor of {@code dtype} holding a copy of raw little-endian bytes. */
    public static Tensor ofBytes(byte[] bytes, DType dtype, long... shape) {
        Tensor t = allocate(dtype, Device.CPU, shape);
        if (t.byteSize != bytes.length) {
            t.close();
            throw new IllegalArgumentException(bytes.length + " bytes do not fill a " + dtype + " tensor of shape "
                    + Arrays.toString(shape));
        }
        MemorySegment.copy(bytes, 0, t.host, ValueLayout.JAVA_BYTE, 0, bytes.length);
        return t;
    }

    // ---- properties ----------------------------------------------------------------------------------

    public DType dtype() {
        return dtype;
    }

    public long[] shape() {
        return shape.clone();
    }

    /** Strides in elements (tensors are contiguous, row-major). */
    public long[] strides() {
        return strides.clone();
    }

    public int rank() {
        return shape.length;
    }

    public Device device() {
        return device;
    }

    public long numel() {
        return numel;
    }

    public long byteSize() {
        return byteSize;
    }

    public boolean isClosed() {
        return leases.get() == CLOSED;
    }

    /**
     * True for a tensor over read-only memory (a file mapped read-only, or memory lent read-only
     * through {@link #wrapAddress(long, DType, Device, boolean, Runnable, long...)}): kernels may not write it.
     */
    public boolean isReadOnly() {
        return readOnly || (host != null && host.isReadOnly());
    }

    /** The host memory of a CPU tensor. Throws for device tensors: copy them first. */
    public MemorySegment segment() {
        ensureOpen();
        if (host == null) {
            throw new IllegalStateException("tensor is on " + device + ": copy it to the cpu to read it");
        }
        return host;
    }

    /** The raw address: host segment address or device pointer. */
    public long address() {
        ensureOpen();
        return host != null ? host.address() : deviceAddress;
    }

    // ---- copies ----------------------------------------------------------------------------------------

    /** A new tensor on {@code target} with the same contents. */
    public Tensor copyTo(Device target) {
        Tensor out = allocate(dtype, target, shape);
        try {
            out.copyFrom(this);
            return out;
        } catch (RuntimeException e) {
            out.close();
            throw e;
        }
    }

    /** Copies {@code src} (same dtype and element count, any device) into this tensor. */
    public void copyFrom(Tensor src) {
        if (src.dtype != dtype || src.numel != numel) {
            throw new IllegalArgumentException("cannot copy a " + src.dtype + " tensor of shape "
                    + Arrays.toString(src.shape) + " into a " + dtype + " tensor of shape " + Arrays.toString(shape));
        }
        if (isReadOnly()) {
            throw new IllegalStateException("tensor " + describe() + " wraps read-only memory and cannot be written");
        }
        if (byteSize == 0) {
            return;
        }
        try (Lease a = acquire(); Lease b = src.acquire()) {
            if (host != null && src.host != null) {
                MemorySegment.copy(src.host, 0, host, 0, byteSize);
            } else {
                NativeLib.get().memcpy(address(), device.kind().code(), device.index(), src.address(),
                        src.device.kind().code(), src.device.index(), byteSize, MemorySegment.NULL);
            }
        }
    }

    /** The elements as float (F32, F16 and BF16 widen exactly), copied to the host if needed. */
    public float[] toFloatArray() {
        if (!device.isCpu()) {
            try (Tensor h = copyTo(Device.CPU)) {
                return h.toFloatArray();
            }
        }
        if (numel > Integer.MAX_VALUE - 8) {
            throw new IllegalStateException("tensor too large for a Java array: " + numel + " elements");
        }
        if (!dtype.isFloatingPoint() || dtype == DType.F64) {
            throw new IllegalStateException("toFloatArray needs F32, F16 or BF16, tensor is " + dtype);
        }
        return io.qkern.internal.Floats.widen(segment(), dtype, (int) numel);
    }

    /** The raw bytes, copied to the host if needed. */
    public byte[] toByteArray() {
        if (!device.isCpu()) {
            try (Tensor h = copyTo(Device.CPU)) {
                return h.toByteArray();
            }
        }
        if (byteSize > Integer.MAX_VALUE - 8) {
            throw new IllegalStateException("tensor too large for a Java array: " + byteSize + " bytes");
        }
        return segment().toArray(ValueLayout.JAVA_BYTE);
    }

    /** Sets every byte to {@code value} (0xFF over float data reads as NaN: a poison fill). */
    public void fillBytes(int value) {
        if (isReadOnly()) {
            throw new IllegalStateException("tensor " + describe() + " wraps read-only memory and cannot be written");
        }
        try (Lease l = acquire()) {
            if (host != null) {
                host.fill((byte) value);
            } else {
                NativeLib.get().memset(deviceAddress, device.kind().code(), device.index(), value, byteSize,
                        MemorySegment.NULL);
            }
        }
    }

    // ---- native access -------------------------------------------------------------------------------------

    /** Keeps the tensor open while native code uses its memory; close the lease afterwards. */
    public final class Lease implements AutoCloseable {
        private boolean released;

        private Lease() {}

        @Override
        public void close() {
            if (!released) {
                released = true;
                leases.decrementAndGet();
            }
        }
    }

    public Lease acquire() {
        for (;;) {
            long v = leases.get();
            if (v == CLOSED) {
                throw new IllegalStateException("tensor " + describe() + " is closed");
            }
            if (host != null && !host.scope().isAlive()) {
                throw new IllegalStateException("tensor " + describe() + " wraps memory whose arena is closed");
            }
            if (leases.compareAndSet(v, v + 1)) {
                return new Lease();
            }
        }
    }

    /**
     * Writes this tensor's {@code qk_tensor} descriptor (include/qkern.h) into {@code arena}, for
     * calling the C ABI. Hold a {@link #acquire() lease} while the native call runs.
     */
    public MemorySegment descriptor(Arena arena) {
        ensureOpen();
        return TensorStruct.write(arena, address(), byteSize, dtype.code(), device.kind().code(), device.index(),
                shape, strides);
    }

    /**
     * A user of this tensor's memory outside Java, such as a DLPack consumer, that lets go on its
     * own thread without calling back into Java: {@link #close()} polls it and refuses to free the
     * memory until it has let go.
     */
    public interface ExternalHold {
        /** True once the holder no longer uses the memory; cheap and thread-safe. */
        boolean released();

        /** Frees the hold's own bookkeeping; called once, after {@link #released()} returned true. */
        void dispose();

        /** Names the holder in close()'s error, e.g. "a DLPack consumer". */
        String holder();
    }

    /** Registers an outside holder of this open tensor's memory (see {@link ExternalHold}). */
    public void hold(ExternalHold hold) {
        if (hold == null) {
            throw new IllegalArgumentException("hold is null");
        }
        synchronized (holds) {
            ensureOpen();
            pruneReleasedHolds();
            holds.add(hold);
        }
    }

    /** The outside holders (see {@link #hold}) that have not let go yet. */
    public int externalHolds() {
        synchronized (holds) {
            pruneReleasedHolds();
            return holds.size();
        }
    }

    private void pruneReleasedHolds() {
        holds.removeIf(h -> {
            if (!h.released()) {
                return false;
            }
            h.dispose();
            return true;
        });
    }

    // ---- lifetime ----------------------------------------------------------------------------------------

    /**
     * Frees owned memory (or hands lent memory back); idempotent. Throws if a native call still
     * holds a lease or an outside holder (a DLPack consumer) has not let go.
     */
    @Override
    public void close() {
        synchronized (holds) {  // hold() checks openness under the same lock: no hold slips past close
            for (;;) {
                long v = leases.get();
                if (v == CLOSED) {
                    return;
                }
                if (v > 0) {
                    throw new IllegalStateException("tensor " + describe() + " is in use by a native call");
                }
                pruneReleasedHolds();
                if (!holds.isEmpty()) {
                    throw new IllegalStateException("tensor " + describe() + " is still used by " + holds.size()
                            + " outside holder(s) (" + holds.get(0).holder() + "): its memory stays until they let go");
                }
                if (leases.compareAndSet(0, CLOSED)) {
                    break;
                }
            }
        }
        if (onClose != null) {
            onClose.run();
        }
        if (ownedArena != null) {
            ownedArena.close();
        } else if (ownsDeviceMemory && deviceAddress != 0) {
            NativeLib.get().free(device.kind().code(), device.index(), deviceAddress);
        }
    }

    private void ensureOpen() {
        if (leases.get() == CLOSED) {
            throw new IllegalStateException("tensor " + describe() + " is closed");
        }
    }

    private String describe() {
        return dtype + Arrays.toString(shape) + "@" + device;
    }

    @Override
    public String toString() {
        return "Tensor(" + describe() + (isClosed() ? ", closed" : "") + ")";
    }

    // ---- shape helpers ---------------------------------------------------------------------------------------

    private static long[] checkShape(long[] shape) {
        if (shape == null) {
            throw new IllegalArgumentException("shape is null");
        }
        if (shape.length > TensorStruct.MAX_DIMS) {
            throw new IllegalArgumentException("at most " + TensorStruct.MAX_DIMS + " dimensions, got shape "
                    + Arrays.toString(shape));
        }
        for (long d : shape) {
            if (d < 0) {
                throw new IllegalArgumentException("negative dimension in shape " + Arrays.toString(shape));
            }
        }
        return shape.clone();
    }

    static long checkedNumel(long[] shape) {
        long n = 1;
        for (long d : shape) {
            try {
                n = Math.multiplyExact(n, d);
            } catch (ArithmeticException e) {
                throw new IllegalArgumentException("shape " + Arrays.toString(shape) + " has more than 2^63 elements");
            }
        }
        return n;
    }

    static long bytesOf(DType dtype, long[] shape) {
        try {
            return Math.multiplyExact(checkedNumel(shape), (long) dtype.byteSize());
        } catch (ArithmeticException e) {
            throw new IllegalArgumentException("a " + dtype + " tensor of shape " + Arrays.toString(shape)
                    + " has more than 2^63 bytes");
        }
    }
}
