package io.qkern.interop;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Qkern;
import io.qkern.Tensor;
import jcuda.Pointer;
import jcuda.driver.CUdeviceptr;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;

/**
 * JCuda pointers and qkern CUDA tensors convert both ways at the same address. Runs without a GPU
 * and without JCuda's natives (only addresses are converted); the kernel part needs a GPU.
 */
class JCudaTensorsTest {
    private static final long ADDRESS = 0x7f3a_1234_5600L;  // a plausible device address, never dereferenced

    @Test
    void devicePointersRoundTripWithoutCopying() {
        try (Tensor t = Tensor.wrapAddress(ADDRESS, DType.BF16, Device.cuda(1), 4, 8)) {
            CUdeviceptr driver = JCudaTensors.devicePointer(t);
            Pointer runtime = JCudaTensors.pointer(t);
            assertEquals(ADDRESS, JCudaTensors.address(driver));
            assertEquals(ADDRESS, JCudaTensors.address(runtime));
            // JCuda pointer arithmetic is honoured: a tensor can start inside an allocation.
            assertEquals(ADDRESS + 64, JCudaTensors.address(driver.withByteOffset(64)));
            try (Tensor back = JCudaTensors.wrap(driver.withByteOffset(64), DType.F32, 1, 16)) {
                assertEquals(Device.cuda(1), back.device());
                assertEquals(ADDRESS + 64, back.address());
                assertEquals(64, back.byteSize());
            }
        }
    }

    @Test
    void refusesWhatIsNotDeviceMemory() {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> JCudaTensors.wrap(Pointer.to(new float[4]), DType.F32, 0, 4));
        assertTrue(e.getMessage().contains("not device memory"), e.getMessage());
        assertThrows(IllegalArgumentException.class, () -> JCudaTensors.wrap(new CUdeviceptr(), DType.F32, 0, 4));
        assertThrows(IllegalArgumentException.class, () -> JCudaTensors.wrap(null, DType.F32, 0, 4));
        assertThrows(IllegalArgumentException.class,
                () -> JCudaTensors.wrap(new CUdeviceptr().withByteOffset(ADDRESS + 2), DType.F32, 0, 4), "misaligned");
        assertThrows(IllegalArgumentException.class,
                () -> JCudaTensors.wrap(new CUdeviceptr().withByteOffset(ADDRESS), DType.F32, -1, 4), "device -1");
        try (Tensor host = Tensor.ofFloats(new float[] {1, 2}, 2)) {
            IllegalArgumentException h = assertThrows(IllegalArgumentException.class,
                    () -> JCudaTensors.devicePointer(host));
            assertTrue(h.getMessage().contains("host memory"), h.getMessage());
        }
        Tensor closed = Tensor.wrapAddress(ADDRESS, DType.F32, Device.cuda(0), 4);
        closed.close();
        assertThrows(IllegalStateException.class, () -> JCudaTensors.pointer(closed));
    }

    @Test
    void qkernKernelsRunOnJCudaMemory() {
        Assumptions.assumeTrue(Qkern.cudaAvailable(), "no usable CUDA device here: " + Qkern.info().cudaStatus());
        // With a GPU: qkern allocates, JCuda sees the same address, and a tensor wrapped back reads the data.
        try (Tensor h = Tensor.ofFloats(new float[] {1, 2, 3, 4}, 4); Tensor d = h.copyTo(Device.cuda(0))) {
            CUdeviceptr p = JCudaTensors.devicePointer(d);
            try (Tensor view = JCudaTensors.wrap(p, DType.F32, 0, 4)) {
                assertEquals(4f, view.toFloatArray()[3]);
            }
        }
    }
}
