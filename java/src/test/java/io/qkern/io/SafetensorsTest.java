package io.qkern.io;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.qkern.DType;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.net.URISyntaxException;
import java.net.URL;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.NoSuchElementException;
import java.util.Random;
import java.util.stream.Stream;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class SafetensorsTest {

    @TempDir
    Path dir;

    private static final ValueLayout.OfFloat F32_LE =
            ValueLayout.JAVA_FLOAT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);

    static byte[] randomBytes(Random random, long n) {
        byte[] b = new byte[(int) n];
        random.nextBytes(b);
        return b;
    }

    /** The whole file {@code 8-byte length + header + data}, as a safetensors writer lays it out. */
    static byte[] fileBytes(byte[] header, byte[] data) {
        return ByteBuffer.allocate(8 + header.length + data.length).order(ByteOrder.LITTLE_ENDIAN)
                .putLong(header.length).put(header).put(data).array();
    }

    static byte[] fileBytes(String header, byte[] data) {
        return fileBytes(header.getBytes(StandardCharsets.UTF_8), data);
    }

    private static List<String> leftovers(Path directory) throws IOException {
        try (Stream<Path> files = Files.list(directory)) {
            return files.map(p -> p.getFileName().toString()).filter(n -> n.contains(".tmp-")).toList();
        }
    }

    // ---- round trips ----

    @Test
    void roundTripsTensorsOfEveryDType() throws IOException {
        Random random = new Random(1);
        Path file = dir.resolve("all.safetensors");
        SafetensorsWriter writer = SafetensorsWriter.create(file);
        Map<String, byte[]> expected = new LinkedHashMap<>();
        Map<String, long[]> shapes = new LinkedHashMap<>();
        for (DType dtype : DType.values()) {
            for (long[] shape : List.of(new long[] {5}, new long[] {2, 3}, new long[] {}, new long[] {1, 2, 1, 3})) {
                String name = "layer." + dtype.safetensorsName().toLowerCase() + ".r" + shape.length;
                byte[] bytes = randomBytes(random, TensorInfo.elementCount(shape) * dtype.byteSize());
                writer.add(name, dtype, shape, MemorySegment.ofArray(bytes));
                expected.put(name, bytes);
                shapes.put(name, shape);
            }
        }
        writer.write();

        try (SafetensorsFile st = SafetensorsFile.open(file)) {
            assertEquals(file, st.path());
            assertEquals(new ArrayList<>(expected.keySet()), st.names());
            assertEquals(Map.of(), st.metadata());
            long offset = 0;
            for (TensorInfo t : st.tensors()) {
                assertEquals(offset, t.begin(), "tensors are contiguous in the order they were added");
                offset = t.end();
                assertArrayEquals(shapes.get(t.name()), t.shape());
                assertEquals(DType.fromSafetensorsName(t.name().split("\\.")[1].toUpperCase()), t.dtype());
                assertEquals(t.numel() * t.dtype().byteSize(), t.byteSize());
                assertTrue(st.contains(t.name()));
                assertEquals(t, st.info(t.name()));
                MemorySegment data = st.data(t.name());
                assertTrue(data.isReadOnly());
                assertArrayEquals(expected.get(t.name()), data.toArray(ValueLayout.JAVA_BYTE), t.name());
            }
            assertFalse(st.contains("missing"));
        }
    }

    @Test
    void writesTheHeaderTheRustCrateWouldWrite() throws IOException {
        Path file = dir.resolve("layout.safetensors");
        SafetensorsWriter.create(file)
                .metadata(Map.of("format", "pt"))
                .add("a", DType.F32, new long[] {2}, MemorySegment.ofArray(new float[] {1f, 2f}))
                .add("b", DType.U8, new long[] {3}, MemorySegment.ofArray(new byte[] {7, 8, 9}))
                .write();
        byte[] bytes = Files.readAllBytes(file);
        String json = "{\"__metadata__\":{\"format\":\"pt\"},\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":"
                + "[0,8]},\"b\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[8,11]}}";
        String padded = json + " ".repeat((8 - json.length() % 8) % 8);
        byte[] data = ByteBuffer.allocate(11).order(ByteOrder.LITTLE_ENDIAN).putFloat(1f).putFloat(2f)
                .put(new byte[] {7, 8, 9}).array();
        assertArrayEquals(fileBytes(padded, data), bytes);
        assertEquals(0, (8 + padded.length()) % 8, "data section is 8-byte aligned");
    }

    @Test
    void roundTripsMetadata() throws IOException {
        Map<String, String> metadata = new LinkedHashMap<>();
        metadata.put("format", "pt");
        metadata.put("z-first", "order is kept");
        metadata.put("unicode ☃ é 😀", "\"quotes\" \\ and\nnewlines\t\u0001");
        metadata.put("", "");
        Path file = dir.resolve("meta.safetensors");
        SafetensorsWriter.create(file).metadata(metadata).write();
        try (SafetensorsFile st = SafetensorsFile.open(file)) {
            assertEquals(metadata, st.metadata());
            assertEquals(new ArrayList<>(metadata.keySet()), new ArrayList<>(st.metadata().keySet()));
            assertThrows(UnsupportedOperationException.class, () -> st.metadata().put("x", "y"));
        }
    }

    @Test
    void writesAndReadsAFileWithoutTensors() throws IOException {
        Path file = dir.resolve("empty.safetensors");
        SafetensorsWriter.create(file).write();
        assertArrayEquals(fileBytes("{}      ", new byte[0]), Files.readAllBytes(file));
        try (SafetensorsFile st = SafetensorsFile.open(file)) {
            assertEquals(List.of(), st.tensors());
            assertEquals(List.of(), st.names());
            assertEquals(Map.of(), st.metadata());
        }
    }

    @Test
    void handlesZeroElementTensors() throws IOException {
        Path file = dir.resolve("zeros.safetensors");
        SafetensorsWriter.create(file)
                .add("empty", DType.F32, new long[] {0}, MemorySegment.NULL)
                .add("x", DType.I16, new long[] {2}, MemorySegment.ofArray(new short[] {1, 2}))
                .add("empty2d", DType.BF16, new long[] {4, 0}, MemorySegment.ofArray(new byte[0]))
                .add("empty3d", DType.F64, new long[] {0, 0, 3}, MemorySegment.NULL)
                .write();
        try (SafetensorsFile st = SafetensorsFile.open(file)) {
            assertEquals(List.of("empty", "x", "empty2d", "empty3d"), st.names());
            assertEquals(0, st.info("empty2d").numel());
            assertEquals(4, st.info("empty2d").begin());
            assertEquals(0, st.data("empty3d").byteSize());
            assertEquals(2, st.data("x").get(ValueLayout.JAVA_SHORT_UNALIGNED, 2));
        }
        // Empty tensors may sit anywhere, even inside another tensor's bytes.
        String header = "{\"w\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]},"
                + "\"e\":{\"dtype\":\"F32\",\"shape\":[0,5],\"data_offsets\":[4,4]},"
                + "\"f\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]}}";
        Files.write(file, fileBytes(header, new byte[8]));
        try (SafetensorsFile st = SafetensorsFile.open(file)) {
            assertEquals(List.of("w", "e", "f"), st.names());
        }
    }

    @Test
    void readsAFileLaidOutByPythonSafetensors() throws IOException {
        // safetensors.torch.save_file({"weight": torch.arange(6.).reshape(2, 3), "bias": torch.tensor([1., 2.],
        // dtype=torch.float16), "step": torch.tensor(7)}, f, metadata={"format": "pt"}) writes compact JSON,
        // metadata first, tensors sorted by dtype alignment (descending) then name, header padded to 8 bytes.
        String header = "{\"__metadata__\":{\"format\":\"pt\"},\"step\":{\"dtype\":\"I64\",\"shape\":[],"
                + "\"data_offsets\":[0,8]},\"weight\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[8,32]},\"bias\":{\"dtype\":"
                + "\"F16\",\"shape\":[2],\"data_offsets\":[32,36]}}  ";
        ByteBuffer data = ByteBuffer.allocate(36).order(ByteOrder.LITTLE_ENDIAN).putLong(7);
        for (int i = 0; i < 6; i++) {
            data.putFloat(i);
        }
        data.putShort((short) 0x3C00).putShort((short) 0x4000); // 1.0 and 2.0 in half precision
        Path file = dir.resolve("python.safetensors");
        Files.write(file, fileBytes(header, data.array()));

        try (SafetensorsFile st = SafetensorsFile.open(file)) {
            assertEquals(Map.of("format", "pt"), st.metadata());
            assertEquals(List.of("step", "weight", "bias"), st.names());
            assertEquals(new TensorInfo("weight", DType.F32, new long[] {2, 3}, 8, 32), st.info("weight"));
            assertEquals(0, st.info("step").rank());
            assertEquals(1, st.info("step").numel());
            assertEquals(7L, st.data("step").get(ValueLayout.JAVA_LONG_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN),
                    0));
            MemorySegment w = st.data("weight");
            for (int i = 0; i < 6; i++) {
                assertEquals(i, w.getAtIndex(F32_LE, i));
            }
            assertEquals(1.0f, Float.float16ToFloat(st.data("bias").get(ValueLayout.JAVA_SHORT_UNALIGNED, 0)));
            assertEquals(2.0f, Float.float16ToFloat(st.data("bias").get(ValueLayout.JAVA_SHORT_UNALIGNED, 2)));

            // Writing the same tensors in the same order reproduces the file byte for byte.
            Path copy = dir.resolve("copy.safetensors");
            SafetensorsWriter writer = SafetensorsWriter.create(copy).metadata(st.metadata());
            for (TensorInfo t : st.tensors()) {
                writer.add(t.name(), t.dtype(), t.shape(), st.data(t.name()));
            }
            writer.write();
            assertArrayEquals(Files.readAllBytes(file), Files.readAllBytes(copy));
        }
    }

    @Test
    void ordersTensorsByOffsetAndAllowsGapsAndPadding() throws IOException {
        String header = "{\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[8,10]},"
                + "\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}" + " ".repeat(13);
        Path file = dir.resolve("gaps.safetensors");
        byte[] data = {1, 2, 3, 4, 0, 0, 0, 0, 5, 6, 0, 0};
        Files.write(file, fileBytes(header, data));
        try (SafetensorsFile st = SafetensorsFile.open(file)) {
            assertEquals(List.of("a", "b"), st.names());
            assertArrayEquals(new byte[] {5, 6}, st.data("b").toArray(ValueLayout.JAVA_BYTE));
        }
    }

    @Test
    void reportsMissingTensorsByNameAndFile() throws IOException {
        Path file = dir.resolve("one.safetensors");
        SafetensorsWriter.create(file).add("x", DType.U8, new long[] {1}, MemorySegment.ofArray(new byte[1])).write();
        try (SafetensorsFile st = SafetensorsFile.open(file)) {
            NoSuchElementException e = assertThrows(NoSuchElementException.class, () -> st.info("x.weight"));
            assertTrue(e.getMessage().contains("\"x.weight\"") && e.getMessage().contains(file.toString()),
                    e.getMessage());
            assertThrows(NoSuchElementException.class, () -> st.data("y"));
        }
    }

    @Test
    void returnsReadOnlyDataAndCopiesOfShapes() throws IOException {
        Path file = dir.resolve("ro.safetensors");
        SafetensorsWriter.create(file).add("x", DType.F32, new long[] {2}, MemorySegment.ofArray(new float[2]))
                .write();
        try (SafetensorsFile st = SafetensorsFile.open(file)) {
            MemorySegment data = st.data("x");
            assertThrows(IllegalArgumentException.class, () -> data.set(ValueLayout.JAVA_BYTE, 0, (byte) 1));
            st.info("x").shape()[0] = 99;
            assertArrayEquals(new long[] {2}, st.info("x").shape());
            assertThrows(UnsupportedOperationException.class, () -> st.tensors().clear());
            assertThrows(UnsupportedOperationException.class, () -> st.names().clear());
        }
    }

    @Test
    void closeIsIdempotentAndDisablesEverything() throws IOException {
        Path file = dir.resolve("closed.safetensors");
        SafetensorsWriter.create(file).add("x", DType.U8, new long[] {4}, MemorySegment.ofArray(new byte[4]))
                .write();
        SafetensorsFile st = SafetensorsFile.open(file);
        MemorySegment data = st.data("x");
        st.close();
        st.close();
        List<Runnable> calls = List.of(st::path, st::metadata, st::tensors, st::names, () -> st.contains("x"),
                () -> st.info("x"), () -> st.data("x"));
        for (Runnable call : calls) {
            IllegalStateException e = assertThrows(IllegalStateException.class, call::run);
            assertTrue(e.getMessage().contains("is closed"), e.getMessage());
        }
        assertThrows(IllegalStateException.class, () -> data.get(ValueLayout.JAVA_BYTE, 0));
    }

    @Test
    void tensorInfoIsConsistentByConstruction() {
        long[] shape = {3, 4};
        TensorInfo t = new TensorInfo("w", DType.F32, shape, 16, 64);
        shape[0] = 1;
        assertArrayEquals(new long[] {3, 4}, t.shape());
        assertEquals(12, t.numel());
        assertEquals(48, t.byteSize());
        assertEquals(t, new TensorInfo("w", DType.F32, new long[] {3, 4}, 16, 64));
        assertEquals(t.hashCode(), new TensorInfo("w", DType.F32, new long[] {3, 4}, 16, 64).hashCode());
        assertTrue(t.toString().contains("[3, 4]"), t.toString());
        assertThrows(IllegalArgumentException.class, () -> new TensorInfo("w", DType.F32, shape, 0, 40));
        assertThrows(IllegalArgumentException.class, () -> new TensorInfo("", DType.U8, new long[] {1}, 0, 1));
        assertThrows(IllegalArgumentException.class, () -> new TensorInfo("w", DType.U8, new long[] {-1}, 0, 0));
        assertThrows(IllegalArgumentException.class, () -> new TensorInfo("w", DType.U8, new long[] {1}, 2, 1));
        assertThrows(ArithmeticException.class,
                () -> new TensorInfo("w", DType.U8, new long[] {1L << 62, 4, 0}, 0, 0));
    }

    // ---- writer ----

    @Test
    void writesHeapSegmentsOfAnyArrayType() throws IOException {
        float[] floats = {1.5f, -2f, 3.25f};
        long[] longs = {Long.MIN_VALUE, 42};
        Path file = dir.resolve("heap.safetensors");
        SafetensorsWriter.create(file)
                .add("f", DType.F32, new long[] {3}, MemorySegment.ofArray(floats))
                .add("l", DType.I64, new long[] {2}, MemorySegment.ofArray(longs))
                .add("slice", DType.F32, new long[] {1}, MemorySegment.ofArray(floats).asSlice(4, 4))
                .write();
        try (SafetensorsFile st = SafetensorsFile.open(file)) {
            assertArrayEquals(floats, st.data("f").toArray(F32_LE));
            assertArrayEquals(longs,
                    st.data("l").toArray(ValueLayout.JAVA_LONG_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN)));
            assertEquals(-2f, st.data("slice").get(F32_LE, 0));
        }
    }

    @Test
    void writesLargeTensorsInChunksAndReportsProgress() throws IOException {
        long size = SafetensorsWriter.CHUNK_BYTES + 24;
        Path file = dir.resolve("large.safetensors");
        List<Long> progress = new ArrayList<>();
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment big = arena.allocate(size);
            for (long i = 0; i < size; i += 4093) {
                big.set(ValueLayout.JAVA_BYTE, i, (byte) (i * 31 + 7));
            }
            big.set(ValueLayout.JAVA_BYTE, size - 1, (byte) 0x5A);
            SafetensorsWriter.create(file)
                    .add("small", DType.U8, new long[] {3}, MemorySegment.ofArray(new byte[] {1, 2, 3}))
                    .add("big", DType.U8, new long[] {size}, big)
                    .progress(progress::add)
                    .write();
            assertEquals(List.of(3L, 3 + SafetensorsWriter.CHUNK_BYTES, 3 + size), progress);
            try (SafetensorsFile st = SafetensorsFile.open(file)) {
                assertEquals(-1, st.data("big").mismatch(big));
            }
        }
    }

    @Test
    void replacesAnExistingFileWhileOldMappingsStayValid() throws IOException {
        Path file = dir.resolve("model.safetensors");
        SafetensorsWriter.create(file).add("v", DType.U8, new long[] {2}, MemorySegment.ofArray(new byte[] {1, 2}))
                .write();
        try (SafetensorsFile old = SafetensorsFile.open(file)) {
            // Rewriting a file from its own mapping is safe: the new file is a different inode.
            SafetensorsWriter.create(file).add("v2", DType.U8, new long[] {2}, old.data("v")).write();
            assertArrayEquals(new byte[] {1, 2}, old.data("v").toArray(ValueLayout.JAVA_BYTE));
        }
        try (SafetensorsFile st = SafetensorsFile.open(file)) {
            assertEquals(List.of("v2"), st.names());
        }
        assertEquals(List.of(), leftovers(dir));
    }

    @Test
    void rejectsInvalidTensorsNamingThem() {
        SafetensorsWriter w = SafetensorsWriter.create(dir.resolve("bad.safetensors"));
        MemorySegment forty = MemorySegment.ofArray(new byte[40]);
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> w.add("x.weight", DType.F32, new long[] {3, 4}, forty));
        assertTrue(e.getMessage().contains("\"x.weight\"") && e.getMessage().contains("needs 48 bytes")
                && e.getMessage().contains("has 40"), e.getMessage());
        w.add("x.weight", DType.U8, new long[] {40}, forty);
        e = assertThrows(IllegalArgumentException.class, () -> w.add("x.weight", DType.U8, new long[] {40}, forty));
        assertTrue(e.getMessage().contains("\"x.weight\"") && e.getMessage().contains("already"), e.getMessage());
        assertThrows(IllegalArgumentException.class, () -> w.add("", DType.U8, new long[] {40}, forty));
        assertThrows(IllegalArgumentException.class, () -> w.add("__metadata__", DType.U8, new long[] {40}, forty));
        assertThrows(IllegalArgumentException.class, () -> w.add("bad\ud800", DType.U8, new long[] {40}, forty));
        e = assertThrows(IllegalArgumentException.class,
                () -> w.add("neg", DType.U8, new long[] {-40, -1}, forty));
        assertTrue(e.getMessage().contains("negative"), e.getMessage());
        assertThrows(IllegalArgumentException.class,
                () -> w.add("huge", DType.F64, new long[] {1L << 40, 1L << 40}, forty));
        assertThrows(IllegalArgumentException.class,
                () -> w.add("rank17", DType.U8, new long[17], MemorySegment.NULL));
        assertThrows(IllegalArgumentException.class, () -> w.metadata(Map.of("k", "lone \udc00")));
        Map<String, String> withNull = new LinkedHashMap<>();
        withNull.put("k", null);
        assertThrows(IllegalArgumentException.class, () -> w.metadata(withNull));
    }

    // ---- writer atomicity ----

    private Path existingTarget() throws IOException {
        Path target = dir.resolve("target.safetensors");
        SafetensorsWriter.create(target).add("old", DType.U8, new long[] {1}, MemorySegment.ofArray(new byte[1]))
                .write();
        return target;
    }

    @Test
    void failingMidwayLeavesTheTargetAndNoTempFile() throws IOException {
        Path target = existingTarget();
        byte[] before = Files.readAllBytes(target);
        SafetensorsWriter writer = SafetensorsWriter.create(target)
                .add("a", DType.U8, new long[] {16}, MemorySegment.ofArray(new byte[16]))
                .add("b", DType.U8, new long[] {16}, MemorySegment.ofArray(new byte[16]))
                .progress(written -> {
                    if (written > 16) {
                        throw new IllegalStateException("disk full (simulated)");
                    }
                });
        IllegalStateException e = assertThrows(IllegalStateException.class, writer::write);
        assertEquals("disk full (simulated)", e.getMessage());
        assertArrayEquals(before, Files.readAllBytes(target));
        assertEquals(List.of(), leftovers(dir));
    }

    @Test
    void aClosedSegmentFailsTheWriteCleanly() throws IOException {
        Path target = existingTarget();
        byte[] before = Files.readAllBytes(target);
        MemorySegment dead;
        try (Arena arena = Arena.ofConfined()) {
            dead = arena.allocate(64);
        }
        SafetensorsWriter writer = SafetensorsWriter.create(target)
                .add("fine", DType.F32, new long[] {4}, MemorySegment.ofArray(new float[4]))
                .add("dead", DType.F32, new long[] {16}, dead);
        assertThrows(IllegalStateException.class, writer::write);
        assertArrayEquals(before, Files.readAllBytes(target));
        assertEquals(List.of(), leftovers(dir));
    }

    @Test
    void aFailedRenameLeavesNoTempFile() throws IOException {
        Path target = dir.resolve("occupied");
        Files.createDirectory(target);
        Files.writeString(target.resolve("keep.txt"), "keep");
        SafetensorsWriter writer = SafetensorsWriter.create(target)
                .add("x", DType.U8, new long[] {1}, MemorySegment.ofArray(new byte[1]));
        assertThrows(IOException.class, writer::write);
        assertEquals("keep", Files.readString(target.resolve("keep.txt")));
        assertEquals(List.of(), leftovers(dir));
    }

    @Test
    void aReadOnlyDirectoryFailsBeforeTouchingTheTarget() throws IOException {
        Path target = existingTarget();
        byte[] before = Files.readAllBytes(target);
        Files.setPosixFilePermissions(dir, PosixFilePermissions.fromString("r-x------"));
        try {
            Assumptions.assumeFalse(Files.isWritable(dir), "running as root: directory permissions are ignored");
            SafetensorsWriter writer = SafetensorsWriter.create(target)
                    .add("x", DType.U8, new long[] {1}, MemorySegment.ofArray(new byte[1]));
            assertThrows(IOException.class, writer::write);
            assertArrayEquals(before, Files.readAllBytes(target));
            assertEquals(List.of(), leftovers(dir));
        } finally {
            Files.setPosixFilePermissions(dir, PosixFilePermissions.fromString("rwx------"));
        }
    }

    // ---- golden files written by Python (bitsandbytes + safetensors) ----

    @Test
    void readsAndReproducesTheGoldenFiles() throws IOException, URISyntaxException {
        URL root = SafetensorsTest.class.getResource("/golden/nf4/");
        Assumptions.assumeTrue(root != null && root.getProtocol().equals("file"),
                "golden files not on the test classpath under /golden/nf4/");
        List<Path> files;
        try (Stream<Path> list = Files.list(Path.of(root.toURI()))) {
            files = list.filter(p -> p.toString().endsWith(".safetensors")).sorted().toList();
        }
        Assumptions.assumeFalse(files.isEmpty(), "no .safetensors files under /golden/nf4/");
        int quantStates = 0;
        for (Path file : files) {
            byte[] original = Files.readAllBytes(file);
            try (SafetensorsFile st = SafetensorsFile.open(file)) {
                assertFalse(st.tensors().isEmpty(), file.toString());
                Path copy = dir.resolve(file.getFileName());
                SafetensorsWriter writer = SafetensorsWriter.create(copy).metadata(st.metadata());
                long expectedBegin = 0;
                for (TensorInfo t : st.tensors()) {
                    assertEquals(expectedBegin, t.begin(), file + ": Python writes tensors contiguously");
                    expectedBegin = t.end();
                    writer.add(t.name(), t.dtype(), t.shape(), st.data(t.name()));
                    if (t.name().endsWith(".quant_state.bitsandbytes__nf4")) {
                        // bitsandbytes stores json.dumps(quant_state) as the tensor's bytes.
                        String json = new String(st.data(t.name()).toArray(ValueLayout.JAVA_BYTE),
                                StandardCharsets.UTF_8);
                        Map<?, ?> state = (Map<?, ?>) Json.parse(json, json.length());
                        assertEquals("nf4", state.get("quant_type"), file.toString());
                        assertEquals(json, Json.writePython(state), file + ": writePython matches json.dumps");
                        quantStates++;
                    }
                }
                writer.write();
                assertArrayEquals(original, Files.readAllBytes(copy), file + ": rewritten byte for byte");
            }
        }
        assertTrue(quantStates > 0, "the nf4 golden files hold quant states");
    }
}
