package io.qkern.io;

import io.qkern.DType;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.CharBuffer;
import java.nio.channels.FileChannel;
import java.nio.charset.CharsetDecoder;
import java.nio.charset.CoderResult;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.Comparator;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.NoSuchElementException;
import java.util.Set;
import java.util.concurrent.atomic.AtomicBoolean;

/**
 * A safetensors file, memory-mapped read-only and validated when opened.
 *
 * <p>The format: an unsigned 64-bit little-endian header length {@code N}, then {@code N} bytes of UTF-8 JSON
 * (an object, possibly padded with trailing spaces), then the data section. The JSON maps each tensor name to
 * {@code {"dtype": ..., "shape": [...], "data_offsets": [begin, end]}}, offsets relative to the data section,
 * and may hold a {@code "__metadata__"} object of string values.
 *
 * <p>{@link #open(Path)} checks everything a reader relies on and reports any violation as a
 * {@link SafetensorsFormatException}:
 * <ul>
 *   <li>the header length: non-zero, within the file, at most {@value #MAX_HEADER_BYTES} bytes (checked before
 *       anything of that size is allocated);</li>
 *   <li>the header: strict UTF-8, starting with {@code '{'}, one strict JSON object (see {@link Json}, which
 *       also bounds nesting) followed only by padding (spaces, or any JSON whitespace, as the Rust crate
 *       accepts);</li>
 *   <li>each entry: exactly the keys dtype (one {@link DType} knows), shape (at most {@value #MAX_RANK}
 *       non-negative integers) and data_offsets ({@code [begin, end]} with {@code 0 <= begin <= end <=} the data
 *       section's length), a non-empty name, and a byte count for the shape (computed without overflow) equal
 *       to {@code end - begin};</li>
 *   <li>no two tensors' byte ranges overlap (an empty tensor overlaps nothing).</li>
 * </ul>
 * Unlike the Rust safetensors crate, this reader allows gaps between tensors and unused bytes at the end of
 * the data section: they harm nothing, and tolerating them lets a tool read files whose writer aligned each
 * tensor.
 *
 * <p>Tensor data is returned as read-only slices of the mapping, which stay valid until {@link #close()}.
 * They start wherever the file puts them, so they are not necessarily aligned to their element size: read
 * them with unaligned layouts (such as {@code ValueLayout.JAVA_FLOAT_UNALIGNED}) in little-endian order. As
 * with any memory-mapped file, the file must not be truncated while open.
 *
 * <p>Instances are safe to share between threads. Once closed, every method but {@code close} throws
 * {@link IllegalStateException}, and the segments already handed out may no longer be accessed.
 */
public final class SafetensorsFile implements AutoCloseable {

    /** The largest header accepted, 100 MiB (the Rust safetensors crate's limit is 100 MB). */
    public static final long MAX_HEADER_BYTES = 100L << 20;

    /** The most dimensions a tensor may have. */
    public static final int MAX_RANK = 16;

    /** The header key of the optional string-to-string metadata. */
    public static final String METADATA_KEY = "__metadata__";

    private static final Set<String> ENTRY_KEYS = Set.of("dtype", "shape", "data_offsets");

    private final Path path;
    private final Arena arena;
    private final MemorySegment data;
    private final Map<String, String> metadata;
    private final List<TensorInfo> tensors;
    private final List<String> names;
    private final Map<String, TensorInfo> byName;
    private final AtomicBoolean closed = new AtomicBoolean();

    private SafetensorsFile(Path path, Arena arena, MemorySegment data, Header header) {
        this.path = path;
        this.arena = arena;
        this.data = data;
        this.metadata = header.metadata();
        this.tensors = header.tensors();
        this.names = tensors.stream().map(TensorInfo::name).toList();
        Map<String, TensorInfo> index = new HashMap<>();
        for (TensorInfo t : tensors) {
            index.put(t.name(), t);
        }
        this.byName = Collections.unmodifiableMap(index);
    }

    /**
     * Opens, validates and memory-maps a safetensors file.
     *
     * @throws SafetensorsFormatException if the file is not a valid safetensors file
     * @throws IOException                if it cannot be read
     */
    public static SafetensorsFile open(Path path) throws IOException {
        try (FileChannel channel = FileChannel.open(path, StandardOpenOption.READ)) {
            long size = channel.size();
            if (size < 8) {
                throw new SafetensorsFormatException(path, "file is " + size
                        + " bytes long, too short for the 8-byte header length");
            }
            ByteBuffer prefix = ByteBuffer.allocate(8).order(ByteOrder.LITTLE_ENDIAN);
            readFully(path, channel, prefix, 0);
            long headerLength = prefix.getLong(0);
            checkHeaderLength(path, headerLength, size);
            byte[] headerBytes = new byte[(int) headerLength];
            readFully(path, channel, ByteBuffer.wrap(headerBytes), 8);
            long dataStart = 8 + headerLength;
            Header header = parseHeader(path, headerBytes, size - dataStart);

            Arena arena = Arena.ofShared();
            try {
                MemorySegment mapped = channel.map(FileChannel.MapMode.READ_ONLY, 0, size, arena);
                return new SafetensorsFile(path, arena, mapped.asSlice(dataStart).asReadOnly(), header);
            } catch (Throwable t) {
                arena.close();
                throw t;
            }
        }
    }

    /** The path the file was opened with. */
    public Path path() {
        ensureOpen();
        return path;
    }

    /** The header's {@code __metadata__}, in file order; empty if the header has none. Unmodifiable. */
    public Map<String, String> metadata() {
        ensureOpen();
        return metadata;
    }

    /** All tensors, ordered by data offset (ties in header order). Unmodifiable. */
    public List<TensorInfo> tensors() {
        ensureOpen();
        return tensors;
    }

    /** The names of all tensors, in the order of {@link #tensors()}. Unmodifiable. */
    public List<String> names() {
        ensureOpen();
        return names;
    }

    /** Whether the file holds a tensor of this name. */
    public boolean contains(String name) {
        ensureOpen();
        return byName.containsKey(name);
    }

    /**
     * The header entry of a tensor.
     *
     * @throws NoSuchElementException naming the tensor and the file if there is no such tensor
     */
    public TensorInfo info(String name) {
        ensureOpen();
        TensorInfo t = byName.get(name);
        if (t == null) {
            throw new NoSuchElementException("no tensor " + Json.abbreviate(name) + " in " + path);
        }
        return t;
    }

    /**
     * A read-only view of exactly the bytes of a tensor, valid until this file is closed.
     *
     * @throws NoSuchElementException naming the tensor and the file if there is no such tensor
     */
    public MemorySegment data(String name) {
        TensorInfo t = info(name);
        return data.asSlice(t.begin(), t.byteSize());
    }

    /** Unmaps the file. Idempotent; afterwards no segment obtained from {@link #data} may be accessed. */
    @Override
    public void close() {
        if (closed.compareAndSet(false, true)) {
            arena.close();
        }
    }

    private void ensureOpen() {
        if (closed.get()) {
            throw new IllegalStateException(path + " is closed");
        }
    }

    private static void checkHeaderLength(Path path, long headerLength, long fileSize)
            throws SafetensorsFormatException {
        if (headerLength == 0) {
            throw new SafetensorsFormatException(path, "header length is 0");
        }
        // The length is unsigned: a negative long means at least 2^63.
        if (headerLength < 0 || headerLength > MAX_HEADER_BYTES) {
            throw new SafetensorsFormatException(path, "header length " + Long.toUnsignedString(headerLength)
                    + " exceeds the limit of " + MAX_HEADER_BYTES + " bytes");
        }
        if (headerLength > fileSize - 8) {
            throw new SafetensorsFormatException(path, "header length " + headerLength + " is larger than the "
                    + (fileSize - 8) + " bytes that follow it in the file");
        }
    }

    private static void readFully(Path path, FileChannel channel, ByteBuffer buffer, long position)
            throws IOException {
        while (buffer.hasRemaining()) {
            int n = channel.read(buffer, position);
            if (n < 0) {
                throw new SafetensorsFormatException(path, "file ended at byte " + position
                        + " while reading the header (was it truncated while being opened?)");
            }
            position += n;
        }
    }

    private record Header(Map<String, String> metadata, List<TensorInfo> tensors) {
    }

    private static Header parseHeader(Path path, byte[] bytes, long dataLength) throws SafetensorsFormatException {
        if (bytes[0] != '{') {
            throw new SafetensorsFormatException(path, String.format(
                    "header must be a JSON object starting with '{' but starts with byte 0x%02x", bytes[0] & 0xff));
        }
        String text = decodeUtf8(path, bytes);
        Object root;
        try {
            root = Json.parse(text, bytes.length);
        } catch (Json.JsonException e) {
            throw new SafetensorsFormatException(path, "header is not valid JSON: " + e.getMessage(), e);
        }
        // The header starts with '{' and parsed, so it is an object.
        Map<?, ?> entries = (Map<?, ?>) root;
        Map<String, String> metadata = Map.of();
        List<TensorInfo> tensors = new ArrayList<>(entries.size());
        for (Map.Entry<?, ?> e : entries.entrySet()) {
            String name = (String) e.getKey();
            if (name.equals(METADATA_KEY)) {
                metadata = parseMetadata(path, e.getValue());
            } else {
                tensors.add(parseEntry(path, name, e.getValue(), dataLength));
            }
        }
        tensors.sort(Comparator.comparingLong(TensorInfo::begin).thenComparingLong(TensorInfo::end));
        checkNoOverlap(path, tensors);
        return new Header(metadata, Collections.unmodifiableList(tensors));
    }

    private static String decodeUtf8(Path path, byte[] bytes) throws SafetensorsFormatException {
        CharsetDecoder decoder = StandardCharsets.UTF_8.newDecoder()
                .onMalformedInput(CodingErrorAction.REPORT)
                .onUnmappableCharacter(CodingErrorAction.REPORT);
        ByteBuffer in = ByteBuffer.wrap(bytes);
        // Validates through a small buffer (new String(bytes, UTF_8) alone would replace bad bytes silently),
        // so that a large header is not held as chars twice.
        CharBuffer scratch = CharBuffer.allocate(8192);
        while (true) {
            CoderResult result = decoder.decode(in, scratch, true);
            if (result.isError()) {
                throw new SafetensorsFormatException(path, "header is not valid UTF-8: invalid byte sequence at "
                        + "header byte " + in.position());
            }
            if (result.isUnderflow()) {
                return new String(bytes, StandardCharsets.UTF_8);
            }
            scratch.clear();
        }
    }

    private static Map<String, String> parseMetadata(Path path, Object value) throws SafetensorsFormatException {
        if (!(value instanceof Map<?, ?> map)) {
            throw new SafetensorsFormatException(path, METADATA_KEY + " must be a JSON object but is "
                    + describe(value));
        }
        Map<String, String> metadata = new LinkedHashMap<>();
        for (Map.Entry<?, ?> e : map.entrySet()) {
            if (!(e.getValue() instanceof String s)) {
                throw new SafetensorsFormatException(path, METADATA_KEY + " value of key "
                        + Json.abbreviate((String) e.getKey()) + " must be a string but is " + describe(e.getValue()));
            }
            metadata.put((String) e.getKey(), s);
        }
        return Collections.unmodifiableMap(metadata);
    }

    private static TensorInfo parseEntry(Path path, String name, Object value, long dataLength)
            throws SafetensorsFormatException {
        if (name.isEmpty()) {
            throw new SafetensorsFormatException(path, "a tensor has an empty name");
        }
        if (!(value instanceof Map<?, ?> entry)) {
            throw new SafetensorsFormatException(path, name,
                    "entry must be a JSON object with dtype, shape and data_offsets but is " + describe(value));
        }
        for (Object key : entry.keySet()) {
            if (!ENTRY_KEYS.contains(key)) {
                throw new SafetensorsFormatException(path, name, "unexpected key " + Json.abbreviate((String) key)
                        + " (expected exactly dtype, shape and data_offsets)");
            }
        }
        DType dtype = parseDType(path, name, required(path, name, entry, "dtype"));
        long[] shape = parseShape(path, name, required(path, name, entry, "shape"));
        long[] offsets = parseOffsets(path, name, required(path, name, entry, "data_offsets"), dataLength);
        long begin = offsets[0];
        long end = offsets[1];
        long needed;
        try {
            needed = Math.multiplyExact(TensorInfo.elementCount(shape), dtype.byteSize());
        } catch (ArithmeticException e) {
            throw new SafetensorsFormatException(path, name, "shape " + Arrays.toString(shape) + " of " + dtype
                    + " has more bytes than a 64-bit count can hold");
        }
        if (needed != end - begin) {
            throw new SafetensorsFormatException(path, name, "shape " + Arrays.toString(shape) + " of " + dtype
                    + " needs " + needed + " bytes but data_offsets [" + begin + ", " + end + "] cover "
                    + (end - begin));
        }
        return new TensorInfo(name, dtype, shape, begin, end);
    }

    private static Object required(Path path, String name, Map<?, ?> entry, String key)
            throws SafetensorsFormatException {
        Object value = entry.get(key);
        if (value == null) {
            throw new SafetensorsFormatException(path, name, "missing key \"" + key + "\"");
        }
        return value;
    }

    private static DType parseDType(Path path, String name, Object value) throws SafetensorsFormatException {
        if (!(value instanceof String s)) {
            throw new SafetensorsFormatException(path, name, "dtype must be a string but is " + describe(value));
        }
        try {
            return DType.fromSafetensorsName(s);
        } catch (IllegalArgumentException e) {
            throw new SafetensorsFormatException(path, name, "unsupported dtype " + Json.abbreviate(s)
                    + " (supported: " + Arrays.toString(DType.values()) + ")");
        }
    }

    private static long[] parseShape(Path path, String name, Object value) throws SafetensorsFormatException {
        if (!(value instanceof List<?> list)) {
            throw new SafetensorsFormatException(path, name, "shape must be an array but is " + describe(value));
        }
        // Checked before looking at the elements, so that a huge shape costs no more work here.
        if (list.size() > MAX_RANK) {
            throw new SafetensorsFormatException(path, name, "shape has " + list.size()
                    + " dimensions, more than the " + MAX_RANK + " supported");
        }
        long[] shape = new long[list.size()];
        for (int i = 0; i < shape.length; i++) {
            shape[i] = nonNegativeInteger(path, name, "shape[" + i + "]", list.get(i));
        }
        return shape;
    }

    private static long[] parseOffsets(Path path, String name, Object value, long dataLength)
            throws SafetensorsFormatException {
        if (!(value instanceof List<?> list) || list.size() != 2) {
            throw new SafetensorsFormatException(path, name,
                    "data_offsets must be an array [begin, end] but is " + describe(value));
        }
        long begin = nonNegativeInteger(path, name, "data_offsets[0]", list.get(0));
        long end = nonNegativeInteger(path, name, "data_offsets[1]", list.get(1));
        if (begin > end) {
            throw new SafetensorsFormatException(path, name, "data_offsets [" + begin + ", " + end
                    + "] begin after they end");
        }
        if (end > dataLength) {
            throw new SafetensorsFormatException(path, name, "data_offsets [" + begin + ", " + end
                    + "] reach beyond the data section of " + dataLength + " bytes");
        }
        return new long[] {begin, end};
    }

    private static long nonNegativeInteger(Path path, String name, String what, Object value)
            throws SafetensorsFormatException {
        if (value instanceof Long l && l >= 0) {
            return l;
        }
        throw new SafetensorsFormatException(path, name, what
                + " must be a non-negative integer that fits in 64 bits but is " + describe(value));
    }

    /** Rejects byte ranges shared by two tensors; {@code tensors} is sorted by begin, then end. */
    private static void checkNoOverlap(Path path, List<TensorInfo> tensors) throws SafetensorsFormatException {
        // Sorted by begin, non-overlapping ranges also end in order, so comparing neighbours suffices.
        TensorInfo previous = null; // the last non-empty tensor
        for (TensorInfo t : tensors) {
            if (t.byteSize() == 0) {
                continue;
            }
            if (previous != null && t.begin() < previous.end()) {
                throw new SafetensorsFormatException(path, t.name(), "data_offsets [" + t.begin() + ", " + t.end()
                        + "] overlap those of tensor " + Json.abbreviate(previous.name()) + " ["
                        + previous.begin() + ", " + previous.end() + "]");
            }
            previous = t;
        }
    }

    /** A short description of a parsed JSON value for error messages. */
    private static String describe(Object value) {
        return switch (value) {
            case Map<?, ?> _ -> "an object";
            case List<?> l -> "an array of " + l.size();
            case String s -> "the string " + Json.abbreviate(s);
            default -> Json.writePython(value);
        };
    }
}
