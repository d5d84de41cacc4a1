package io.qkern.cli;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.qkern.DType;
import io.qkern.Qkern;
import io.qkern.io.Json;
import io.qkern.io.SafetensorsFile;
import io.qkern.io.SafetensorsWriter;
import io.qkern.io.TensorInfo;
import io.qkern.nf4.Nf4QuantState;
import io.qkern.nf4.Nf4Tensor;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.PrintStream;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.TreeMap;
import java.util.stream.Stream;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

/** The {@code qkern} command line, driven in-process: exit codes, messages and the files it writes. */
class CliTest {
    static final String W = "model.layers.0.mlp.down_proj.weight";

    @TempDir
    static Path goldenDir;

    @TempDir
    Path dir;

    // ---- running the CLI -------------------------------------------------------------------------------

    record Result(int code, String out, String err) {
        String all() {
            return out + err;
        }

        @Override
        public String toString() {
            return "exit " + code + "\n--- stdout\n" + out + "--- stderr\n" + err;
        }
    }

    static Result qkern(Object... args) {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        ByteArrayOutputStream err = new ByteArrayOutputStream();
        String[] argv = Arrays.stream(args).map(String::valueOf).toArray(String[]::new);
        int code;
        try (PrintStream o = new PrintStream(out, true, StandardCharsets.UTF_8);
                PrintStream e = new PrintStream(err, true, StandardCharsets.UTF_8)) {
            code = new Main(o, e).run(argv);
        }
        return new Result(code, out.toString(StandardCharsets.UTF_8), err.toString(StandardCharsets.UTF_8));
    }

    static Result expect(int code, Object... args) {
        Result r = qkern(args);
        assertEquals(code, r.code(), () -> "qkern " + Arrays.toString(args) + "\n" + r);
        return r;
    }

    static void assertContains(String text, String... parts) {
        for (String p : parts) {
            assertTrue(text.contains(p), () -> "\"" + p + "\" not in:\n" + text);
        }
    }

    // ---- files ----------------------------------------------------------------------------------------------

    static Path golden(String file) throws IOException {
        Path p = goldenDir.resolve(file);
        if (!Files.exists(p)) {
            try (InputStream in = CliTest.class.getResourceAsStream("/golden/nf4/" + file)) {
                assertTrue(in != null, "test resource /golden/nf4/" + file);
                Files.copy(in, p);
            }
        }
        return p;
    }

    static List<String> listing(Path d) throws IOException {
        try (Stream<Path> s = Files.list(d)) {
            return s.map(p -> p.getFileName().toString()).sorted().toList();
        }
    }

    static byte[] bytes(SafetensorsFile f, String name) {
        return f.data(name).toArray(ValueLayout.JAVA_BYTE);
    }

    /** name -> (dtype, shape, bytes) of every tensor in a file. */
    record T(DType dtype, long[] shape, byte[] data) {}

    static Map<String, T> tensors(Path file) throws IOException {
        Map<String, T> m = new TreeMap<>();
        try (SafetensorsFile f = SafetensorsFile.open(file)) {
            for (TensorInfo t : f.tensors()) {
                m.put(t.name(), new T(t.dtype(), t.shape(), bytes(f, t.name())));
            }
        }
        return m;
    }

    static void assertSameTensors(Path expected, Path actual) throws IOException {
        Map<String, T> e = tensors(expected);
        Map<String, T> a = tensors(actual);
        assertEquals(e.keySet(), a.keySet(), "tensor names");
        for (String n : e.keySet()) {
            assertEquals(e.get(n).dtype(), a.get(n).dtype(), n + " dtype");
            assertArrayEquals(e.get(n).shape(), a.get(n).shape(), n + " shape");
            assertArrayEquals(e.get(n).data(), a.get(n).data(), n + " bytes");
        }
    }

    static void write(Path file, Map<String, T> tensors) throws IOException {
        SafetensorsWriter w = SafetensorsWriter.create(file);
        tensors.forEach((n, t) -> w.add(n, t.dtype(), t.shape(), MemorySegment.ofArray(t.data())));
        w.write();
    }

    static Map<String, Object> json(Path p) throws IOException {
        Object o = Json.parse(Files.readString(p));
        assertInstanceOf(Map.class, o, p.toString());
        @SuppressWarnings("unchecked")
        Map<String, Object> m = (Map<String, Object>) o;
        return m;
    }

    static short bf16(float f) {
        int bits = Float.floatToRawIntBits(f);
        return (short) ((bits + 0x7FFF + ((bits >>> 16) & 1)) >>> 16);
    }

    static float bf16ToFloat(byte[] b, int i) {
        return Float.intBitsToFloat(((b[2 * i] & 0xff) | (b[2 * i + 1] & 0xff) << 8) << 16);
    }

    /** A BF16 tensor of gaussian values (scale varies per row, so blocks have different absmax). */
    static T randomBf16(Random rnd, long... shape) {
        int n = (int) Arrays.stream(shape).reduce(1, (x, y) -> x * y);
        byte[] b = new byte[2 * n];
        for (int i = 0; i < n; i++) {
            float scale = 0.02f * (1 + (i / 32) % 5);
            short s = bf16((float) rnd.nextGaussian() * scale);
            b[2 * i] = (byte) s;
            b[2 * i + 1] = (byte) (s >> 8);
        }
        return new T(DType.BF16, shape, b);
    }

    // ---- usage errors ------------------------------------------------------------------------------------------

    @Test
    void noArgumentsPrintsUsageAndExits2() {
        Result r = expect(2);
        assertContains(r.out(), "usage: qkern <command>");
    }

    @Test
    void helpExits0() {
        for (String h : List.of("help", "--help", "-h")) {
            Result r = expect(0, h);
            assertContains(r.out(), "usage: qkern <command>", "nf4 quantize IN OUT", "run --list", "info");
            assertEquals("", r.err());
        }
    }

    @Test
    void usageErrorsExit2AndNameTheProblem() throws IOException {
        Path in = golden("f32_8x128_bs64.input.safetensors");
        Path out = dir.resolve("out.safetensors");
        assertContains(expect(2, "frobnicate").err(), "unknown command \"frobnicate\"");
        assertContains(expect(2, "nf4").err(), "quantize or dequantize");
        assertContains(expect(2, "nf4", "squash", in, out).err(), "unknown nf4 subcommand \"squash\"");
        assertContains(expect(2, "nf4", "quantize", in).err(), "expected 2 argument(s), got 1", "usage:");
        assertContains(expect(2, "nf4", "quantize", in, out, "extra").err(), "got 3");
        assertContains(expect(2, "nf4", "quantize", in, out, "--blocksize", "48").err(), "48");
        assertContains(expect(2, "nf4", "quantize", in, out, "--blocksize=8192").err(), "8192");
        assertContains(expect(2, "nf4", "quantize", in, out, "--blocksize", "abc").err(), "\"abc\"");
        assertContains(expect(2, "nf4", "quantize", in, out, "--blocksize").err(), "--blocksize needs a value");
        assertContains(expect(2, "nf4", "quantize", in, out, "--include", "(unclosed").err(),
                "--include is not a valid regular expression");
        assertContains(expect(2, "nf4", "quantize", in, out, "--frobnicate").err(), "unknown option --frobnicate");
        assertContains(expect(2, "nf4", "quantize", in, out, "--double-quant=yes").err(), "--double-quant");
        assertContains(expect(2, "nf4", "quantize", in, out, "--device", "tpu").err(), "\"tpu\"");
        assertContains(expect(2, "nf4", "dequantize", in, out, "--dtype", "i8").err(), "i8");
        assertContains(expect(2, "nf4", "dequantize", in, out, "--dtype", "float8").err(), "float8");
        assertContains(expect(2, "nf4", "dequantize", in, out, "--blocksize", "64").err(), "unknown option --blocksize");
        assertContains(expect(2, "info", "extra").err(), "expected 0 argument(s)");
        // a usage error touches no file
        assertEquals(List.of(), listing(dir));
    }

    @Test
    void infoPrintsTheCpuPath() {
        Result r = expect(0, "info");
        assertContains(r.out(), "cpu path    " + Qkern.cpuPath(), "abi ", "cuda ");
    }

    // ---- golden files: the CLI reproduces bitsandbytes ----------------------------------------------------------

    record Case(String name, int blocksize, boolean doubleQuant) {
        @Override
        public String toString() {
            return name;
        }
    }

    static List<Case> goldenCases() throws IOException {
        try (InputStream in = CliTest.class.getResourceAsStream("/golden/nf4/manifest.json")) {
            Map<?, ?> manifest = (Map<?, ?>) Json.parse(new String(in.readAllBytes(), StandardCharsets.UTF_8));
            List<Case> out = new ArrayList<>();
            for (Object o : (List<?>) manifest.get("cases")) {
                Map<?, ?> c = (Map<?, ?>) o;
                assertEquals(W, c.get("tensor"));
                out.add(new Case((String) c.get("name"), ((Long) c.get("blocksize")).intValue(),
                        (Boolean) c.get("double_quant")));
            }
            assertEquals(7, out.size());
            return out;
        }
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("goldenCases")
    void quantizeAndDequantizeFilesMatchBitsandbytes(Case c) throws IOException {
        Path in = golden(c.name() + ".input.safetensors");
        Path out = dir.resolve("q.safetensors");
        List<Object> args = new ArrayList<>(List.of("nf4", "quantize", in, out, "--blocksize", c.blocksize()));
        if (c.doubleQuant()) {
            args.add("--double-quant");
        }
        Result q = expect(0, args.toArray());
        assertContains(q.out(), "quantized 1 tensor(s) to NF4 (blocksize " + c.blocksize());
        assertSameTensors(golden(c.name() + ".nf4.safetensors"), out);

        Path back = dir.resolve("d.safetensors");
        Result d = expect(0, "nf4", "dequantize", golden(c.name() + ".nf4.safetensors"), back);
        assertContains(d.out(), "dequantized 1 NF4 tensor(s)");
        assertSameTensors(golden(c.name() + ".dequant.safetensors"), back);
        assertEquals(List.of("d.safetensors", "q.safetensors"), listing(dir), "no temp files left");
    }

    // ---- a Hugging Face model directory ------------------------------------------------------------------------------

    static final String EMBED = "model.embed_tokens.weight";
    static final String Q = "model.layers.0.self_attn.q_proj.weight";
    static final String UP = "model.layers.0.mlp.up_proj.weight";
    static final String NORM = "model.layers.0.input_layernorm.weight";
    static final String HEAD = "lm_head.weight";
    static final String SHARD1 = "model-00001-of-00002.safetensors";
    static final String SHARD2 = "model-00002-of-00002.safetensors";

    /** The original tensors by name. */
    Map<String, T> original;

    Path buildModel(Path model, Map<Integer, Float> qProjOverrides) throws IOException {
        Random rnd = new Random(1234);
        original = new LinkedHashMap<>();
        original.put(EMBED, randomBf16(rnd, 64, 32));
        original.put(Q, randomBf16(rnd, 32, 32));
        original.put(UP, randomBf16(rnd, 48, 32));
        T norm = randomBf16(rnd, 32);
        original.put(NORM, norm);
        original.put(HEAD, randomBf16(rnd, 64, 32));
        byte[] q = original.get(Q).data();
        qProjOverrides.forEach((i, v) -> {
            short s = bf16(v);
            q[2 * i] = (byte) s;
            q[2 * i + 1] = (byte) (s >> 8);
        });
        Files.createDirectories(model);
        Map<String, T> s1 = new LinkedHashMap<>();
        s1.put(EMBED, original.get(EMBED));
        s1.put(Q, original.get(Q));
        s1.put(NORM, original.get(NORM));
        Map<String, T> s2 = new LinkedHashMap<>();
        s2.put(UP, original.get(UP));
        s2.put(HEAD, original.get(HEAD));
        write(model.resolve(SHARD1), s1);
        write(model.resolve(SHARD2), s2);
        long total = original.values().stream().mapToLong(t -> t.data().length).sum();
        Map<String, Object> index = new LinkedHashMap<>();
        index.put("metadata", Map.of("total_size", total));
        Map<String, Object> wm = new TreeMap<>();
        s1.keySet().forEach(n -> wm.put(n, SHARD1));
        s2.keySet().forEach(n -> wm.put(n, SHARD2));
        index.put("weight_map", wm);
        Files.writeString(model.resolve("model.safetensors.index.json"), Json.writePretty(index));
        Files.writeString(model.resolve("config.json"), """
                {
                  "architectures": ["LlamaForCausalLM"],
                  "hidden_size": 32,
                  "model_type": "llama",
                  "torch_dtype": "bfloat16",
                  "vocab_size": 64
                }
                """);
        Files.writeString(model.resolve("tokenizer.json"), "{\"not\": \"really a tokenizer\", \"ünï\": \"çødé\"}\n");
        Files.createDirectories(model.resolve("extra/nested"));
        Files.write(model.resolve("extra/nested/blob.bin"), new byte[] {0, 1, 2, (byte) 0xFF, 42});
        Files.writeString(model.resolve("extra/README.md"), "# a model card\n");
        return model;
    }

    /** All tensors of a model directory, by name, with the shard each lives in. */
    static Map<String, T> modelTensors(Path model, Map<String, String> shardOut) throws IOException {
        Map<String, T> all = new TreeMap<>();
        for (String f : listing(model)) {
            if (f.endsWith(".safetensors")) {
                Map<String, T> t = tensors(model.resolve(f));
                for (String n : t.keySet()) {
                    assertNull(all.put(n, t.get(n)), n + " appears in two shards");
                    shardOut.put(n, f);
                }
            }
        }
        return all;
    }

    static void assertIndexMatches(Path model) throws IOException {
        Map<String, String> shardOf = new TreeMap<>();
        Map<String, T> all = modelTensors(model, shardOf);
        Map<String, Object> index = json(model.resolve("model.safetensors.index.json"));
        assertEquals(shardOf, index.get("weight_map"), "weight_map lists every tensor with its shard");
        long sum = all.values().stream().mapToLong(t -> t.data().length).sum();
        assertEquals(sum, ((Map<?, ?>) index.get("metadata")).get("total_size"), "metadata.total_size");
    }

    static void assertNf4(Map<String, T> tensors, String name, long numel) {
        T w = tensors.get(name);
        assertTrue(w != null, name);
        assertEquals(DType.U8, w.dtype(), name);
        assertArrayEquals(new long[] {numel / 2, 1}, w.shape(), name);
        for (String suffix : List.of(Nf4Tensor.ABSMAX, Nf4Tensor.QUANT_MAP, Nf4Tensor.QUANT_STATE)) {
            assertTrue(tensors.containsKey(name + suffix), name + suffix);
        }
        assertEquals(DType.F32, tensors.get(name + Nf4Tensor.ABSMAX).dtype());
        assertArrayEquals(new long[] {numel / 64}, tensors.get(name + Nf4Tensor.ABSMAX).shape());
        Nf4QuantState st = Nf4QuantState.parse(new String(tensors.get(name + Nf4Tensor.QUANT_STATE).data(),
                StandardCharsets.UTF_8));
        assertEquals(DType.BF16, st.dtype());
        assertEquals(64, st.blocksize());
        assertEquals(numel, st.numel());
    }

    void assertUnchanged(Map<String, T> tensors, String name) {
        T o = original.get(name);
        T t = tensors.get(name);
        assertTrue(t != null, name);
        assertEquals(o.dtype(), t.dtype(), name);
        assertArrayEquals(o.shape(), t.shape(), name);
        assertArrayEquals(o.data(), t.data(), name + " bytes unchanged");
        for (String suffix : List.of(Nf4Tensor.ABSMAX, Nf4Tensor.QUANT_MAP, Nf4Tensor.QUANT_STATE)) {
            assertFalse(tensors.containsKey(name + suffix), name + suffix);
        }
    }

    static void assertSameFile(Path a, Path b) throws IOException {
        assertTrue(Files.isRegularFile(b), b.toString());
        assertArrayEquals(Files.readAllBytes(a), Files.readAllBytes(b), b.toString());
    }

    void assertOtherFilesCopied(Path in, Path out) throws IOException {
        assertSameFile(in.resolve("tokenizer.json"), out.resolve("tokenizer.json"));
        assertSameFile(in.resolve("extra/nested/blob.bin"), out.resolve("extra/nested/blob.bin"));
        assertSameFile(in.resolve("extra/README.md"), out.resolve("extra/README.md"));
    }

    static void assertNoTempLeft(Path parent) throws IOException {
        for (String f : listing(parent)) {
            assertFalse(f.startsWith(".") || f.contains(".tmp"), "leftover temp entry " + f + " in " + parent);
        }
    }

    @Test
    void modelDirectoryQuantizesAndDequantizes() throws IOException {
        Path model = buildModel(dir.resolve("model"), Map.of());
        Path out = dir.resolve("model-nf4");
        Result q = expect(0, "nf4", "quantize", model, out);
        assertContains(q.out(), "quantized 2 tensor(s)", "passed 3 through");
        assertEquals("", q.err());
        assertEquals(List.of("model", "model-nf4"), listing(dir), "no temp directory left beside the output");

        assertEquals(listing(model), listing(out), "same files");
        Map<String, String> shardOf = new TreeMap<>();
        Map<String, T> t = modelTensors(out, shardOf);
        assertNf4(t, Q, 32 * 32);
        assertNf4(t, UP, 48 * 32);
        assertEquals(SHARD1, shardOf.get(Q + Nf4Tensor.QUANT_STATE), "companions stay in their weight's shard");
        assertEquals(SHARD2, shardOf.get(UP + Nf4Tensor.ABSMAX));
        assertUnchanged(t, EMBED);
        assertUnchanged(t, HEAD);
        assertUnchanged(t, NORM);
        assertEquals(5 + 2 * 3, t.size());
        assertIndexMatches(out);

        Map<String, Object> config = json(out.resolve("config.json"));
        assertEquals("bfloat16", config.get("torch_dtype"));
        assertEquals(32L, config.get("hidden_size"), "other keys kept");
        Map<?, ?> qc = (Map<?, ?>) config.get("quantization_config");
        assertEquals("bitsandbytes", qc.get("quant_method"));
        assertEquals("nf4", qc.get("bnb_4bit_quant_type"));
        assertEquals(Boolean.TRUE, qc.get("load_in_4bit"));
        assertEquals(Boolean.FALSE, qc.get("load_in_8bit"));
        assertEquals(Boolean.FALSE, qc.get("bnb_4bit_use_double_quant"));
        assertEquals("bfloat16", qc.get("bnb_4bit_compute_dtype"));
        List<?> skip = (List<?>) qc.get("llm_int8_skip_modules");
        assertTrue(skip.contains("lm_head"), String.valueOf(skip));
        assertFalse(skip.contains("model.layers.0.self_attn.q_proj"), String.valueOf(skip));
        assertOtherFilesCopied(model, out);

        // and back
        Path back = dir.resolve("model-back");
        Result d = expect(0, "nf4", "dequantize", out, back);
        assertContains(d.out(), "dequantized 2 NF4 tensor(s)", "passed 3 through");
        assertEquals(List.of("model", "model-back", "model-nf4"), listing(dir));
        Map<String, Object> backConfig = json(back.resolve("config.json"));
        assertFalse(backConfig.containsKey("quantization_config"), backConfig.toString());
        assertEquals(json(model.resolve("config.json")), backConfig, "config as it was before quantization");
        Map<String, String> backShards = new TreeMap<>();
        Map<String, T> b = modelTensors(back, backShards);
        assertEquals(original.keySet().stream().sorted().toList(), List.copyOf(b.keySet()), "no companions left");
        assertEquals(SHARD1, backShards.get(Q));
        assertEquals(SHARD2, backShards.get(UP));
        assertUnchanged(b, EMBED);
        assertUnchanged(b, HEAD);
        assertUnchanged(b, NORM);
        for (String name : List.of(Q, UP)) {
            T o = original.get(name);
            T y = b.get(name);
            assertEquals(DType.BF16, y.dtype(), name);
            assertArrayEquals(o.shape(), y.shape(), name);
            assertWithinNf4Bound(name, o.data(), y.data(), 64);
        }
        assertIndexMatches(back);
        assertOtherFilesCopied(model, back);
    }

    static void assertWithinNf4Bound(String name, byte[] original, byte[] dequantized, int blocksize) {
        int n = original.length / 2;
        boolean anyDifferent = false;
        for (int b0 = 0; b0 < n; b0 += blocksize) {
            float absmax = 0;
            for (int i = b0; i < Math.min(n, b0 + blocksize); i++) {
                absmax = Math.max(absmax, Math.abs(bf16ToFloat(original, i)));
            }
            for (int i = b0; i < Math.min(n, b0 + blocksize); i++) {
                float x = bf16ToFloat(original, i);
                float y = bf16ToFloat(dequantized, i);
                assertTrue(Float.isFinite(y), name + "[" + i + "] is " + y);
                double bound = absmax * 0.16 + Math.abs(y) * 0x1p-8;
                assertTrue(Math.abs(x - y) <= bound, name + "[" + i + "]: " + x + " -> " + y + " (bound " + bound + ")");
                anyDifferent |= x != y;
            }
        }
        assertTrue(anyDifferent, name + ": dequantized values are not simply the originals");
    }

    @Test
    void includeSelectsWhatToQuantize() throws IOException {
        Path model = buildModel(dir.resolve("model"), Map.of());
        Path out = dir.resolve("out");
        Result q = expect(0, "nf4", "quantize", model, out, "--include", "lm_head", "--blocksize", "64");
        assertContains(q.out(), "quantized 1 tensor(s)", "passed 4 through");
        Map<String, T> t = modelTensors(out, new TreeMap<>());
        assertNf4(t, HEAD, 64 * 32);
        for (String n : List.of(EMBED, Q, UP, NORM)) {
            assertUnchanged(t, n);
        }
        assertIndexMatches(out);
        List<?> skip = (List<?>) ((Map<?, ?>) json(out.resolve("config.json")).get("quantization_config"))
                .get("llm_int8_skip_modules");
        assertTrue(skip.contains("model.layers.0.self_attn.q_proj") && skip.contains("model.layers.0.mlp.up_proj"),
                String.valueOf(skip));
        assertFalse(skip.contains("lm_head"), String.valueOf(skip));

        // an include that matches nothing: output equals input, with a warning
        Path none = dir.resolve("none");
        Result r = expect(0, "nf4", "quantize", model, none, "--include", "^nothing$");
        assertContains(r.err(), "no tensor matched");
        Map<String, T> same = modelTensors(none, new TreeMap<>());
        for (String n : original.keySet()) {
            assertUnchanged(same, n);
        }
    }

    @Test
    void doubleQuantDirectory() throws IOException {
        Path model = buildModel(dir.resolve("model"), Map.of());
        Path out = dir.resolve("out");
        expect(0, "nf4", "quantize", model, out, "--double-quant");
        Map<String, T> t = modelTensors(out, new TreeMap<>());
        assertEquals(DType.U8, t.get(Q + Nf4Tensor.ABSMAX).dtype());
        assertTrue(t.containsKey(Q + Nf4Tensor.NESTED_ABSMAX) && t.containsKey(Q + Nf4Tensor.NESTED_QUANT_MAP));
        assertEquals(Boolean.TRUE, ((Map<?, ?>) json(out.resolve("config.json")).get("quantization_config"))
                .get("bnb_4bit_use_double_quant"));
        assertIndexMatches(out);
        Path back = dir.resolve("back");
        expect(0, "nf4", "dequantize", out, back);
        Map<String, T> b = modelTensors(back, new TreeMap<>());
        // the 8-bit absmax adds a little error on top of NF4's
        for (String name : List.of(Q, UP)) {
            assertWithinNf4Bound(name, original.get(name).data(), b.get(name).data(), 64);
        }
    }

    // ---- refusing, failing, leaving nothing behind -------------------------------------------------------------

    @Test
    void refusesToOverwriteANonEmptyOutputDirectory() throws IOException {
        Path model = buildModel(dir.resolve("model"), Map.of());
        Path out = dir.resolve("out");
        Files.createDirectories(out);
        Files.writeString(out.resolve("precious.txt"), "keep me");
        Result r = expect(1, "nf4", "quantize", model, out);
        assertContains(r.err(), out.toAbsolutePath().toString(), "refusing to overwrite");
        assertEquals(List.of("precious.txt"), listing(out));
        assertEquals("keep me", Files.readString(out.resolve("precious.txt")));
        assertEquals(List.of("model", "out"), listing(dir), "no temp directory left");
        // dequantize refuses the same way
        assertContains(expect(1, "nf4", "dequantize", model, out).err(), "refusing to overwrite");
        assertEquals(List.of("precious.txt"), listing(out));
        // an existing empty directory is fine
        Path empty = Files.createDirectories(dir.resolve("empty"));
        expect(0, "nf4", "quantize", model, empty);
        assertTrue(Files.isRegularFile(empty.resolve(SHARD1)));
    }

    @Test
    void outputInsideTheInputDirectoryIsRefused() throws IOException {
        Path model = buildModel(dir.resolve("model"), Map.of());
        List<String> before = listing(model);
        assertContains(expect(1, "nf4", "quantize", model, model.resolve("nf4")).err(), "inside the input directory");
        assertContains(expect(1, "nf4", "quantize", model, model.resolve("a/../nf4")).err(), "inside the input");
        assertContains(expect(1, "nf4", "quantize", model, model).err(), "inside the input directory");
        assertEquals(before, listing(model), "nothing written into the input");
        assertEquals(List.of("model"), listing(dir));
    }

    @Test
    void emptyAndAllZeroWeightsRoundTrip() throws IOException {
        Map<String, T> t = new LinkedHashMap<>();
        t.put("a.weight", new T(DType.BF16, new long[] {0, 32}, new byte[0]));
        t.put("b.weight", new T(DType.F16, new long[] {4, 32}, new byte[256]));
        t.put("c.weight", new T(DType.F32, new long[] {3, 3}, new byte[36]));
        Path in = dir.resolve("in.safetensors");
        write(in, t);
        for (boolean dq : new boolean[] {false, true}) {
            Path q = dir.resolve("q.safetensors");
            Path back = dir.resolve("back.safetensors");
            Result r = dq ? expect(0, "nf4", "quantize", in, q, "--double-quant") : expect(0, "nf4", "quantize", in, q);
            assertContains(r.out(), "quantized 3 tensor(s)");
            Map<String, T> nf4 = tensors(q);
            assertArrayEquals(new long[] {0, 1}, nf4.get("a.weight").shape());
            assertArrayEquals(new long[] {5, 1}, nf4.get("c.weight").shape(), "9 codes take 5 bytes");
            expect(0, "nf4", "dequantize", q, back);
            assertSameTensors(in, back);
        }
    }

    @Test
    void nanInASingleFileFailsNamingTheElementAndWritesNothing() throws IOException {
        Path in = dir.resolve("in.safetensors");
        Random rnd = new Random(7);
        Map<String, T> t = new LinkedHashMap<>();
        t.put(NORM, randomBf16(rnd, 32));
        T q = randomBf16(rnd, 32, 32);
        int flat = 5 * 32 + 7;
        q.data()[2 * flat] = (byte) 0xC0;  // bf16 NaN 0x7FC0, little-endian
        q.data()[2 * flat + 1] = (byte) 0x7F;
        t.put(Q, q);
        write(in, t);
        Path out = dir.resolve("out.safetensors");
        Result r = expect(1, "nf4", "quantize", in, out);
        assertContains(r.err(), Q, "[5, 7]", "NaN");
        assertEquals(List.of("in.safetensors"), listing(dir), "no output and no temp file");

        // an existing output file is left exactly as it was
        Files.writeString(out, "the old file");
        expect(1, "nf4", "quantize", in, out);
        assertEquals("the old file", Files.readString(out));
        assertEquals(List.of("in.safetensors", "out.safetensors"), listing(dir));

        // Inf is named too
        q.data()[2 * flat] = (byte) 0x80;  // bf16 -Inf 0xFF80
        q.data()[2 * flat + 1] = (byte) 0xFF;
        write(in, t);
        assertContains(expect(1, "nf4", "quantize", in, out).err(), "[5, 7]", "-Inf");
    }

    @Test
    void nanInAModelDirectoryLeavesNoOutputDirectory() throws IOException {
        // the bad weight is in the second shard, so the first shard was already written when it fails
        Path model = dir.resolve("model");
        buildModel(model, Map.of());
        Random rnd = new Random(3);
        T up = randomBf16(rnd, 48, 32);
        int flat = 40 * 32 + 31;
        up.data()[2 * flat] = (byte) 0xC0;
        up.data()[2 * flat + 1] = (byte) 0x7F;
        Map<String, T> s2 = new LinkedHashMap<>();
        s2.put(UP, up);
        s2.put(HEAD, original.get(HEAD));
        write(model.resolve(SHARD2), s2);
        Result r = expect(1, "nf4", "quantize", model, dir.resolve("out"));
        assertContains(r.err(), UP, "[40, 31]");
        assertEquals(List.of("model"), listing(dir), "no output directory, no hidden temp directory");

        // NaN in the first shard's q_proj at [5, 7]
        Path model2 = dir.resolve("model2");
        buildModel(model2, Map.of(5 * 32 + 7, Float.NaN));
        Result r2 = expect(1, "nf4", "quantize", model2, dir.resolve("out"));
        assertContains(r2.err(), Q, "[5, 7]");
        assertEquals(List.of("model", "model2"), listing(dir));
    }

    @Test
    void corruptOrMissingInputFailsNamingTheFile() throws IOException {
        byte[] good = Files.readAllBytes(golden("f32_8x128_bs64.input.safetensors"));
        Path truncated = dir.resolve("truncated.safetensors");
        Files.write(truncated, Arrays.copyOf(good, good.length - 100));
        Path out = dir.resolve("out.safetensors");
        assertContains(expect(1, "nf4", "quantize", truncated, out).err(), "qkern: error:", truncated.toString());
        Path headerOnly = dir.resolve("header.safetensors");
        Files.write(headerOnly, Arrays.copyOf(good, 20));
        assertContains(expect(1, "nf4", "quantize", headerOnly, out).err(), headerOnly.toString());
        Path garbage = dir.resolve("garbage.safetensors");
        Files.writeString(garbage, "this is not a safetensors file at all");
        assertContains(expect(1, "nf4", "quantize", garbage, out).err(), garbage.toString());
        Path missing = dir.resolve("missing.safetensors");
        assertContains(expect(1, "nf4", "quantize", missing, out).err(), missing.toString());
        assertContains(expect(1, "nf4", "dequantize", missing, out).err(), missing.toString());
        // a truncated NF4 file on dequantize
        byte[] nf4 = Files.readAllBytes(golden("f32_8x128_bs64.nf4.safetensors"));
        Path badNf4 = dir.resolve("bad.nf4.safetensors");
        Files.write(badNf4, Arrays.copyOf(nf4, nf4.length - 1));
        assertContains(expect(1, "nf4", "dequantize", badNf4, out).err(), badNf4.toString());
        assertFalse(Files.exists(out));
        assertNoTempLeft(dir);
    }

    @Test
    void corruptShardInAModelDirectoryLeavesNoOutput() throws IOException {
        Path model = buildModel(dir.resolve("model"), Map.of());
        byte[] s2 = Files.readAllBytes(model.resolve(SHARD2));
        Files.write(model.resolve(SHARD2), Arrays.copyOf(s2, s2.length / 2));
        Result r = expect(1, "nf4", "quantize", model, dir.resolve("out"));
        assertContains(r.err(), SHARD2);
        assertEquals(List.of("model"), listing(dir));
        // an index naming a shard outside the directory is refused
        Path model2 = buildModel(dir.resolve("model2"), Map.of());
        Files.writeString(model2.resolve("model.safetensors.index.json"),
                "{\"metadata\": {}, \"weight_map\": {\"x\": \"../evil.safetensors\"}}");
        assertContains(expect(1, "nf4", "quantize", model2, dir.resolve("out")).err(), "../evil.safetensors");
        assertEquals(List.of("model", "model2"), listing(dir));
    }

    @Test
    void quantizingAnAlreadyQuantizedFileIsRefused() throws IOException {
        Path out = dir.resolve("out.safetensors");
        Result r = expect(1, "nf4", "quantize", golden("f32_8x128_bs64.nf4.safetensors"), out);
        assertContains(r.err(), "already NF4-quantized");
        assertFalse(Files.exists(out));
    }

    @Test
    void cudaDeviceWithoutCudaFailsWithTheReason() throws IOException {
        Assumptions.assumeFalse(Qkern.cudaAvailable(), "CUDA is available here");
        Path out = dir.resolve("out.safetensors");
        Result r = expect(1, "nf4", "quantize", golden("f32_8x128_bs64.input.safetensors"), out, "--device", "cuda:0");
        assertContains(r.err(), "CUDA is unavailable", Qkern.info().cudaStatus());
        assertEquals(List.of(), listing(dir));
    }

    // ---- run ----------------------------------------------------------------------------------------------------

    @Test
    void runListShowsOpsWithInputsOutputsAndParams() {
        Result r = expect(0, "run", "--list");
        assertContains(r.out(), "nf4.quantize", "nf4.dequantize", "in   x:", "out  packed:", "out  absmax:",
                "out  nested_absmax:", "set  blocksize=64", "set  double_quant=false", "in   packed:",
                "in   nested_offset:", "[optional]", "out  out:", "set  shape=(required)", "set  dtype=f32");
        assertContains(expect(2, "run", "--list", "extra").err(), "expected 0 argument(s)");
    }

    /** A file holding the given tensors of {@code source}, renamed. */
    static Path extract(Path source, Path target, Map<String, String> newNameToOld, Map<String, long[]> reshape)
            throws IOException {
        Map<String, T> src = tensors(source);
        Map<String, T> out = new LinkedHashMap<>();
        newNameToOld.forEach((n, o) -> {
            T t = src.get(o);
            assertTrue(t != null, o + " in " + source);
            out.put(n, new T(t.dtype(), reshape.getOrDefault(n, t.shape()), t.data()));
        });
        write(target, out);
        return target;
    }

    @Test
    void runNf4QuantizeMatchesGolden() throws IOException {
        Path in = extract(golden("f32_8x128_bs64.input.safetensors"), dir.resolve("x.safetensors"), Map.of("x", W),
                Map.of());
        Path out = dir.resolve("q.safetensors");
        Result r = expect(0, "run", "nf4.quantize", in, out, "--set", "blocksize=64");
        assertContains(r.out(), "nf4.quantize on " + Qkern.defaultDevice(), out.toString());
        Map<String, T> golden = tensors(golden("f32_8x128_bs64.nf4.safetensors"));
        Map<String, T> got = tensors(out);
        assertEquals(List.of("absmax", "packed"), List.copyOf(got.keySet()));
        assertEquals(DType.U8, got.get("packed").dtype());
        assertArrayEquals(new long[] {512}, got.get("packed").shape());
        assertArrayEquals(golden.get(W).data(), got.get("packed").data(), "packed codes");
        assertEquals(DType.F32, got.get("absmax").dtype());
        assertArrayEquals(golden.get(W + Nf4Tensor.ABSMAX).data(), got.get("absmax").data(), "absmax");
    }

    @Test
    void runNf4QuantizeWithDoubleQuantMatchesGolden() throws IOException {
        String c = "bf16_96x512_bs64_dq";
        Path in = extract(golden(c + ".input.safetensors"), dir.resolve("x.safetensors"), Map.of("x", W), Map.of());
        Path out = dir.resolve("q.safetensors");
        expect(0, "run", "nf4.quantize", in, out, "--set", "blocksize=64", "double_quant=true");
        Map<String, T> golden = tensors(golden(c + ".nf4.safetensors"));
        Map<String, T> got = tensors(out);
        assertEquals(List.of("absmax", "nested_absmax", "nested_offset", "nested_quant_map", "packed"),
                List.copyOf(got.keySet()));
        assertArrayEquals(golden.get(W).data(), got.get("packed").data(), "packed codes");
        assertEquals(DType.U8, got.get("absmax").dtype());
        assertArrayEquals(golden.get(W + Nf4Tensor.ABSMAX).data(), got.get("absmax").data(), "absmax codes");
        assertArrayEquals(golden.get(W + Nf4Tensor.NESTED_ABSMAX).data(), got.get("nested_absmax").data(),
                "nested absmax");
        assertArrayEquals(golden.get(W + Nf4Tensor.NESTED_QUANT_MAP).data(), got.get("nested_quant_map").data(),
                "nested quant map");
        float offset = Nf4QuantState.parse(new String(golden.get(W + Nf4Tensor.QUANT_STATE).data(),
                StandardCharsets.UTF_8)).nestedOffset();
        assertEquals(offset, MemorySegment.ofArray(got.get("nested_offset").data())
                .get(ValueLayout.JAVA_FLOAT_UNALIGNED, 0), "nested offset");
    }

    @Test
    void runNf4DequantizeMatchesGolden() throws IOException {
        Path in = extract(golden("f32_8x128_bs64.nf4.safetensors"), dir.resolve("nf4.safetensors"),
                Map.of("packed", W, "absmax", W + Nf4Tensor.ABSMAX), Map.of());
        Path out = dir.resolve("out.safetensors");
        expect(0, "run", "nf4.dequantize", in, out, "--set", "shape=8,128", "dtype=f32");
        Map<String, T> got = tensors(out);
        assertEquals(List.of("out"), List.copyOf(got.keySet()));
        assertArrayEquals(new long[] {8, 128}, got.get("out").shape());
        assertEquals(DType.F32, got.get("out").dtype());
        assertArrayEquals(tensors(golden("f32_8x128_bs64.dequant.safetensors")).get(W).data(), got.get("out").data());
    }

    @Test
    void runNf4DequantizeDoubleQuantMatchesGolden() throws IOException {
        String c = "bf16_96x512_bs64_dq";
        Path nf4 = golden(c + ".nf4.safetensors");
        Map<String, T> g = tensors(nf4);
        float offset = Nf4QuantState.parse(new String(g.get(W + Nf4Tensor.QUANT_STATE).data(),
                StandardCharsets.UTF_8)).nestedOffset();
        byte[] off = new byte[4];
        MemorySegment.ofArray(off).set(ValueLayout.JAVA_FLOAT_UNALIGNED, 0, offset);
        Map<String, T> in = new LinkedHashMap<>();
        in.put("packed", g.get(W));
        in.put("absmax", g.get(W + Nf4Tensor.ABSMAX));
        in.put("nested_absmax", g.get(W + Nf4Tensor.NESTED_ABSMAX));
        in.put("nested_quant_map", g.get(W + Nf4Tensor.NESTED_QUANT_MAP));
        in.put("nested_offset", new T(DType.F32, new long[] {1}, off));
        Path inFile = dir.resolve("in.safetensors");
        write(inFile, in);
        Path out = dir.resolve("out.safetensors");
        expect(0, "run", "nf4.dequantize", inFile, out, "--set", "shape=96,512", "dtype=bf16");
        assertArrayEquals(tensors(golden(c + ".dequant.safetensors")).get(W).data(), tensors(out).get("out").data());
        // the U8 codes without their nested parts are refused, naming the missing one
        in.remove("nested_quant_map");
        write(inFile, in);
        assertContains(expect(1, "run", "nf4.dequantize", inFile, out, "--set", "shape=96,512").err(),
                "nested_quant_map");
    }

    @Test
    void runErrors() throws IOException {
        Path in = extract(golden("f32_8x128_bs64.input.safetensors"), dir.resolve("y.safetensors"), Map.of("y", W),
                Map.of());
        Path out = dir.resolve("out.safetensors");
        Result missing = expect(1, "run", "nf4.quantize", in, out);
        assertContains(missing.err(), "no tensor \"x\"", "nf4.quantize", "[y]");
        assertContains(expect(2, "run", "nf4.quantize", in, out, "--set", "blocksz=64").err(), "\"blocksz\"",
                "blocksize");
        assertContains(expect(2, "run", "nf4.frobnicate", in, out).err(), "unknown op \"nf4.frobnicate\"");
        assertContains(expect(2, "run", "nf4.quantize", in).err(), "expected 3 argument(s)");
        assertContains(expect(2, "run", "nf4.quantize", in, out, "--set").err(), "--set takes key=value");
        assertContains(expect(2, "run", "nf4.quantize", in, out, "--set", "=3").err(), "--set takes key=value");

        Path x = extract(golden("f32_8x128_bs64.input.safetensors"), dir.resolve("x.safetensors"), Map.of("x", W),
                Map.of());
        assertContains(expect(1, "run", "nf4.quantize", x, out, "--set", "blocksize=48").err(), "blocksize 48");
        assertContains(expect(1, "run", "nf4.quantize", x, out, "--set", "blocksize=lots").err(), "blocksize=lots");
        assertContains(expect(1, "run", "nf4.quantize", x, out, "--set", "double_quant=maybe").err(), "maybe");
        assertContains(expect(1, "run", "nf4.dequantize", x, out, "--set", "shape=8,128").err(), "\"packed\"");
        Path nf4 = extract(golden("f32_8x128_bs64.nf4.safetensors"), dir.resolve("nf4.safetensors"),
                Map.of("packed", W, "absmax", W + Nf4Tensor.ABSMAX), Map.of());
        assertContains(expect(1, "run", "nf4.dequantize", nf4, out).err(), "shape is required");
        assertContains(expect(1, "run", "nf4.dequantize", nf4, out, "--set", "shape=8,129").err(), "packed");
        for (String bad : List.of("shape=8,x", "shape=1024x", "shape=1024,", "shape=8,abc", "shape=8,-128")) {
            // 1024 elements would fit the 512 packed bytes: a shape with a dangling part must still be refused
            assertContains(expect(1, "run", "nf4.dequantize", nf4, out, "--set", bad).err(), "parameter shape");
        }
        assertFalse(Files.exists(out));
        expect(0, "run", "nf4.dequantize", nf4, out, "--set", "shape=[8, 128]");
        expect(0, "run", "nf4.dequantize", nf4, out, "--set", "shape=8x128");
        Files.delete(out);
        assertContains(expect(1, "run", "nf4.dequantize", nf4, out, "--set", "shape=8,128", "dtype=i8").err(), "I8");
        assertFalse(Files.exists(out), "no failed run wrote an output");
        assertNoTempLeft(dir);
    }

    @Test
    void runOnCudaWithoutCudaFailsWithTheReason() throws IOException {
        Assumptions.assumeFalse(Qkern.cudaAvailable(), "CUDA is available here");
        Path x = extract(golden("f32_8x128_bs64.input.safetensors"), dir.resolve("x.safetensors"), Map.of("x", W),
                Map.of());
        Path out = dir.resolve("out.safetensors");
        Result r = expect(1, "run", "nf4.quantize", x, out, "--device", "cuda:0");
        assertContains(r.err(), "BACKEND_UNAVAILABLE", "CUDA is unavailable");
        assertFalse(Files.exists(out));
        assertContains(expect(2, "run", "nf4.quantize", x, out, "--device", "cuda:x").err(), "\"cuda:x\"");
    }
}
