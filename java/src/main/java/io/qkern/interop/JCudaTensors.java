package io.qkern.interop;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Tensor;
import jcuda.Pointer;
import jcuda.driver.CUdeviceptr;

/**
 * JCuda device memory as qkern tensors and back, without copying: a {@link CUdeviceptr} from
 * {@code cuMemAlloc} or a {@link Pointer} from {@code cudaMalloc} becomes a CUDA {@link Tensor}
 * that qkern kernels read and write in place, and a qkern CUDA tensor's memory becomes a pointer
 * JCuda calls accept.
 *
 * <p>Ownership stays where the memory was allocated: a wrapped JCuda allocation is freed by JCuda
 * ({@code cuMemFree}) after the tensor is closed; a pointer into a qkern tensor is valid while the
 * tensor is open. qkern and JCuda must use the same device and, for the driver API, a context on
 * it (qkern uses the runtime API's primary context); order work across their streams yourself.
 * Requires the {@code org.jcuda:jcuda} artifact (12.6.0, CUDA 12.6) on the class path.
 */
public final class JCudaTensors {
    private JCudaTensors() {}

    /** Wraps JCuda device memory holding a contiguous {@code dtype} tensor of {@code shape} on CUDA device {@code device}. */
    public static Tensor wrap(Pointer devicePointer, DType dtype, int device, long... shape) {
        return Tensor.wrapAddress(address(devicePointer), dtype, Device.cuda(device), shape);
    }

    /** A driver-API pointer to a qkern CUDA tensor's memory (no copy; valid while the tensor is open). */
    public static CUdeviceptr devicePointer(Tensor tensor) {
        return new CUdeviceptr().withByteOffset(cudaAddress(tensor));
    }

    /** A runtime-API pointer to a qkern CUDA tensor's memory (no copy; valid while the tensor is open). */
    public static Pointer pointer(Tensor tensor) {
        return new Pointer().withByteOffset(cudaAddress(tensor));
    }

    /**
     * The device address a JCuda pointer refers to (its native pointer plus byte offset). Refuses
     * a pointer to a Java array or buffer, which has no address a kernel could use.
     */
    public static long address(Pointer pointer) {
        if (pointer == null) {
            throw new IllegalArgumentException("pointer is null");
        }
        long address = new Address(pointer).value();
        if (address == 0) {
            throw new IllegalArgumentException("JCuda pointer " + pointer + " has address 0: not device memory (a NULL"
                    + " pointer, or a Pointer.to(...) over a Java array or buffer)");
        }
        return address;
    }

    private static long cudaAddress(Tensor tensor) {
        if (tensor == null) {
            throw new IllegalArgumentException("tensor is null");
        }
        if (tensor.device().isCpu()) {
            throw new IllegalArgumentException("tensor " + tensor + " is in host memory; JCuda device pointers need a"
                    + " CUDA tensor (copy it with copyTo(Device.cuda(n)))");
        }
        return tensor.address();
    }

    /** Reads JCuda's protected address fields through its copy constructor. */
    private static final class Address extends Pointer {
        Address(Pointer pointer) {
            super(pointer);
        }

        long value() {
            return getNativePointer() + getByteOffset();
        }
    }
}
