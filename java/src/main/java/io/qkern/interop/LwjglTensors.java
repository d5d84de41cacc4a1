package io.qkern.interop;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Tensor;
import java.lang.foreign.MemorySegment;
import java.nio.Buffer;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import org.lwjgl.PointerBuffer;

/**
 * LWJGL memory as qkern tensors and back, without copying: direct NIO buffers (from
 * {@code MemoryUtil.memAlloc}, {@code memAllocFloat}, a {@code MemoryStack}, ...) become host
 * tensors, a host tensor's memory becomes a {@link ByteBuffer}, and CUDA device pointers from
 * LWJGL 3.3.x's {@code org.lwjgl.cuda.CU} ({@code long} values, or the {@link PointerBuffer}
 * {@code cuMemAlloc} fills) become CUDA tensors.
 *
 * <p>Ownership stays with the allocator: {@code MemoryUtil.memFree} or {@code cuMemFree} only after
 * the tensor is closed. LWJGL removed its CUDA bindings in 3.4.0, so device pointers from LWJGL
 * mean LWJGL 3.3.x; the host adapters work with any LWJGL 3. Requires {@code org.lwjgl:lwjgl} on
 * the class path only for the {@link PointerBuffer} overload.
 */
public final class LwjglTensors {
    private LwjglTensors() {}

    /**
     * A host tensor over the remaining elements of a direct buffer (position to limit) holding a
     * contiguous {@code dtype} tensor of {@code shape}. A read-only buffer gives a read-only tensor.
     */
    public static Tensor wrap(Buffer buffer, DType dtype, long... shape) {
        if (buffer == null) {
            throw new IllegalArgumentException("buffer is null");
        }
        if (!buffer.isDirect()) {
            throw new IllegalArgumentException("buffer is a heap buffer; qkern needs native memory (MemoryUtil.memAlloc"
                    + " or ByteBuffer.allocateDirect)");
        }
        // ofBuffer covers position..limit and keeps the buffer object reachable while the segment is.
        return Tensor.wrap(MemorySegment.ofBuffer(buffer), dtype, shape);
    }

    /**
     * The memory of a host tensor as a native-order ByteBuffer (no copy). It is tied to the tensor's
     * memory: after the tensor is closed, using it throws instead of reading freed memory (an owned
     * tensor), or reads whatever its owner left (a wrapped one).
     */
    public static ByteBuffer byteBuffer(Tensor tensor) {
        if (tensor == null) {
            throw new IllegalArgumentException("tensor is null");
        }
        return tensor.segment().asByteBuffer().order(ByteOrder.nativeOrder());
    }

    /** A CUDA tensor over an LWJGL 3.3.x device pointer ({@code CUdeviceptr} is a {@code long} there). */
    public static Tensor wrapDevice(long devicePointer, DType dtype, int device, long... shape) {
        return Tensor.wrapAddress(devicePointer, dtype, Device.cuda(device), shape);
    }

    /** As {@link #wrapDevice(long, DType, int, long...)}, with the pointer {@code cuMemAlloc} wrote at the buffer's position. */
    public static Tensor wrapDevice(PointerBuffer devicePointer, DType dtype, int device, long... shape) {
        if (devicePointer == null || !devicePointer.hasRemaining()) {
            throw new IllegalArgumentException("devicePointer is null or has no pointer left at its position");
        }
        return wrapDevice(devicePointer.get(devicePointer.position()), dtype, device, shape);
    }

    /** The device address of a qkern CUDA tensor, for LWJGL 3.3.x CUDA calls (valid while the tensor is open). */
    public static long deviceAddress(Tensor tensor) {
        if (tensor == null) {
            throw new IllegalArgumentException("tensor is null");
        }
        if (tensor.device().isCpu()) {
            throw new IllegalArgumentException("tensor " + tensor + " is in host memory, not on a CUDA device");
        }
        return tensor.address();
    }
}
