package io.qkern.nf4;

import io.qkern.CpuPaths;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Tensor;
import io.qkern.io.Json;
import io.qkern.io.SafetensorsFile;
import io.qkern.io.SafetensorsWriter;
import io.qkern.io.TensorInfo;
import java.io.IOException;
import java.io.InputStream;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.stream.Stream;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * Every case bitsandbytes produced (test resources golden/nf4, copied from shared/golden):
 * packed bytes exactly, absmax exactly (without double quantization), bitsandbytes' dequantized
 * tensor bit-exactly from its own file — on every CPU path this machine has.
 */
class Nf4GoldenTest {
    @TempDir
    static Path dir;

    @AfterEach
    void restorePath() {
        io.qkern.Qkern.setCpuPath("auto");
    }

    record Case(String name, String tensor, DType dtype, int blocksize, boolean doubleQuant) {}

    static List<Case> cases() throws IOException {
        try (InputStream in = Nf4GoldenTest.class.getResourceAsStream("/golden/nf4/manifest.json")) {
            Map<?, ?> manifest = (Map<?, ?>) Json.parse(new String(in.readAllBytes(), StandardCharsets.UTF_8));
            List<Case> out = new ArrayList<>();
            for (Object o : (List<?>) manifest.get("cases")) {
                Map<?, ?> c = (Map<?, ?>) o;
                out.add(new Case((String) c.get("name"), (String) c.get("tensor"), DType.parse((String) c.get("dtype")),
                        ((Long) c.get("blocksize")).intValue(), (Boolean) c.get("double_quant")));
            }
            assertEquals(7, out.size(), "manifest lists 7 golden cases");
            return out;
        }
    }

    static Stream<Arguments> casesOnPaths() throws IOException {
        List<Arguments> args = new ArrayList<>();
        for (Case c : cases()) {
            for (String path : CpuPaths.available()) {
                args.add(Arguments.of(c, path));
            }
        }
        return args.stream();
    }

    static Path resource(String file) throws IOException {
        Path p = dir.resolve(file);
        if (!Files.exists(p)) {
            try (InputStream in = Nf4GoldenTest.class.getResourceAsStream("/golden/nf4/" + file)) {
                Files.copy(in, p);
            }
        }
        return p;
    }

    @ParameterizedTest(name = "{0} on {1}")
    @MethodSource("casesOnPaths")
    void quantizeReproducesBitsandbytes(Case c, String cpuPath) throws IOException {
        io.qkern.Qkern.setCpuPath(cpuPath);
        try (SafetensorsFile input = SafetensorsFile.open(resource(c.name() + ".input.safetensors"));
                SafetensorsFile golden = SafetensorsFile.open(resource(c.name() + ".nf4.safetensors"))) {
            TensorInfo info = input.info(c.tensor());
            assertEquals(c.dtype(), info.dtype());
            try (Tensor x = Tensor.allocate(info.dtype(), Device.CPU, info.shape())) {
                MemorySegment.copy(input.data(c.tensor()), 0, x.segment(), 0, x.byteSize());
                try (Nf4Tensor q = Nf4.quantize(c.tensor(), x, new Nf4.Options(c.blocksize(), c.doubleQuant()))) {
                    assertArrayEquals(bytes(golden.data(c.tensor())), q.packed().toByteArray(), "packed codes");
                    if (!c.doubleQuant()) {
                        assertArrayEquals(bytes(golden.data(c.tensor() + Nf4Tensor.ABSMAX)), q.absmax().toByteArray(),
                                "absmax bits");
                    } else {
                        Nf4QuantState goldenState = Nf4Tensor.read(golden, c.tensor(), Device.CPU).quantState();
                        assertEquals(goldenState.nestedOffset(), q.quantState().nestedOffset(), "nested offset");
                        assertArrayEquals(bytes(golden.data(c.tensor() + Nf4Tensor.NESTED_ABSMAX)),
                                q.doubleQuant().nestedAbsmax().toByteArray(), "nested absmax");
                        // 8-bit absmax codes may differ from bitsandbytes by the mean's last bit (spec);
                        // on these cases they agree exactly.
                        assertArrayEquals(bytes(golden.data(c.tensor() + Nf4Tensor.ABSMAX)),
                                q.doubleQuant().codes().toByteArray(), "absmax codes");
                    }
                    // what qkern writes is what bitsandbytes wrote, tensor for tensor
                    Path out = dir.resolve(c.name() + "." + cpuPath + ".qkern.safetensors");
                    SafetensorsWriter w = SafetensorsWriter.create(out);
                    List<Tensor> keep = q.addTo(w, c.tensor());
                    w.write();
                    keep.forEach(Tensor::close);
                    try (SafetensorsFile mine = SafetensorsFile.open(out)) {
                        assertEquals(golden.names().stream().sorted().toList(), mine.names().stream().sorted().toList());
                        for (String n : golden.names()) {
                            assertEquals(golden.info(n).dtype(), mine.info(n).dtype(), n);
                            assertArrayEquals(golden.info(n).shape(), mine.info(n).shape(), n);
                            assertArrayEquals(bytes(golden.data(n)), bytes(mine.data(n)), n);
                        }
                    }
                }
            }
        }
    }

    @ParameterizedTest(name = "{0} on {1}")
    @MethodSource("casesOnPaths")
    void dequantizeOfBitsandbytesFileIsBitExact(Case c, String cpuPath) throws IOException {
        io.qkern.Qkern.setCpuPath(cpuPath);
        try (SafetensorsFile golden = SafetensorsFile.open(resource(c.name() + ".nf4.safetensors"));
                SafetensorsFile expected = SafetensorsFile.open(resource(c.name() + ".dequant.safetensors"));
                Nf4Tensor q = Nf4Tensor.read(golden, c.tensor(), Device.CPU)) {
            assertEquals(c.blocksize(), q.blocksize());
            assertEquals(c.doubleQuant(), q.isDoubleQuantized());
            assertEquals(c.dtype(), q.originalDtype());
            try (Tensor out = Tensor.allocate(c.dtype(), Device.CPU, q.shape())) {
                out.fillBytes(0xFF);  // poison: NaN in every float format
                Nf4.dequantizeInto(q, out);
                assertArrayEquals(bytes(expected.data(c.tensor())), out.toByteArray(), "dequantized bits");
            }
        }
    }

    static byte[] bytes(MemorySegment s) {
        return s.toArray(ValueLayout.JAVA_BYTE);
    }


}
