package io.qkern.dist;

import io.qkern.internal.NcclNative;

/**
 * Whether NVIDIA's NCCL can be used here, which version and where it was found. qkern has no
 * build-time dependency on NCCL: it is looked for once per JVM, at first use.
 *
 * <p>Search order: {@code -Dqkern.nccl.path=/path/to/libnccl.so.2} (only that file when set); the
 * dynamic loader's own search for {@code libnccl.so.2}, {@code libnccl.so}; those names in each
 * {@code LD_LIBRARY_PATH} directory, {@code $CUDA_HOME/lib64}, {@code /usr/local/cuda/lib64},
 * {@code /usr/lib/x86_64-linux-gnu}; the pip wheel layout {@code <site-packages>/nvidia/nccl/lib} of
 * {@code $VIRTUAL_ENV}, {@code $CONDA_PREFIX}, {@code ~/.local}, {@code /usr/local/lib},
 * {@code /usr/lib}.
 */
public final class Nccl {
    private Nccl() {
    }

    /** True when a library that answers {@code ncclGetVersion} was found. */
    public static boolean available() {
        return NcclNative.discover().library() != null;
    }

    /** NCCL's version as "2.x.y" ({@code ncclGetVersion} decoded). */
    public static String version() {
        return library().versionString();
    }

    /** Where the library was loaded from (a path, or the loader name that found it). */
    public static String location() {
        return library().location();
    }

    /** Every place looked at, with what was found there. */
    public static String searched() {
        return NcclNative.discover().describeSearch();
    }

    /** One line for {@code qkern info}: version and location, or "not found (looked in ...)". */
    public static String describe() {
        NcclNative.Discovery d = NcclNative.discover();
        if (d.library() == null) {
            return "not found (looked in: " + d.describeSearch() + ")";
        }
        return d.library().versionString() + " at " + d.library().location() + " (" + d.library().how() + ")";
    }

    /** The loaded library, or {@link CommunicatorException.Kind#BACKEND} listing every place looked. */
    static NcclNative library() {
        NcclNative.Discovery d = NcclNative.discover();
        if (d.library() == null) {
            throw new CommunicatorException(CommunicatorException.Kind.BACKEND,
                    "NCCL (libnccl.so.2) was not found; looked in: " + d.describeSearch()
                            + ". Install NCCL (e.g. pip install nvidia-nccl-cu12, or NVIDIA's libnccl2 package) or"
                            + " point -D" + NcclNative.PATH_PROPERTY + " at libnccl.so.2");
        }
        return d.library();
    }
}
