package io.qkern.dlpack;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Qkern;
import io.qkern.QkernException;
import io.qkern.Tensor;
import io.qkern.apmm.Apmm;
import io.qkern.apmm.ApmmFormat;
import io.qkern.apmm.ApmmPath;
import io.qkern.apmm.ApmmMatrix;
import io.qkern.nf4.Nf4;
import io.qkern.nf4.Nf4Tensor;
import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.MethodHandles;
import java.lang.invoke.MethodType;
import java.util.Random;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.function.Consumer;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

/**
 * DLPack export and import from Java: memory is shared (writes through one side show on the
 * other), exported tensors cannot be closed under a consumer, every refusal hands the tensor back
 * to its producer's deleter exactly once, and NF4 tensors travel as their parts.
 */
class DLPackTest {
    // Byte offsets in DLManagedTensorVersioned (DLPack 1.x on a 64-bit ABI).
    private static final long VERSION_MAJOR = 0, DELETER = 16, FLAGS = 24, DATA = 32, DEVICE_TYPE = 40,
            DEVICE_ID = 44, NDIM = 48, DTYPE_CODE = 52, DTYPE_BITS = 53, DTYPE_LANES = 54, SHAPE = 56, STRIDES = 64,
            BYTE_OFFSET = 72, MANAGED_SIZE = 80;

    private static MemorySegment view(MemorySegment managed) {
        return managed.reinterpret(MANAGED_SIZE);
    }

    @ParameterizedTest
    @EnumSource(DType.class)
    void exportAndImportShareMemoryForEveryDtype(DType dtype) {
        try (Tensor t = Tensor.allocate(dtype, Device.CPU, 3, 5)) {
            t.fillBytes(0x11);
            MemorySegment managed = DLPack.export(t);
            MemorySegment m = view(managed);
            assertEquals(1, m.get(ValueLayout.JAVA_INT, VERSION_MAJOR));
            assertEquals(t.address(), m.get(ValueLayout.ADDRESS, DATA).address());
            assertEquals(dtype.byteSize() * 8, Byte.toUnsignedInt(m.get(ValueLayout.JAVA_BYTE, DTYPE_BITS)));
            MemorySegment strides = m.get(ValueLayout.ADDRESS, STRIDES).reinterpret(16);
            assertArrayEquals(new long[] {5, 1}, strides.toArray(ValueLayout.JAVA_LONG), "strides are in elements");
            assertEquals(1, DLPack.liveExports(t));
            try (Tensor back = DLPack.importWritable(managed)) {
                assertEquals(dtype, back.dtype());
                assertArrayEquals(new long[] {3, 5}, back.shape());
                assertEquals(t.address(), back.address());
                back.segment().set(ValueLayout.JAVA_BYTE, back.byteSize() - 1, (byte) 0x7E);
                assertEquals(0x7E, t.segment().get(ValueLayout.JAVA_BYTE, t.byteSize() - 1), "a write shows on the other side");
                IllegalStateException busy = assertThrows(IllegalStateException.class, t::close);
                assertTrue(busy.getMessage().contains("DLPack consumer"), busy.getMessage());
            }
            assertEquals(0, DLPack.liveExports(t), "closing the import ran the export's deleter");
        } // closes: nothing holds it any more
    }

    @Test
    void exportedTensorClosesOnceTheConsumerReleases() {
        Tensor t = Tensor.ofFloats(new float[] {1, 2, 3, 4}, 4);
        MemorySegment a = DLPack.export(t);
        MemorySegment b = DLPack.export(t);
        assertEquals(2, DLPack.liveExports(t));
        DLPack.release(a);
        assertThrows(IllegalStateException.class, t::close);
        assertFalse(t.isClosed());
        DLPack.release(b);
        t.close();
        assertTrue(t.isClosed());
        assertThrows(IllegalStateException.class, () -> DLPack.export(t), "a closed tensor cannot be exported");
    }

    @Test
    void readOnlyIsHonoured() {
        try (Tensor t = Tensor.ofFloats(new float[] {1, 2, 3, 4}, 2, 2)) {
            MemorySegment ro = DLPack.export(t, true);
            assertEquals(1L, view(ro).get(ValueLayout.JAVA_LONG, FLAGS));
            QkernException e = assertThrows(QkernException.class, () -> DLPack.importWritable(ro));
            assertTrue(e.getMessage().contains("read-only"), e.getMessage());
            assertEquals(0, DLPack.liveExports(t), "the refused export's deleter ran");

            try (Tensor reader = DLPack.importTensor(DLPack.export(t, true))) {
                assertTrue(reader.isReadOnly());
                assertArrayEquals(new float[] {1, 2, 3, 4}, reader.toFloatArray());
                assertThrows(IllegalStateException.class, () -> reader.fillBytes(0));
                assertThrows(IllegalStateException.class, () -> reader.copyFrom(t));
                assertThrows(IllegalArgumentException.class, () -> DLPack.export(reader, false));
            }
        }
    }

    /** Corrupts one field of a qkern export; the import must refuse it and call its deleter. */
    private static void expectRefused(String reasonPart, Consumer<MemorySegment> corrupt) {
        try (Tensor t = Tensor.ofFloats(new float[] {1, 2, 3, 4, 5, 6}, 2, 3)) {
            MemorySegment managed = DLPack.export(t);
            corrupt.accept(view(managed));
            QkernException e = assertThrows(QkernException.class, () -> DLPack.importTensor(managed));
            assertTrue(e.getMessage().contains(reasonPart), "\"" + e.getMessage() + "\" lacks \"" + reasonPart + "\"");
            assertEquals(0, DLPack.liveExports(t), "refusal must call the deleter (" + reasonPart + ")");
        }
    }

    @Test
    void unsupportedTensorsAreRefusedAfterTheirDeleterRuns() {
        expectRefused("version 2.0", m -> m.set(ValueLayout.JAVA_INT, VERSION_MAJOR, 2));
        expectRefused("kDLROCM", m -> m.set(ValueLayout.JAVA_INT, DEVICE_TYPE, 10));
        expectRefused("lanes 4", m -> m.set(ValueLayout.JAVA_SHORT, DTYPE_LANES, (short) 4));
        expectRefused("code 5", m -> m.set(ValueLayout.JAVA_BYTE, DTYPE_CODE, (byte) 5));
        expectRefused("ndim 9", m -> m.set(ValueLayout.JAVA_INT, NDIM, 9));
        expectRefused("not aligned", m -> m.set(ValueLayout.JAVA_LONG, BYTE_OFFSET, 2));
        expectRefused("not compact row-major", m -> {
            MemorySegment strides = m.get(ValueLayout.ADDRESS, STRIDES).reinterpret(16);
            strides.setAtIndex(ValueLayout.JAVA_LONG, 0, 4);  // a padded row: Java tensors are contiguous
        });
        expectRefused("strides[1] is negative", m -> {
            MemorySegment strides = m.get(ValueLayout.ADDRESS, STRIDES).reinterpret(16);
            strides.setAtIndex(ValueLayout.JAVA_LONG, 1, -1);
        });
        if (!Qkern.cudaAvailable()) {
            expectRefused("CUDA is unavailable", m -> m.set(ValueLayout.JAVA_INT, DEVICE_TYPE, 2));
        }
        assertThrows(IllegalArgumentException.class, () -> DLPack.importTensor(MemorySegment.NULL));
    }

    // ---- a producer that is not qkern: a Java-built DLManagedTensorVersioned with an upcall deleter ----

    private static final AtomicInteger FOREIGN_DELETES = new AtomicInteger();

    static void foreignDeleter(MemorySegment self) {
        FOREIGN_DELETES.incrementAndGet();
    }

    @Test
    void foreignProducerByteOffsetAndDeleter() throws Exception {
        Linker linker = Linker.nativeLinker();
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment deleter = linker.upcallStub(MethodHandles.lookup().findStatic(DLPackTest.class,
                    "foreignDeleter", MethodType.methodType(void.class, MemorySegment.class)),
                    FunctionDescriptor.ofVoid(ValueLayout.ADDRESS), arena);
            MemorySegment data = arena.allocate(4 * 10, 64);
            for (int i = 0; i < 10; i++) {
                data.setAtIndex(ValueLayout.JAVA_FLOAT, i, i * 1.5f);
            }
            MemorySegment shape = arena.allocateFrom(ValueLayout.JAVA_LONG, 2, 4);
            MemorySegment m = arena.allocate(MANAGED_SIZE, 8);
            m.set(ValueLayout.JAVA_INT, 0, 1);
            m.set(ValueLayout.JAVA_INT, 4, 1);
            m.set(ValueLayout.ADDRESS, DELETER, deleter);
            m.set(ValueLayout.ADDRESS, DATA, data);
            m.set(ValueLayout.JAVA_INT, DEVICE_TYPE, 1);
            m.set(ValueLayout.JAVA_INT, DEVICE_ID, 0);
            m.set(ValueLayout.JAVA_INT, NDIM, 2);
            m.set(ValueLayout.JAVA_BYTE, DTYPE_CODE, (byte) 2);
            m.set(ValueLayout.JAVA_BYTE, DTYPE_BITS, (byte) 32);
            m.set(ValueLayout.JAVA_SHORT, DTYPE_LANES, (short) 1);
            m.set(ValueLayout.ADDRESS, SHAPE, shape);
            m.set(ValueLayout.ADDRESS, STRIDES, MemorySegment.NULL);  // NULL strides: compact row-major
            m.set(ValueLayout.JAVA_LONG, BYTE_OFFSET, 8);              // skip two floats

            FOREIGN_DELETES.set(0);
            Tensor t = DLPack.importTensor(m);
            assertEquals(data.address() + 8, t.address());
            assertArrayEquals(new float[] {3, 4.5f, 6, 7.5f, 9, 10.5f, 12, 13.5f}, t.toFloatArray());
            assertEquals(0, FOREIGN_DELETES.get());
            t.close();
            t.close();
            assertEquals(1, FOREIGN_DELETES.get(), "close calls the producer's deleter once");

            m.set(ValueLayout.JAVA_BYTE, DTYPE_BITS, (byte) 8);  // float8: qkern has no such dtype
            assertThrows(QkernException.class, () -> DLPack.importTensor(m));
            assertEquals(2, FOREIGN_DELETES.get(), "a refusal calls the deleter once");
        }
    }

    @Test
    void nf4TravelsAsItsParts() {
        Random random = new Random();
        float[] values = new float[1000];
        for (int i = 0; i < values.length; i++) {
            values[i] = (float) random.nextGaussian();
        }
        for (boolean doubleQuant : new boolean[] {false, true}) {
            try (Tensor x = Tensor.ofFloats(values, 10, 100);
                    Nf4Tensor q = Nf4.quantize(x, new Nf4.Options(64, doubleQuant))) {
                DLPack.Nf4Parts parts = DLPack.exportNf4(q);
                assertEquals(doubleQuant ? 4 : 2, parts.exports().size());
                try (Nf4Tensor back = DLPack.importNf4(parts); Tensor expected = q.dequantize(DType.F32);
                        Tensor actual = back.dequantize(DType.F32)) {
                    assertEquals(q.quantState(), back.quantState());
                    assertEquals(q.packed().address(), back.packed().address(), "no copy of the codes");
                    assertArrayEquals(expected.toFloatArray(), actual.toFloatArray());
                    assertThrows(IllegalStateException.class, q::close);
                }
            }
        }
    }

    @Test
    void apmmBitPlanesTravelAsTheirParts() {
        float[] w = new float[8 * 300];
        Random random = new Random();
        for (int i = 0; i < w.length; i++) {
            w[i] = (float) random.nextGaussian();
        }
        try (Tensor x = Tensor.ofFloats(w, 8, 300); ApmmMatrix m = Apmm.quantize(x, ApmmFormat.UNSIGNED, 3, 64)) {
            DLPack.ApmmParts parts = DLPack.exportApmm(m);
            assertEquals(4, parts.exports().size(), "planes, sums, scales, zero points");
            assertEquals(3, parts.bits());
            assertEquals(300, parts.k());
            Tensor[] originals = {m.planes(), m.sums(), m.scales(), m.zeroPoints()};
            for (int i = 0; i < originals.length; i++) {
                try (Tensor part = DLPack.importTensor(parts.exports().get(i))) {
                    assertEquals(originals[i].address(), part.address());
                    assertEquals(originals[i].dtype(), part.dtype());
                    assertArrayEquals(originals[i].shape(), part.shape());
                    assertTrue(part.isReadOnly());
                }
            }
        }
    }

    @Test
    void apmmMatrixImportedFromItsPartsMultipliesLikeTheOriginal() {
        Random random = new Random(17);
        float[] w = new float[8 * 300];
        float[] a = new float[3 * 300];
        for (int i = 0; i < w.length; i++) {
            w[i] = (float) random.nextGaussian();
        }
        for (int i = 0; i < a.length; i++) {
            a[i] = (float) random.nextGaussian();
        }
        try (Tensor tw = Tensor.ofFloats(w, 8, 300); Tensor ta = Tensor.ofFloats(a, 3, 300);
                ApmmMatrix m = Apmm.quantize(tw, ApmmFormat.UNSIGNED, 3, 64);
                ApmmMatrix act = Apmm.quantizeActivations(ta, ApmmFormat.SIGNED, 4, 64)) {
            float[] expected;
            try (Tensor out = Apmm.matmul(act, m, DType.F32, ApmmPath.AUTO).out()) {
                expected = out.toFloatArray();
            }
            try (ApmmMatrix back = DLPack.importApmm(DLPack.exportApmm(m))) {
                assertEquals(m.planes().address(), back.planes().address(), "no copy of the planes");
                try (Tensor out = Apmm.matmul(act, back, DType.F32, ApmmPath.AUTO).out()) {
                    assertArrayEquals(expected, out.toFloatArray());
                }
            }
            // parts that do not fit their description are refused and handed back: m can close after
            DLPack.ApmmParts parts = DLPack.exportApmm(m);
            DLPack.ApmmParts wrongBits = new DLPack.ApmmParts(parts.format(), 4, parts.rows(), parts.k(), parts.group(),
                    parts.scaleGroup(), parts.planes(), parts.sums(), parts.scales(), parts.zeroPoints());
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> DLPack.importApmm(wrongBits));
            assertTrue(e.getMessage().contains("planes is U8"), e.getMessage());
            assertEquals(0, DLPack.liveExports(m.planes()), "every part was handed back");
        }
    }

    @Test
    void wrapAddressChecksItsArguments() {
        assertThrows(IllegalArgumentException.class, () -> Tensor.wrapAddress(0, DType.F32, Device.CPU, 4));
        assertThrows(IllegalArgumentException.class, () -> Tensor.wrapAddress(0x1002, DType.F32, Device.CPU, 4));
        assertThrows(IllegalArgumentException.class, () -> Tensor.wrapAddress(0x1000, DType.F32, Device.CPU, -1));
        try (Tensor empty = Tensor.wrapAddress(0, DType.F32, Device.CPU, 0, 3)) {
            assertEquals(0, empty.byteSize());
        }
        AtomicInteger closed = new AtomicInteger();
        Tensor device = Tensor.wrapAddress(0x7f0000001000L, DType.BF16, Device.cuda(0), true, closed::incrementAndGet, 8);
        assertEquals(0x7f0000001000L, device.address(), "a device address round-trips unchanged");
        assertTrue(device.isReadOnly());
        device.close();
        device.close();
        assertEquals(1, closed.get());
    }

    @Test
    void cudaTensorsExchangeOnAGpu() {
        Assumptions.assumeTrue(Qkern.cudaAvailable(), "no usable CUDA device here: " + Qkern.info().cudaStatus());
        try (Tensor t = Tensor.ofFloats(new float[] {1, 2, 3}, 3); Tensor d = t.copyTo(Device.cuda(0))) {
            MemorySegment managed = DLPack.export(d);
            assertEquals(2, view(managed).get(ValueLayout.JAVA_INT, DEVICE_TYPE), "kDLCUDA");
            try (Tensor back = DLPack.importTensor(managed)) {
                assertEquals(Device.cuda(0), back.device());
                assertEquals(d.address(), back.address());
                assertArrayEquals(new float[] {1, 2, 3}, back.toFloatArray());
            }
        }
    }
}
