package io.qkern;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashSet;
import java.util.Set;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Test;

/**
 * docs/using-from-c-cpp-python.md shows exactly the programs the tests run: each
 * {@code <!-- example: PATH -->} block is byte for byte the file at PATH (ctest consumer_package
 * builds and runs the C and C++ ones, DLPackPythonTest the Python one).
 */
class DocsPageTest {
    private static final Path REPO = Path.of(System.getProperty("qkern.test.repo", ".."));

    @Test
    void examplesAreTheFilesTheTestsRun() throws Exception {
        String page = Files.readString(REPO.resolve("docs/using-from-c-cpp-python.md"));
        Matcher m = Pattern.compile("<!-- example: (\\S+) -->\\n```\\w+\\n(.*?)```", Pattern.DOTALL).matcher(page);
        Set<String> shown = new LinkedHashSet<>();
        while (m.find()) {
            String path = m.group(1);
            assertEquals(Files.readString(REPO.resolve(path)), m.group(2),
                    "the page's copy of " + path + " differs from the file: update the page");
            shown.add(path);
        }
        assertEquals(Set.of("native/consumer-tests/CMakeLists.txt", "native/consumer-tests/nf4_dequantize.c",
                "native/consumer-tests/nf4_dequantize.cpp", "native/consumer-tests/python/numpy_example.py"), shown);
        // The command line shown for building without CMake is the one run_consumer_tests.cmake runs.
        assertTrue(page.contains("cc nf4_dequantize.c -I/opt/qkern/include -L/opt/qkern/lib -lqkern"
                + " -Wl,-rpath,/opt/qkern/lib -o nf4_c"));
        String script = Files.readString(REPO.resolve("native/consumer-tests/run_consumer_tests.cmake"));
        assertTrue(script.contains("-I${prefix}/include -L${libdir} -lqkern -Wl,-rpath,${libdir}"), script);
    }
}
