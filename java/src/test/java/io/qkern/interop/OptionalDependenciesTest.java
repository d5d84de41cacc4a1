package io.qkern.interop;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.net.URL;
import java.net.URLClassLoader;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;

/** qkern's classes load and run with neither JCuda nor LWJGL present; only the adapters need them. */
class OptionalDependenciesTest {
    @Test
    void coreRunsWithoutTheOptionalLibraries() throws Exception {
        Path classes = Path.of(io.qkern.Qkern.class.getProtectionDomain().getCodeSource().getLocation().toURI());
        try (URLClassLoader bare = new URLClassLoader(new URL[] {classes.toUri().toURL()},
                ClassLoader.getPlatformClassLoader())) {
            assertThrows(ClassNotFoundException.class, () -> bare.loadClass("jcuda.Pointer"));
            assertThrows(ClassNotFoundException.class, () -> bare.loadClass("org.lwjgl.PointerBuffer"));
            // (The native library itself belongs to this test's class loader, so the second copy of
            // the classes reports it unavailable; class loading is what is checked here.)
            Object info = bare.loadClass("io.qkern.Qkern").getMethod("info").invoke(null);
            assertEquals(Runtime.version().toString(), info.getClass().getMethod("javaVersion").invoke(info));
            Class<?> dlpack = bare.loadClass("io.qkern.dlpack.DLPack");  // links without the adapters' libraries
            assertEquals("DLPack", dlpack.getSimpleName());
            Class<?> adapter = bare.loadClass("io.qkern.interop.JCudaTensors");
            assertThrows(NoClassDefFoundError.class, adapter::getMethods, "using the adapter needs JCuda");
        }
    }
}
