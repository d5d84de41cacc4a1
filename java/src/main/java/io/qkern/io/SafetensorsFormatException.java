package io.qkern.io;

import java.io.IOException;
import java.nio.file.Path;
import java.util.Optional;

/**
 * A file that is not a valid safetensors file. The message always starts with the file and, where one tensor
 * is at fault, names it, for example
 * {@code model.safetensors: tensor "x.weight": shape [3, 4] of F32 needs 48 bytes but data_offsets [0, 40] cover 40}.
 */
public final class SafetensorsFormatException extends IOException {
    private static final long serialVersionUID = 1L;

    private final transient Path file;
    private final String tensor;

    /** A problem with the file as a whole (its size, its header). */
    public SafetensorsFormatException(Path file, String problem) {
        this(file, null, problem, null);
    }

    /** A problem with the file as a whole, caused by {@code cause}. */
    public SafetensorsFormatException(Path file, String problem, Throwable cause) {
        this(file, null, problem, cause);
    }

    /** A problem with one tensor's header entry. */
    public SafetensorsFormatException(Path file, String tensor, String problem) {
        this(file, tensor, problem, null);
    }

    private SafetensorsFormatException(Path file, String tensor, String problem, Throwable cause) {
        super(file + ": " + (tensor == null ? "" : "tensor " + Json.abbreviate(tensor) + ": ") + problem, cause);
        this.file = file;
        this.tensor = tensor;
    }

    /** The file that is at fault. */
    public Path file() {
        return file;
    }

    /** The tensor whose header entry is at fault, if the problem concerns one tensor. */
    public Optional<String> tensor() {
        return Optional.ofNullable(tensor);
    }
}
