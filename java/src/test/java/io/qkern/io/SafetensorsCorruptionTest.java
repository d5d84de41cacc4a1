package io.qkern.io;

import static io.qkern.io.SafetensorsTest.fileBytes;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTimeoutPreemptively;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import io.qkern.DType;
import java.io.IOException;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.Random;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Hostile and damaged files: opening one either yields fully valid tensors or a SafetensorsFormatException. */
class SafetensorsCorruptionTest {

    @TempDir
    Path dir;

    private Path file;
    private byte[] valid;
    private int headerEnd;

    @BeforeEach
    void writeValidFile() throws IOException {
        file = dir.resolve("model.safetensors");
        Random random = new Random(3);
        SafetensorsWriter.create(file)
                .metadata(Map.of("format", "pt"))
                .add("embed.weight", DType.F32, new long[] {2, 3}, segment(random, 24))
                .add("norm", DType.BF16, new long[] {3}, segment(random, 6))
                .add("empty", DType.I32, new long[] {0, 4}, MemorySegment.NULL)
                .add("step", DType.I64, new long[] {}, segment(random, 8))
                .add("mask", DType.BOOL, new long[] {5}, segment(random, 5))
                .write();
        valid = Files.readAllBytes(file);
        headerEnd = 8 + (int) ByteBuffer.wrap(valid).order(ByteOrder.LITTLE_ENDIAN).getLong(0);
    }

    private static MemorySegment segment(Random random, int n) {
        return MemorySegment.ofArray(SafetensorsTest.randomBytes(random, n));
    }

    /**
     * Opens {@code bytes} as a file. Returns false if it was rejected with a SafetensorsFormatException naming the
     * file; if it opened, checks every tensor independently of the reader and reads all of its bytes. Any other
     * outcome fails the test.
     */
    private boolean opens(byte[] bytes, String what) throws IOException {
        Files.write(file, bytes);
        SafetensorsFile st;
        try {
            st = SafetensorsFile.open(file);
        } catch (SafetensorsFormatException e) {
            assertTrue(e.getMessage().startsWith(file + ": "), e.getMessage());
            assertEquals(file, e.file());
            return false;
        } catch (RuntimeException | Error e) {
            throw new AssertionError(what + ": unexpected " + e, e);
        }
        try (st) {
            long dataLength = bytes.length - 8 - ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN).getLong(0);
            long previousEnd = 0;
            for (TensorInfo t : st.tensors()) {
                assertFalse(t.name().isEmpty(), what);
                assertTrue(0 <= t.begin() && t.begin() <= t.end() && t.end() <= dataLength, what + ": " + t);
                assertEquals(t.byteSize(), t.numel() * t.dtype().byteSize(), what + ": " + t);
                if (t.byteSize() > 0) {
                    assertTrue(t.begin() >= previousEnd, what + ": overlap at " + t);
                    previousEnd = t.end();
                }
                byte[] data = st.data(t.name()).toArray(ValueLayout.JAVA_BYTE);
                assertEquals(t.byteSize(), data.length, what);
            }
            return true;
        }
    }

    private SafetensorsFormatException rejected(byte[] bytes) throws IOException {
        Files.write(file, bytes);
        SafetensorsFormatException e = assertThrows(SafetensorsFormatException.class, () -> SafetensorsFile.open(file));
        assertTrue(e.getMessage().startsWith(file + ": "), e.getMessage());
        return e;
    }

    /** Opens a file with this header and {@code dataBytes} zero bytes of data; asserts the message parts. */
    private SafetensorsFormatException rejected(String header, int dataBytes, String... messageParts)
            throws IOException {
        SafetensorsFormatException e = rejected(fileBytes(header, new byte[dataBytes]));
        for (String part : messageParts) {
            assertTrue(e.getMessage().contains(part), "expected \"" + part + "\" in: " + e.getMessage());
        }
        assertTrue(e.getMessage().length() < 1000, "messages stay short: " + e.getMessage().length());
        return e;
    }

    private static String entry(String name, String dtype, String shape, String offsets) {
        return "\"" + name + "\":{\"dtype\":" + dtype + ",\"shape\":" + shape + ",\"data_offsets\":" + offsets + "}";
    }

    private static byte[] withHeaderLength(byte[] bytes, long headerLength) {
        byte[] copy = bytes.clone();
        ByteBuffer.wrap(copy).order(ByteOrder.LITTLE_ENDIAN).putLong(0, headerLength);
        return copy;
    }

    // ---- damaged files ----

    @Test
    void theUndamagedFileOpens() throws IOException {
        assertTrue(opens(valid, "valid"));
    }

    @Test
    void everyTruncationIsRejected() throws IOException {
        for (int length = 0; length < valid.length; length++) {
            assertFalse(opens(Arrays.copyOf(valid, length), "truncated to " + length), "truncated to " + length);
        }
    }

    @Test
    void everySingleBitFlipInTheHeaderIsHandled() throws IOException {
        int opened = 0;
        for (int i = 0; i < headerEnd; i++) {
            for (int bit = 0; bit < 8; bit++) {
                byte[] bytes = valid.clone();
                bytes[i] ^= (byte) (1 << bit);
                if (opens(bytes, "bit " + bit + " of byte " + i)) {
                    opened++;
                }
            }
        }
        // Flips inside names or metadata values keep the file valid; most others must not.
        assertTrue(opened > 0 && opened < headerEnd * 8, "opened " + opened);
    }

    @Test
    void randomCorruptionsAreHandled() throws IOException {
        Random random = new Random(20240229);
        // Bytes that keep the header looking like JSON make it past the parser more often.
        byte[] jsonish = "{}[]\":,0123456789-.eE \\\"tfnu".getBytes(StandardCharsets.US_ASCII);
        int rounds = 3000;
        int opened = 0;
        for (int round = 0; round < rounds; round++) {
            byte[] bytes = valid.clone();
            int changes = 1 + random.nextInt(4);
            for (int c = 0; c < changes; c++) {
                int at = random.nextInt(headerEnd);
                bytes[at] = random.nextBoolean() ? (byte) random.nextInt(256) : jsonish[random.nextInt(jsonish.length)];
            }
            if (opens(bytes, "round " + round)) {
                opened++;
            }
        }
        assertTrue(opened > 0 && opened < rounds, "opened " + opened);
    }

    // ---- lying header lengths ----

    @Test
    void rejectsImpossibleHeaderLengths() throws IOException {
        assertTrue(rejected(withHeaderLength(valid, Long.MAX_VALUE)).getMessage()
                .contains("header length 9223372036854775807 exceeds the limit"));
        assertTrue(rejected(withHeaderLength(valid, -1)).getMessage()
                .contains("header length 18446744073709551615 exceeds the limit"));
        assertTrue(rejected(withHeaderLength(valid, 1L << 40)).getMessage().contains("exceeds the limit"));
        assertTrue(rejected(withHeaderLength(valid, SafetensorsFile.MAX_HEADER_BYTES + 1)).getMessage()
                .contains("exceeds the limit of 104857600 bytes"));
        assertTrue(rejected(withHeaderLength(valid, valid.length - 7)).getMessage()
                .contains("larger than the " + (valid.length - 8) + " bytes that follow"));
        assertTrue(rejected(withHeaderLength(valid, 0)).getMessage().contains("header length is 0"));
        assertTrue(rejected(new byte[7]).getMessage().contains("too short"));
        assertTrue(rejected(new byte[0]).getMessage().contains("0 bytes long"));
    }

    @Test
    void aHeaderLengthWithinTheFileButTooShortForTheJsonIsRejected() throws IOException {
        SafetensorsFormatException e = rejected(withHeaderLength(valid, headerEnd - 8 - 10));
        assertTrue(e.getMessage().contains("not valid JSON"), e.getMessage());
    }

    // ---- lying tensor entries ----

    @Test
    void rejectsShapesWhoseSizeOverflows() throws IOException {
        rejected("{" + entry("big", "\"U8\"", "[4294967296,4294967296]", "[0,0]") + "}", 0,
                "tensor \"big\"", "shape [4294967296, 4294967296]", "more bytes than");
        rejected("{" + entry("big", "\"F64\"", "[2305843009213693952]", "[0,8]") + "}", 8,
                "tensor \"big\"", "more bytes than");
        // Zero elements, but strides computed from the other dimensions would overflow.
        rejected("{" + entry("big", "\"U8\"", "[0,9223372036854775807,2]", "[0,0]") + "}", 0, "more bytes than");
    }

    @Test
    void rejectsSizeMismatchesWithAClearMessage() throws IOException {
        SafetensorsFormatException e = rejected("{" + entry("x.weight", "\"F32\"", "[3,4]", "[0,40]") + "}", 48);
        assertEquals(file + ": tensor \"x.weight\": shape [3, 4] of F32 needs 48 bytes but data_offsets [0, 40] "
                + "cover 40", e.getMessage());
        assertEquals("x.weight", e.tensor().orElseThrow());
    }

    @Test
    void rejectsOffsetsOutsideTheData() throws IOException {
        rejected("{" + entry("x", "\"U8\"", "[100]", "[0,100]") + "}", 16,
                "tensor \"x\"", "data_offsets [0, 100]", "beyond the data section of 16 bytes");
        rejected("{" + entry("x", "\"U8\"", "[0]", "[17,17]") + "}", 16, "data_offsets [17, 17]", "beyond");
        rejected("{" + entry("x", "\"U8\"", "[4]", "[8,4]") + "}", 16, "data_offsets [8, 4]", "begin after");
        rejected("{" + entry("x", "\"U8\"", "[2]", "[0,2,4]") + "}", 16, "data_offsets must be an array [begin, end]");
        rejected("{" + entry("x", "\"U8\"", "[2]", "[2]") + "}", 16, "data_offsets must be an array");
        rejected("{" + entry("x", "\"U8\"", "[2]", "{\"begin\":0}") + "}", 16, "data_offsets must be", "an object");
    }

    @Test
    void rejectsOverlappingTensorsNamingBoth() throws IOException {
        String header = "{" + entry("first", "\"U8\"", "[8]", "[0,8]") + ","
                + entry("second", "\"F32\"", "[2]", "[4,12]") + "}";
        rejected(header, 16, "overlap", "\"first\"", "\"second\"", "data_offsets [4, 12]");
        // Identical ranges, listed in reverse offset order, and a range nested inside another.
        rejected("{" + entry("b", "\"U8\"", "[4]", "[4,8]") + "," + entry("a", "\"U8\"", "[4]", "[4,8]") + "}", 8,
                "overlap");
        rejected("{" + entry("outer", "\"U8\"", "[8]", "[0,8]") + "," + entry("inner", "\"U8\"", "[2]", "[2,4]")
                + "," + entry("after", "\"U8\"", "[2]", "[8,10]") + "}", 10, "overlap", "\"inner\"");
    }

    @Test
    void rejectsNegativeAndNonIntegerNumbers() throws IOException {
        rejected("{" + entry("x", "\"U8\"", "[2,-2]", "[0,4]") + "}", 4, "shape[1]", "non-negative integer",
                "is -2");
        rejected("{" + entry("x", "\"U8\"", "[4]", "[-4,0]") + "}", 4, "data_offsets[0]", "is -4");
        rejected("{" + entry("x", "\"U8\"", "[4.0]", "[0,4]") + "}", 4, "shape[0]", "is 4.0");
        rejected("{" + entry("x", "\"U8\"", "[4]", "[0,4e0]") + "}", 4, "data_offsets[1]", "is 4.0");
        rejected("{" + entry("x", "\"U8\"", "[4]", "[0,99999999999999999999]") + "}", 4, "data_offsets[1]",
                "fits in 64 bits", "1e+20");
        rejected("{" + entry("x", "\"U8\"", "[\"4\"]", "[0,4]") + "}", 4, "shape[0]", "the string \"4\"");
        rejected("{" + entry("x", "\"U8\"", "[null]", "[0,4]") + "}", 4, "shape[0]", "is null");
        rejected("{" + entry("x", "\"U8\"", "[true]", "[0,4]") + "}", 4, "shape[0]", "is true");
    }

    @Test
    void rejectsUnknownOrMistypedDTypes() throws IOException {
        rejected("{" + entry("x", "\"F8_E4M3\"", "[4]", "[0,4]") + "}", 4, "tensor \"x\"",
                "unsupported dtype \"F8_E4M3\"", "F32");
        rejected("{" + entry("x", "\"f32\"", "[1]", "[0,4]") + "}", 4, "unsupported dtype \"f32\"");
        rejected("{" + entry("x", "4", "[1]", "[0,4]") + "}", 4, "dtype must be a string");
    }

    @Test
    void rejectsMalformedEntries() throws IOException {
        rejected("{\"x\":{\"dtype\":\"U8\",\"shape\":[4]}}", 4, "tensor \"x\"", "missing key \"data_offsets\"");
        rejected("{\"x\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4],\"extra\":1}}", 4,
                "unexpected key \"extra\"");
        rejected("{\"x\":[\"U8\",[4],[0,4]]}", 4, "tensor \"x\"", "entry must be a JSON object");
        rejected("{" + entry("", "\"U8\"", "[4]", "[0,4]") + "}", 4, "empty name");
        rejected("{" + entry("x", "\"U8\"", "4", "[0,4]") + "}", 4, "shape must be an array");
        // Names are quoted and escaped in messages.
        rejected("{" + entry("evil\\n\\u0000name", "\"U8\"", "[5]", "[0,4]") + "}", 4, "tensor \"evil\\n\\u0000name\"");
    }

    @Test
    void rejectsDuplicateKeys() throws IOException {
        rejected("{" + entry("x", "\"U8\"", "[2]", "[0,2]") + "," + entry("x", "\"U8\"", "[2]", "[2,4]") + "}", 4,
                "not valid JSON", "duplicate key \"x\"", "character offset");
        rejected("{\"x\":{\"dtype\":\"U8\",\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2,
                "duplicate key \"dtype\"");
    }

    @Test
    void rejectsInvalidMetadata() throws IOException {
        rejected("{\"__metadata__\":{\"format\":\"pt\",\"version\":2}}", 0,
                "__metadata__ value of key \"version\" must be a string but is 2");
        rejected("{\"__metadata__\":{\"a\":null}}", 0, "__metadata__", "is null");
        rejected("{\"__metadata__\":{\"a\":{\"b\":\"c\"}}}", 0, "__metadata__", "an object");
        rejected("{\"__metadata__\":{\"a\":[\"b\"]}}", 0, "__metadata__", "an array");
        rejected("{\"__metadata__\":\"pt\"}", 0, "__metadata__ must be a JSON object");
    }

    @Test
    void rejectsHeadersThatAreNotAJsonObject() throws IOException {
        rejected(" {}     ", 0, "must be a JSON object starting with '{'", "0x20");
        rejected("[]      ", 0, "starting with '{'");
        rejected("\"{}\"    ", 0, "starting with '{'");
        rejected("{\"x\":1,}", 0, "not valid JSON", "character offset 7");
        rejected("{}x     ", 0, "not valid JSON");
        rejected("{}\0\0\0\0\0\0", 0, "not valid JSON");
        rejected("{\"a\":NaN}", 0, "not valid JSON");
    }

    @Test
    void acceptsJsonWhitespaceAroundTheObject() throws IOException {
        assertTrue(opens(fileBytes("{ \"x\" :\n{\"dtype\":\"U8\",\t\"shape\":[1],\"data_offsets\":[0,1]} }   ",
                new byte[1]), "whitespace"));
    }

    @Test
    void rejectsInvalidUtf8() throws IOException {
        byte[][] bad = {
            {(byte) 0xff},
            {(byte) 0xc0, (byte) 0xaf}, // overlong '/'
            {(byte) 0xed, (byte) 0xa0, (byte) 0x80}, // an encoded surrogate
            {(byte) 0xe2, (byte) 0x98}, // truncated sequence
            {(byte) 0xf4, (byte) 0x90, (byte) 0x80, (byte) 0x80}, // beyond U+10FFFF
        };
        for (byte[] sequence : bad) {
            byte[] header = ("{\"__metadata__\":{\"k\":\"" + "_".repeat(sequence.length) + "\"}}")
                    .getBytes(StandardCharsets.US_ASCII);
            System.arraycopy(sequence, 0, header, 22, sequence.length);
            SafetensorsFormatException e = rejected(fileBytes(header, new byte[0]));
            assertTrue(e.getMessage().contains("not valid UTF-8") && e.getMessage().contains("byte 22"),
                    e.getMessage());
        }
        // Valid multi-byte UTF-8 is fine.
        assertTrue(opens(fileBytes("{\"__metadata__\":{\"k\":\"☃ 😀\"}}", new byte[0]), "utf-8"));
    }

    // ---- resource exhaustion ----

    @Test
    void deepNestingIsRejectedWithoutStackOverflow() throws IOException {
        String deep = "[".repeat(10_000) + "]".repeat(10_000);
        rejected("{\"__metadata__\":{\"a\":" + deep + "}}", 0, "not valid JSON", "nesting depth");
        rejected("{\"x\":" + "{\"a\":".repeat(10_000) + "1" + "}".repeat(10_001), 0, "nesting depth");
    }

    @Test
    void aTenMillionDimensionShapeIsRejectedInBoundedTime() throws IOException {
        int dims = 10_000_000;
        StringBuilder header = new StringBuilder(2 * dims + 100).append("{\"x\":{\"dtype\":\"U8\",\"shape\":[");
        header.append("1,".repeat(dims - 1)).append("1],\"data_offsets\":[0,1]}}");
        Files.write(file, fileBytes(header.toString(), new byte[1]));
        SafetensorsFormatException e = assertTimeoutPreemptively(Duration.ofSeconds(20),
                () -> assertThrows(SafetensorsFormatException.class, () -> SafetensorsFile.open(file)));
        assertTrue(e.getMessage().contains("shape has 10000000 dimensions, more than the 16 supported"),
                e.getMessage());
    }

    @Test
    void acceptsExactlyTheMaximumRank() throws IOException {
        String ones = String.join(",", java.util.Collections.nCopies(SafetensorsFile.MAX_RANK, "1"));
        assertTrue(opens(fileBytes("{" + entry("x", "\"U8\"", "[" + ones + "]", "[0,1]") + "}", new byte[1]), "16"));
        rejected("{" + entry("x", "\"U8\"", "[" + ones + ",1]", "[0,1]") + "}", 1, "17 dimensions");
    }

    @Test
    void rejectionsNameTheTensorInTheExceptionToo() throws IOException {
        List<String> headers = List.of(
                "{" + entry("t", "\"U8\"", "[3]", "[0,4]") + "}",
                "{" + entry("t", "\"Q4\"", "[4]", "[0,4]") + "}",
                "{" + entry("t", "\"U8\"", "[-4]", "[0,4]") + "}");
        for (String header : headers) {
            Files.write(file, fileBytes(header, new byte[4]));
            try {
                SafetensorsFile.open(file).close();
                fail("opened " + header);
            } catch (SafetensorsFormatException e) {
                assertEquals("t", e.tensor().orElseThrow(), e.getMessage());
            }
        }
    }
}
