package io.qkern.internal;

import java.io.IOException;
import java.io.InputStream;
import java.nio.file.AccessDeniedException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.List;
import java.util.Locale;
import java.util.Properties;

/**
 * Finds libqkern and loads it with {@link System#load}.
 *
 * <p>Order: the file named by {@code -Dqkern.library.path}; otherwise the copy packed in the jar
 * under {@code native/<os>-<arch>/}, extracted once into a per-version, per-checksum cache
 * directory ({@code -Dqkern.cache.dir}, else {@code $XDG_CACHE_HOME/qkern} or
 * {@code ~/.cache/qkern}) and reused while its checksum matches. Extraction writes a temp file
 * and moves it atomically into place, so two JVMs starting at once cannot corrupt each other;
 * if loading from the cache fails (a {@code noexec} mount, say) the temp directory is tried.
 */
final class NativeLoader {
    static final String PATH_PROPERTY = "qkern.library.path";
    static final String CACHE_PROPERTY = "qkern.cache.dir";
    private static final String LIB_NAME = "libqkern.so";

    /** What was loaded, from where. */
    record Loaded(Path path, String origin) {}

    private NativeLoader() {}

    static String version() {
        try (InputStream in = NativeLoader.class.getResourceAsStream("/io/qkern/version.properties")) {
            if (in == null) {
                return "dev";
            }
            Properties p = new Properties();
            p.load(in);
            return p.getProperty("version", "dev");
        } catch (IOException e) {
            return "dev";
        }
    }

    static String platform() {
        String os = System.getProperty("os.name", "").toLowerCase(Locale.ROOT);
        String arch = System.getProperty("os.arch", "").toLowerCase(Locale.ROOT);
        String o = os.contains("linux") ? "linux" : os.replaceAll("[^a-z0-9]", "");
        String a = switch (arch) {
            case "amd64", "x86_64" -> "x86_64";
            case "aarch64", "arm64" -> "aarch64";
            default -> arch;
        };
        return o + "-" + a;
    }

    /** Loads the library or throws an exception whose message says every place tried and why. */
    static Loaded load() {
        String override = System.getProperty(PATH_PROPERTY);
        if (override != null && !override.isBlank()) {
            Path p = Path.of(override).toAbsolutePath();
            if (!Files.isRegularFile(p)) {
                throw new IllegalStateException("-D" + PATH_PROPERTY + "=" + override + " does not name a file");
            }
            try {
                System.load(p.toString());
            } catch (UnsatisfiedLinkError e) {
                throw new IllegalStateException("cannot load " + p + " (from -D" + PATH_PROPERTY + "): "
                        + e.getMessage(), e);
            }
            return new Loaded(p, "-D" + PATH_PROPERTY);
        }
        String resource = "/native/" + platform() + "/" + LIB_NAME;
        byte[] bytes;
        try (InputStream in = NativeLoader.class.getResourceAsStream(resource)) {
            if (in == null) {
                throw new IllegalStateException("this qkern jar has no native library for " + platform()
                        + " (looked for " + resource + "); build one with `mvn package` on that platform or"
                        + " point -D" + PATH_PROPERTY + " at a libqkern.so");
            }
            bytes = in.readAllBytes();
        } catch (IOException e) {
            throw new IllegalStateException("cannot read " + resource + " from the jar: " + e.getMessage(), e);
        }
        String digest = sha256(bytes);
        String dirName = version() + "-" + digest.substring(0, 16);
        List<String> failures = new ArrayList<>();
        for (Path base : candidateDirectories()) {
            Path dir = base.resolve(dirName);
            try {
                Path lib = extract(bytes, digest, dir);
                System.load(lib.toString());
                return new Loaded(lib, "jar resource " + resource + " extracted to " + dir);
            } catch (IOException | UnsatisfiedLinkError | SecurityException e) {
                failures.add(dir + ": " + e);
            }
        }
        throw new IllegalStateException("cannot extract and load the native library: " + String.join("; ", failures));
    }

    private static List<Path> candidateDirectories() {
        List<Path> dirs = new ArrayList<>();
        String configured = System.getProperty(CACHE_PROPERTY);
        if (configured != null && !configured.isBlank()) {
            dirs.add(Path.of(configured));
        } else {
            String xdg = System.getenv("XDG_CACHE_HOME");
            if (xdg != null && !xdg.isBlank()) {
                dirs.add(Path.of(xdg, "qkern"));
            } else {
                dirs.add(Path.of(System.getProperty("user.home"), ".cache", "qkern"));
            }
        }
        dirs.add(Path.of(System.getProperty("java.io.tmpdir"), "qkern-" + System.getProperty("user.name", "user")));
        return dirs;
    }

    private static Path extract(byte[] bytes, String digest, Path dir) throws IOException {
        Path target = dir.resolve(LIB_NAME);
        if (Files.isRegularFile(target) && digest.equals(sha256(Files.readAllBytes(target)))) {
            return target;
        }
        Files.createDirectories(dir);
        if (!Files.isWritable(dir)) {
            throw new AccessDeniedException(dir.toString(), null, "not writable");
        }
        Path tmp = Files.createTempFile(dir, ".libqkern-", ".tmp");
        try {
            Files.write(tmp, bytes);
            Files.move(tmp, target, StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
        } finally {
            Files.deleteIfExists(tmp);
        }
        return target;
    }

    static String sha256(byte[] bytes) {
        try {
            return HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(bytes));
        } catch (NoSuchAlgorithmException e) {
            throw new AssertionError("SHA-256 is required of every JDK", e);
        }
    }
}
