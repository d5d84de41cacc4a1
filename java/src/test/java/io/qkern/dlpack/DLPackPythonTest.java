package io.qkern.dlpack;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.qkern.Qkern;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/**
 * Another stack holds the memory: Python's NumPy exchanges tensors with this build's libqkern
 * through ctypes and DLPack, zero-copy both ways (native/consumer-tests/python/). Skipped, and
 * reported as skipped, when python3 with NumPy is absent; the PyTorch CUDA exchange likewise when
 * PyTorch or a GPU is absent.
 */
class DLPackPythonTest {
    private static final Path PYTHON_DIR =
            Path.of(System.getProperty("qkern.test.repo", "..")).resolve("native/consumer-tests/python");
    private static String library;

    @BeforeAll
    static void findLibrary() {
        library = Qkern.info().libraryPath();
        assertTrue(library != null && Files.isRegularFile(Path.of(library)), "libqkern.so path: " + library);
    }

    private record Run(int exitCode, String output) {}

    private static Run python(String... args) throws IOException, InterruptedException {
        List<String> command = new ArrayList<>(List.of("python3"));
        command.addAll(List.of(args));
        Process p;
        try {
            p = new ProcessBuilder(command).directory(PYTHON_DIR.toFile()).redirectErrorStream(true).start();
        } catch (IOException e) {
            return new Run(-1, "python3 cannot be started: " + e.getMessage());
        }
        byte[] out = p.getInputStream().readAllBytes();
        if (!p.waitFor(300, TimeUnit.SECONDS)) {
            p.destroyForcibly();
            throw new AssertionError("python3 " + String.join(" ", args) + " timed out");
        }
        return new Run(p.exitValue(), new String(out, StandardCharsets.UTF_8));
    }

    private static void assumeNumpy() throws IOException, InterruptedException {
        Run probe = python("-c", "import numpy; print(numpy.__version__)");
        Assumptions.assumeTrue(probe.exitCode() == 0, "python3 with NumPy is not available: " + probe.output().strip());
    }

    @Test
    void numpyExchangesTensorsZeroCopyBothWays() throws Exception {
        assumeNumpy();
        Run run = python("test_numpy_dlpack.py", library);
        assertEquals(0, run.exitCode(), run.output());
        assertTrue(run.output().contains("numpy dlpack: ok"), run.output());
    }

    @Test
    void theDocumentedNumpyExampleRuns() throws Exception {
        assumeNumpy();
        Run run = python("numpy_example.py", library);
        assertEquals(0, run.exitCode(), run.output());
        assertTrue(run.output().contains("largest NF4 round-trip error"), run.output());
    }

    @Test
    void pytorchCudaTensorsExchangeOnTheDevice() throws Exception {
        assumeNumpy();
        Run run = python("test_numpy_dlpack.py", library, "--torch-cuda");
        Assumptions.assumeFalse(run.exitCode() == 77, run.output().strip());
        assertEquals(0, run.exitCode(), run.output());
        assertTrue(run.output().contains("torch-cuda: ok"), run.output());
    }
}
