package io.qkern.io;

import io.qkern.DType;
import java.io.IOException;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.FileAlreadyExistsException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashSet;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.Set;
import java.util.concurrent.ThreadLocalRandom;
import java.util.function.LongConsumer;

/**
 * Writes a safetensors file atomically.
 *
 * <pre>{@code
 * SafetensorsWriter.create(Path.of("model.safetensors"))
 *         .metadata(Map.of("format", "pt"))
 *         .add("w", DType.F32, new long[] {2, 3}, weights)
 *         .write();
 * }</pre>
 *
 * <p>The header lists the tensors in the order they were added, with {@code __metadata__} first when there is
 * any, as compact JSON; the data section holds the tensors contiguously in the same order. As the Rust
 * safetensors crate does, the header is padded with spaces so that the data section starts at a file offset
 * that is a multiple of 8. Tensor bytes are written exactly as they are in the segments; safetensors data is
 * little-endian.
 *
 * <p>{@link #write()} writes to a temporary file {@code .<name>.tmp-<random>} in the target's directory,
 * forces it to disk, then renames it over the target in one atomic step. Readers therefore see either the
 * old file or the complete new one, and if anything fails the temporary file is deleted and an existing
 * target is left untouched. The segments are only read during {@code write()}, so they must stay alive until
 * it returns. A writer is not thread-safe.
 */
public final class SafetensorsWriter {

    /** The most bytes handed to one channel write, so that no single buffer covers a multi-GB tensor. */
    static final long CHUNK_BYTES = 64L << 20;

    /** Staging size for segments that cannot be viewed as a ByteBuffer (heap segments over non-byte arrays). */
    private static final int STAGING_BYTES = 1 << 20;

    private final Path target;
    private final List<Entry> entries = new ArrayList<>();
    private final Set<String> names = new HashSet<>();
    private Map<String, String> metadata = Map.of();
    private long dataLength;
    private LongConsumer progress = bytes -> { };

    private record Entry(TensorInfo info, MemorySegment data) {
    }

    private SafetensorsWriter(Path target) {
        this.target = target;
    }

    /** A writer that will write to {@code target}, replacing it if it exists. */
    public static SafetensorsWriter create(Path target) {
        return new SafetensorsWriter(Objects.requireNonNull(target, "target"));
    }

    /**
     * Sets the header's {@code __metadata__} (replacing any set before); written only if not empty. The map's
     * iteration order is kept.
     *
     * @throws IllegalArgumentException if a key or value is null or cannot be encoded as UTF-8
     */
    public SafetensorsWriter metadata(Map<String, String> metadata) {
        Map<String, String> copy = new LinkedHashMap<>();
        for (Map.Entry<String, String> e : metadata.entrySet()) {
            if (e.getKey() == null || e.getValue() == null) {
                throw new IllegalArgumentException("metadata keys and values must not be null: " + e);
            }
            requireEncodable(e.getKey(), "metadata key");
            requireEncodable(e.getValue(), "metadata value of key " + Json.abbreviate(e.getKey()));
            copy.put(e.getKey(), e.getValue());
        }
        this.metadata = copy;
        return this;
    }

    /**
     * Adds a tensor. Its data is not copied now but read by {@link #write()}.
     *
     * @param name  a unique, non-empty name other than {@code __metadata__}
     * @param dtype the element type
     * @param shape the dimensions (empty for a scalar), at most {@link SafetensorsFile#MAX_RANK}, non-negative
     * @param data  exactly the tensor's bytes, little-endian
     * @throws IllegalArgumentException naming the tensor if any of these conditions does not hold
     */
    public SafetensorsWriter add(String name, DType dtype, long[] shape, MemorySegment data) {
        Objects.requireNonNull(name, "name");
        Objects.requireNonNull(dtype, "dtype");
        Objects.requireNonNull(data, "data");
        String tensor = "tensor " + Json.abbreviate(name) + ": ";
        if (name.isEmpty() || name.equals(SafetensorsFile.METADATA_KEY)) {
            throw new IllegalArgumentException(tensor + "name is reserved or empty");
        }
        requireEncodable(name, "tensor name");
        if (names.contains(name)) {
            throw new IllegalArgumentException(tensor + "a tensor of this name was already added");
        }
        if (shape.length > SafetensorsFile.MAX_RANK) {
            throw new IllegalArgumentException(tensor + "shape has " + shape.length + " dimensions, more than the "
                    + SafetensorsFile.MAX_RANK + " supported");
        }
        for (long d : shape) {
            if (d < 0) {
                throw new IllegalArgumentException(tensor + "shape " + Arrays.toString(shape)
                        + " has a negative dimension");
            }
        }
        long needed;
        try {
            needed = Math.multiplyExact(TensorInfo.elementCount(shape), dtype.byteSize());
        } catch (ArithmeticException e) {
            throw new IllegalArgumentException(tensor + "shape " + Arrays.toString(shape) + " is too large");
        }
        if (needed != data.byteSize()) {
            throw new IllegalArgumentException(tensor + "shape " + Arrays.toString(shape) + " of " + dtype
                    + " needs " + needed + " bytes but the data segment has " + data.byteSize());
        }
        TensorInfo info = new TensorInfo(name, dtype, shape, dataLength, Math.addExact(dataLength, needed));
        entries.add(new Entry(info, data));
        names.add(name);
        dataLength = info.end();
        return this;
    }

    /**
     * Sets a callback told, after each chunk of tensor data is written, how many data bytes (header excluded)
     * have been written so far. An exception it throws aborts {@link #write()}.
     */
    public SafetensorsWriter progress(LongConsumer bytesWritten) {
        this.progress = Objects.requireNonNull(bytesWritten, "bytesWritten");
        return this;
    }

    /**
     * Writes the file, replacing the target atomically.
     *
     * @throws IOException           if writing or renaming fails; the target is then unchanged
     * @throws IllegalStateException if the header would exceed {@link SafetensorsFile#MAX_HEADER_BYTES}, or a
     *                               segment's arena was closed
     */
    public void write() throws IOException {
        byte[] header = header();
        Path tmp = createTempSibling(target.toAbsolutePath());
        try {
            try (FileChannel channel = FileChannel.open(tmp, StandardOpenOption.WRITE)) {
                ByteBuffer prefix = ByteBuffer.allocate(8).order(ByteOrder.LITTLE_ENDIAN).putLong(0, header.length);
                writeFully(channel, prefix);
                writeFully(channel, ByteBuffer.wrap(header));
                writeData(channel);
                // Durable before the rename, so that a crash cannot leave a renamed but empty file.
                channel.force(true);
            }
            Files.move(tmp, target, StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
        } catch (Throwable t) {
            try {
                Files.deleteIfExists(tmp);
            } catch (IOException e) {
                t.addSuppressed(e);
            }
            throw t;
        }
    }

    /** Creates an empty {@code .<name>.tmp-<random>} next to {@code target}, with the default permissions. */
    private static Path createTempSibling(Path target) throws IOException {
        while (true) {
            Path tmp = target.resolveSibling("." + target.getFileName() + ".tmp-"
                    + HexFormat.of().toHexDigits(ThreadLocalRandom.current().nextLong()));
            try {
                return Files.createFile(tmp);
            } catch (FileAlreadyExistsException collision) {
                // Another writer picked the same random name: pick again.
            }
        }
    }

    /** The header JSON in UTF-8, padded with spaces so that the data section starts 8-byte aligned. */
    private byte[] header() {
        Map<String, Object> json = new LinkedHashMap<>();
        if (!metadata.isEmpty()) {
            json.put(SafetensorsFile.METADATA_KEY, metadata);
        }
        for (Entry e : entries) {
            TensorInfo t = e.info();
            Map<String, Object> entry = new LinkedHashMap<>();
            entry.put("dtype", t.dtype().safetensorsName());
            entry.put("shape", Arrays.stream(t.shape()).boxed().toList());
            entry.put("data_offsets", List.of(t.begin(), t.end()));
            json.put(t.name(), entry);
        }
        byte[] text = Json.writeCompact(json).getBytes(StandardCharsets.UTF_8);
        int padded = (text.length + 7) & ~7; // the 8-byte length prefix keeps the alignment
        if (padded > SafetensorsFile.MAX_HEADER_BYTES) {
            throw new IllegalStateException("the header of " + padded + " bytes for " + target
                    + " exceeds the limit of " + SafetensorsFile.MAX_HEADER_BYTES + " bytes readers accept");
        }
        byte[] header = Arrays.copyOf(text, padded);
        Arrays.fill(header, text.length, padded, (byte) ' ');
        return header;
    }

    private void writeData(FileChannel channel) throws IOException {
        long written = 0;
        byte[] staging = null;
        for (Entry e : entries) {
            MemorySegment data = e.data();
            // Heap segments over arrays other than byte[] cannot be viewed as a ByteBuffer.
            boolean direct = data.heapBase().map(base -> base instanceof byte[]).orElse(true);
            for (long offset = 0; offset < data.byteSize(); offset += CHUNK_BYTES) {
                MemorySegment chunk = data.asSlice(offset, Math.min(CHUNK_BYTES, data.byteSize() - offset));
                if (direct) {
                    writeFully(channel, chunk.asByteBuffer());
                } else {
                    if (staging == null) {
                        staging = new byte[STAGING_BYTES];
                    }
                    writeStaged(channel, chunk, staging);
                }
                written += chunk.byteSize();
                progress.accept(written);
            }
        }
    }

    private static void writeStaged(FileChannel channel, MemorySegment chunk, byte[] staging) throws IOException {
        for (long offset = 0; offset < chunk.byteSize(); offset += staging.length) {
            int n = (int) Math.min(staging.length, chunk.byteSize() - offset);
            MemorySegment.copy(chunk, ValueLayout.JAVA_BYTE, offset, staging, 0, n);
            writeFully(channel, ByteBuffer.wrap(staging, 0, n));
        }
    }

    private static void writeFully(FileChannel channel, ByteBuffer buffer) throws IOException {
        while (buffer.hasRemaining()) {
            channel.write(buffer);
        }
    }

    private static void requireEncodable(String s, String what) {
        if (!StandardCharsets.UTF_8.newEncoder().canEncode(s)) {
            throw new IllegalArgumentException(what + " " + Json.abbreviate(s)
                    + " holds an unpaired surrogate, which UTF-8 cannot encode");
        }
    }
}
