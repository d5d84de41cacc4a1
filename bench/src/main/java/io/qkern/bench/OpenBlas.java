package io.qkern.bench;

import static java.lang.foreign.ValueLayout.ADDRESS;
import static java.lang.foreign.ValueLayout.JAVA_FLOAT;
import static java.lang.foreign.ValueLayout.JAVA_INT;

import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.SymbolLookup;
import java.lang.invoke.MethodHandle;
import java.util.Optional;

/**
 * OpenBLAS {@code cblas_sgemm}, found at run time (Debian: {@code apt-get install
 * libopenblas0-pthread}), as the peer baseline for dense float32 matmul. Absent library: {@link
 * #find()} is empty and the benchmarks that need it say so.
 */
final class OpenBlas {
    private static final int ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112;
    private final MethodHandle sgemm;

    private OpenBlas(MethodHandle sgemm) {
        this.sgemm = sgemm;
    }

    static Optional<OpenBlas> find() {
        for (String name : new String[] {"libopenblas.so.0", "libopenblas.so"}) {
            try {
                SymbolLookup lib = SymbolLookup.libraryLookup(name, Arena.global());
                Optional<MemorySegment> f = lib.find("cblas_sgemm");
                if (f.isPresent()) {
                    return Optional.of(new OpenBlas(Linker.nativeLinker().downcallHandle(f.get(),
                            FunctionDescriptor.ofVoid(JAVA_INT, JAVA_INT, JAVA_INT, JAVA_INT, JAVA_INT, JAVA_INT,
                                    JAVA_FLOAT, ADDRESS, JAVA_INT, ADDRESS, JAVA_INT, JAVA_FLOAT, ADDRESS, JAVA_INT))));
                }
            } catch (IllegalArgumentException notFound) {
                // try the next name
            }
        }
        return Optional.empty();
    }

    /** y[m, n] = x[m, k] w[n, k]^T, all row-major float32. */
    void matmulTransposed(MemorySegment x, MemorySegment w, MemorySegment y, int m, int n, int k) {
        try {
            sgemm.invokeExact(ROW_MAJOR, NO_TRANS, TRANS, m, n, k, 1.0f, x, k, w, k, 0.0f, y, n);
        } catch (Throwable t) {
            throw new IllegalStateException("cblas_sgemm failed", t);
        }
    }
}
