package io.qkern;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertDoesNotThrow;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.qkern.nf4.Nf4;
import io.qkern.nf4.Nf4Tensor;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.Random;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/** Lifetimes, shape checks, copies and conversions of {@link Tensor}. */
class TensorTest {

    private static void assertMessageContains(Throwable t, String... parts) {
        String m = String.valueOf(t.getMessage());
        for (String p : parts) {
            assertTrue(m.contains(p), () -> "message \"" + m + "\" lacks \"" + p + "\"");
        }
    }

    // ---- lifetime -------------------------------------------------------------------------------

    @Test
    void allocateAndCloseIsIdempotent() {
        Tensor t = Tensor.allocate(DType.F32, Device.CPU, 3, 4);
        assertEquals(12, t.numel());
        assertEquals(48, t.byteSize());
        assertArrayEquals(new long[] {3, 4}, t.shape());
        assertArrayEquals(new long[] {4, 1}, t.strides());
        assertEquals(0, t.address() % 64, "host memory is 64-byte aligned");
        assertFalse(t.isClosed());
        t.close();
        assertTrue(t.isClosed());
        assertDoesNotThrow(t::close);
        assertDoesNotThrow(t::close);
        assertTrue(t.isClosed());
        assertTrue(t.toString().contains("closed"), t.toString());
    }

    @Test
    void useAfterCloseThrowsNamingClosed() {
        Tensor t = Tensor.allocate(DType.F32, Device.CPU, 8);
        t.close();
        for (org.junit.jupiter.api.function.Executable use : new org.junit.jupiter.api.function.Executable[] {
                t::segment, t::address, t::acquire, t::toFloatArray, t::toByteArray, () -> t.fillBytes(0),
                () -> t.copyTo(Device.CPU), () -> {
                    try (Arena a = Arena.ofConfined()) {
                        t.descriptor(a);
                    }
                }}) {
            IllegalStateException e = assertThrows(IllegalStateException.class, use);
            assertMessageContains(e, "closed");
        }
        try (Tensor src = Tensor.allocate(DType.F32, Device.CPU, 8)) {
            assertMessageContains(assertThrows(IllegalStateException.class, () -> t.copyFrom(src)), "closed");
            assertMessageContains(assertThrows(IllegalStateException.class, () -> src.copyFrom(t)), "closed");
        }
    }

    @Test
    void closeWhileLeasedFailsThenSucceedsAfterRelease() {
        Tensor t = Tensor.allocate(DType.U8, Device.CPU, 16);
        Tensor.Lease lease = t.acquire();
        Tensor.Lease second = t.acquire();
        IllegalStateException e = assertThrows(IllegalStateException.class, t::close);
        assertMessageContains(e, "in use");
        assertFalse(t.isClosed());
        t.segment().fill((byte) 7);  // still usable
        lease.close();
        lease.close();  // releasing twice must not release the other lease
        assertThrows(IllegalStateException.class, t::close, "the second lease is still held");
        second.close();
        t.close();
        assertTrue(t.isClosed());
        assertThrows(IllegalStateException.class, t::acquire);
    }

    // ---- wrap ---------------------------------------------------------------------------------------

    @Test
    void wrapChecksSizeAndLiveness() {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment seg = arena.allocate(24, 8);
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> Tensor.wrap(seg, DType.F32, 2, 4));
            assertMessageContains(e, "24", "32");
            assertThrows(IllegalArgumentException.class, () -> Tensor.wrap(null, DType.F32, 2));
            seg.set(ValueLayout.JAVA_FLOAT, 4, 2.5f);
            Tensor w = Tensor.wrap(seg, DType.F32, 2, 3);
            assertEquals(2.5f, w.toFloatArray()[1]);
            w.close();
            assertTrue(seg.scope().isAlive(), "closing a wrapping tensor must not free the caller's memory");
            assertEquals(2.5f, seg.get(ValueLayout.JAVA_FLOAT, 4));
        }
        Arena closed = Arena.ofConfined();
        MemorySegment dead = closed.allocate(16, 8);
        closed.close();
        IllegalStateException e = assertThrows(IllegalStateException.class, () -> Tensor.wrap(dead, DType.F32, 4));
        assertMessageContains(e, "closed");
    }

    @Test
    void wrappedMemoryFreedUnderTheTensorIsDetectedOnAcquire() {
        Arena arena = Arena.ofShared();
        Tensor w = Tensor.wrap(arena.allocate(16, 8), DType.F32, 4);
        arena.close();
        IllegalStateException e = assertThrows(IllegalStateException.class, w::acquire);
        assertMessageContains(e, "arena is closed");
    }

    @Test
    void wrapRefusesHeapSegments() {
        // a heap segment's address() is an offset into a Java array: native code reading it would crash the JVM
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> Tensor.wrap(MemorySegment.ofArray(new byte[4096]).asSlice(64, 512), DType.F32, 128));
        assertMessageContains(e, "heap");
        assertThrows(IllegalArgumentException.class, () -> Tensor.wrap(MemorySegment.ofArray(new float[8]), DType.F32, 8));
    }

    @Test
    void readOnlyMemoryIsReadButNeverWritten(@TempDir Path tmp) throws IOException {
        Path file = tmp.resolve("weights.bin");
        float[] values = new float[128];
        for (int i = 0; i < values.length; i++) {
            values[i] = (i - 50) / 7f;
        }
        byte[] raw = new byte[512];
        MemorySegment.copy(values, 0, MemorySegment.ofArray(raw), ValueLayout.JAVA_FLOAT_UNALIGNED, 0, 128);
        Files.write(file, raw);
        try (FileChannel ch = FileChannel.open(file, StandardOpenOption.READ); Arena arena = Arena.ofShared()) {
            // PROT_READ mapping: a native write here would be a SIGSEGV, killing the JVM
            MemorySegment mapped = ch.map(FileChannel.MapMode.READ_ONLY, 0, 512, arena);
            Tensor ro = Tensor.wrap(mapped, DType.F32, 128);
            assertTrue(ro.isReadOnly());
            assertArrayEquals(values, ro.toFloatArray());
            try (Nf4Tensor q = Nf4.quantize(ro); Tensor src = Tensor.ofFloats(values, 128)) {  // reading is fine
                IllegalArgumentException d = assertThrows(IllegalArgumentException.class, () -> Nf4.dequantizeInto(q, ro));
                assertMessageContains(d, "read-only");
                assertMessageContains(assertThrows(IllegalStateException.class, () -> ro.copyFrom(src)), "read-only");
                assertThrows(RuntimeException.class, () -> ro.fillBytes(0));
                try (Tensor back = q.dequantize()) {  // and the tensors it made are writable
                    assertFalse(back.isReadOnly());
                }
            }
            ro.close();
        }
        assertArrayEquals(raw, Files.readAllBytes(file), "the file is untouched");
        try (Arena arena = Arena.ofConfined(); Tensor out = Tensor.ofFloats(new float[4], 4)) {
            Tensor ro = Tensor.wrap(arena.allocate(16, 16).asReadOnly(), DType.F32, 4);
            assertTrue(ro.isReadOnly());
            assertFalse(out.isReadOnly());
            assertThrows(IllegalStateException.class, () -> ro.copyFrom(out));
        }
    }

    // ---- shape checks -----------------------------------------------------------------------------

    @Test
    void negativeDimensionIsRejected() {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> Tensor.allocate(DType.F32, Device.CPU, 4, -1));
        assertMessageContains(e, "negative", "-1");
        assertThrows(IllegalArgumentException.class, () -> Tensor.allocate(DType.F32, Device.CPU, (long[]) null));
    }

    @Test
    void moreThanEightDimensionsAreRejected() {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> Tensor.allocate(DType.F32, Device.CPU, 1, 1, 1, 1, 1, 1, 1, 1, 1));
        assertMessageContains(e, "8 dimensions");
        try (Tensor eight = Tensor.allocate(DType.F32, Device.CPU, 1, 2, 1, 2, 1, 2, 1, 2)) {
            assertEquals(16, eight.numel());
            assertEquals(8, eight.rank());
        }
    }

    @Test
    void overflowingShapesAreRejectedWithoutAllocating() {
        // 2^62 * 4 elements overflows 64 bits
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> Tensor.allocate(DType.F32, Device.CPU, 1L << 62, 4));
        assertMessageContains(e, "2^63", "[4611686018427387904, 4]");
        // 2^61 elements fit, 2^61 * 8 bytes do not
        IllegalArgumentException bytes = assertThrows(IllegalArgumentException.class,
                () -> Tensor.allocate(DType.F64, Device.CPU, 1L << 61));
        assertMessageContains(bytes, "2^63 bytes", "F64");
        IllegalArgumentException huge = assertThrows(IllegalArgumentException.class,
                () -> Tensor.allocate(DType.F32, Device.CPU, Long.MAX_VALUE, Long.MAX_VALUE));
        assertMessageContains(huge, "2^63");
        // wrap checks the shape the same way
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment seg = arena.allocate(16);
            assertThrows(IllegalArgumentException.class, () -> Tensor.wrap(seg, DType.F32, 1L << 62, 4));
        }
    }

    // ---- copies -------------------------------------------------------------------------------------

    @Test
    void copyToCpuAndCopyFromRoundTripBytes() {
        byte[] data = new byte[3 * 5 * 2];
        new Random(42).nextBytes(data);
        try (Tensor a = Tensor.ofBytes(data, DType.BF16, 3, 5); Tensor b = a.copyTo(Device.CPU)) {
            assertNotSame(a, b);
            assertEquals(DType.BF16, b.dtype());
            assertArrayEquals(new long[] {3, 5}, b.shape());
            assertArrayEquals(data, b.toByteArray());
            assertTrue(a.address() != b.address(), "copyTo makes a new buffer");
            // the copy is independent
            b.fillBytes(0);
            assertArrayEquals(data, a.toByteArray());
            // copyFrom back, across a different shape with the same element count
            try (Tensor c = Tensor.allocate(DType.BF16, Device.CPU, 15)) {
                c.copyFrom(a);
                assertArrayEquals(data, c.toByteArray());
                b.copyFrom(c);
                assertArrayEquals(data, b.toByteArray());
            }
        }
    }

    @Test
    void copyFromRejectsDtypeOrCountMismatch() {
        try (Tensor f32 = Tensor.allocate(DType.F32, Device.CPU, 4);
                Tensor i32 = Tensor.allocate(DType.I32, Device.CPU, 4);
                Tensor f32x5 = Tensor.allocate(DType.F32, Device.CPU, 5)) {
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> f32.copyFrom(i32));
            assertMessageContains(e, "I32", "F32");
            IllegalArgumentException n = assertThrows(IllegalArgumentException.class, () -> f32.copyFrom(f32x5));
            assertMessageContains(n, "[5]", "[4]");
        }
    }

    @Test
    void ofFloatsAndOfBytesCheckTheirLength() {
        assertThrows(IllegalArgumentException.class, () -> Tensor.ofFloats(new float[3], 2, 2));
        assertThrows(IllegalArgumentException.class, () -> Tensor.ofBytes(new byte[3], DType.F16, 2));
        try (Tensor t = Tensor.ofFloats(new float[] {1, -2, 3.5f, Float.NaN}, 2, 2)) {
            assertArrayEquals(new float[] {1, -2, 3.5f, Float.NaN}, t.toFloatArray());
        }
    }

    // ---- conversions ---------------------------------------------------------------------------------

    @Test
    void toFloatArrayWidensEveryF16Exactly() {
        byte[] raw = new byte[65536 * 2];
        for (int i = 0; i < 65536; i++) {
            raw[2 * i] = (byte) i;
            raw[2 * i + 1] = (byte) (i >>> 8);
        }
        try (Tensor t = Tensor.ofBytes(raw, DType.F16, 65536)) {
            float[] f = t.toFloatArray();
            assertEquals(1.0f, f[0x3C00]);
            assertEquals(-2.0f, f[0xC000]);
            assertEquals(65504f, f[0x7BFF]);
            assertEquals(0x1p-24f, f[0x0001], "smallest subnormal");
            assertEquals(Float.POSITIVE_INFINITY, f[0x7C00]);
            assertTrue(Float.isNaN(f[0x7E00]));
            for (int i = 0; i < 65536; i++) {
                float expected = Float.float16ToFloat((short) i);
                assertEquals(Float.floatToRawIntBits(expected), Float.floatToRawIntBits(f[i]),
                        "f16 bits 0x" + Integer.toHexString(i));
            }
        }
    }

    @Test
    void toFloatArrayWidensEveryBf16Exactly() {
        byte[] raw = new byte[65536 * 2];
        for (int i = 0; i < 65536; i++) {
            raw[2 * i] = (byte) i;
            raw[2 * i + 1] = (byte) (i >>> 8);
        }
        try (Tensor t = Tensor.ofBytes(raw, DType.BF16, 256, 256)) {
            float[] f = t.toFloatArray();
            for (int i = 0; i < 65536; i++) {
                assertEquals(i << 16, Float.floatToRawIntBits(f[i]), "bf16 bits 0x" + Integer.toHexString(i));
            }
        }
    }

    @Test
    void toFloatArrayRejectsIntegerTensors() {
        try (Tensor t = Tensor.allocate(DType.I32, Device.CPU, 2)) {
            IllegalStateException e = assertThrows(IllegalStateException.class, t::toFloatArray);
            assertMessageContains(e, "I32");
        }
    }

    // ---- devices --------------------------------------------------------------------------------------

    @Test
    void cudaAllocationOnAMachineWithoutCudaReportsWhy() {
        org.junit.jupiter.api.Assumptions.assumeFalse(Qkern.cudaAvailable(), "this test is for machines without CUDA");
        QkernException e = assertThrows(QkernException.class, () -> Tensor.allocate(DType.F32, Device.cuda(0), 16));
        assertEquals(QkernException.Status.BACKEND_UNAVAILABLE, e.status());
        assertEquals("qk_malloc", e.function());
        assertMessageContains(e, "CUDA is unavailable");
        // the native reason is the one `qkern info` reports
        String reason = Qkern.info().cudaStatus();
        assertFalse(reason.isBlank());
        assertMessageContains(e, reason);
        // copying a CPU tensor there fails the same way and leaks nothing
        try (Tensor t = Tensor.allocate(DType.F32, Device.CPU, 4)) {
            QkernException c = assertThrows(QkernException.class, () -> t.copyTo(Device.cuda(0)));
            assertEquals(QkernException.Status.BACKEND_UNAVAILABLE, c.status());
            assertFalse(t.isClosed());
        }
    }

    @ParameterizedTest
    @ValueSource(strings = {"cuda:x", "cuda:", "tpu", "cuda:1.5", "cuda:99999999999", ""})
    void deviceParseRejectsGarbage(String text) {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> Device.parse(text));
        assertMessageContains(e, "\"" + text + "\"");
    }

    @Test
    void deviceParseAcceptsTheDocumentedForms() {
        assertEquals(Device.CPU, Device.parse("cpu"));
        assertEquals(Device.CPU, Device.parse(" CPU "));
        assertEquals(Device.cuda(0), Device.parse("cuda"));
        assertEquals(Device.cuda(3), Device.parse("cuda:3"));
        assertEquals("cuda:3", Device.cuda(3).toString());
        assertThrows(IllegalArgumentException.class, () -> new Device(Device.Kind.CPU, 1));
        assertThrows(IllegalArgumentException.class, () -> Device.cuda(-1));
        assertMessageContains(assertThrows(IllegalArgumentException.class, () -> Device.parse("cuda:-1")), "-1");
    }

    // ---- zero elements ------------------------------------------------------------------------------------

    @Test
    void zeroElementTensorsWork() {
        try (Tensor z = Tensor.allocate(DType.F32, Device.CPU, 0, 7)) {
            assertEquals(0, z.numel());
            assertEquals(0, z.byteSize());
            assertEquals(0, z.segment().byteSize());
            assertArrayEquals(new float[0], z.toFloatArray());
            assertArrayEquals(new byte[0], z.toByteArray());
            z.fillBytes(0xFF);
            try (Tensor c = z.copyTo(Device.CPU); Tensor other = Tensor.allocate(DType.F32, Device.CPU, 7, 0)) {
                assertArrayEquals(new long[] {0, 7}, c.shape());
                assertArrayEquals(new float[0], c.toFloatArray());
                other.copyFrom(z);
                assertArrayEquals(new float[0], other.toFloatArray());
            }
        }
        try (Tensor empty = Tensor.ofFloats(new float[0], 0)) {
            assertEquals(0, empty.toFloatArray().length);
        }
        try (Tensor scalar = Tensor.ofFloats(new float[] {4f})) {
            assertEquals(0, scalar.rank());
            assertEquals(1, scalar.numel());
            assertArrayEquals(new float[] {4f}, scalar.toFloatArray());
        }
    }
}
