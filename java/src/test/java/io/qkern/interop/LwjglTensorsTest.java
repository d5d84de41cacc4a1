package io.qkern.interop;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Tensor;
import io.qkern.nf4.Nf4;
import io.qkern.nf4.Nf4Tensor;
import java.nio.ByteBuffer;
import java.nio.FloatBuffer;
import java.util.Random;
import org.junit.jupiter.api.Test;
import org.lwjgl.PointerBuffer;
import org.lwjgl.system.MemoryUtil;

/** LWJGL MemoryUtil buffers as qkern tensors and back (headless, no GPU); device addresses as values. */
class LwjglTensorsTest {
    @Test
    void memoryUtilBuffersAreTensorsWithoutCopying() {
        FloatBuffer weights = MemoryUtil.memAllocFloat(256);
        try {
            Random random = new Random();
            float[] values = new float[256];
            for (int i = 0; i < values.length; i++) {
                values[i] = (float) random.nextGaussian();
                weights.put(i, values[i]);
            }
            try (Tensor t = LwjglTensors.wrap(weights, DType.F32, 4, 64)) {
                assertEquals(MemoryUtil.memAddress(weights), t.address(), "no copy");
                // A qkern kernel reads LWJGL's memory ...
                try (Nf4Tensor q = Nf4.quantize(t, new Nf4.Options(64, false)); Tensor absmax = q.absmax()) {
                    float[] scale = absmax.toFloatArray();
                    for (int b = 0; b < 4; b++) {
                        float max = 0;
                        for (int i = 0; i < 64; i++) {
                            max = Math.max(max, Math.abs(values[b * 64 + i]));
                        }
                        assertEquals(max, scale[b], "absmax of block " + b);
                    }
                    // ... and writes into it.
                    Nf4.dequantizeInto(q, t);
                }
                assertEquals(t.toFloatArray()[5], weights.get(5), "the kernel's write shows in the LWJGL buffer");
                weights.put(7, 42f);
                assertEquals(42f, t.toFloatArray()[7], "an LWJGL write shows in the tensor");
            }
        } finally {
            MemoryUtil.memFree(weights);
        }
    }

    @Test
    void tensorsAreByteBuffersWithoutCopying() {
        try (Tensor t = Tensor.ofFloats(new float[] {1, 2, 3}, 3)) {
            ByteBuffer b = LwjglTensors.byteBuffer(t);
            assertEquals(t.address(), MemoryUtil.memAddress(b));
            assertEquals(12, b.remaining());
            b.putFloat(4, 20f);
            assertArrayEquals(new float[] {1, 20, 3}, t.toFloatArray());
            t.close();
            assertThrows(IllegalStateException.class, () -> b.getFloat(0), "closed memory is not readable");
        }
    }

    @Test
    void refusesBuffersItCannotUse() {
        ByteBuffer direct = MemoryUtil.memAlloc(16);
        try {
            assertThrows(IllegalArgumentException.class, () -> LwjglTensors.wrap(direct, DType.F32, 5), "size");
            try (Tensor ro = LwjglTensors.wrap(direct.asReadOnlyBuffer(), DType.F32, 4)) {
                assertTrue(ro.isReadOnly());
                assertThrows(IllegalStateException.class, () -> ro.fillBytes(0));
            }
        } finally {
            MemoryUtil.memFree(direct);
        }
        IllegalArgumentException heap = assertThrows(IllegalArgumentException.class,
                () -> LwjglTensors.wrap(ByteBuffer.allocate(16), DType.F32, 4));
        assertTrue(heap.getMessage().contains("heap buffer"), heap.getMessage());
        try (Tensor host = Tensor.ofFloats(new float[] {1}, 1)) {
            assertThrows(IllegalArgumentException.class, () -> LwjglTensors.deviceAddress(host));
        }
    }

    @Test
    void lwjglCudaDevicePointersRoundTrip() {
        long address = 0x7f00_0000_2000L;  // what LWJGL 3.3.x cuMemAlloc would write; never dereferenced here
        PointerBuffer out = MemoryUtil.memAllocPointer(1);
        try {
            out.put(0, address);
            try (Tensor t = LwjglTensors.wrapDevice(out, DType.F16, 0, 128)) {
                assertEquals(Device.cuda(0), t.device());
                assertEquals(address, LwjglTensors.deviceAddress(t));
                assertEquals(256, t.byteSize());
            }
        } finally {
            MemoryUtil.memFree(out);
        }
        assertThrows(IllegalArgumentException.class, () -> LwjglTensors.wrapDevice(0L, DType.F16, 0, 4));
    }
}
