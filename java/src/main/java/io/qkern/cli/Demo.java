package io.qkern.cli;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Qkern;
import io.qkern.Tensor;
import io.qkern.internal.Floats;
import io.qkern.io.Json;
import io.qkern.io.SafetensorsFile;
import io.qkern.io.SafetensorsWriter;
import io.qkern.io.TensorInfo;
import io.qkern.nf4.Nf4;
import io.qkern.nf4.Nf4Checkpoint;
import io.qkern.nf4.Nf4Format;
import io.qkern.nf4.Nf4Tensor;
import java.io.IOException;
import java.io.PrintStream;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.SplittableRandom;

/**
 * {@code qkern demo}: the main job end to end on a generated sample checkpoint — a small
 * Llama-shaped Hugging Face model directory (two bf16 shards with an index) — quantized to NF4,
 * dequantized back, with the reconstruction error and the throughput printed.
 */
final class Demo {
    private static final int HIDDEN = 1024;
    private static final int INTERMEDIATE = 2816;
    private static final int LAYERS = 4;
    private static final int VOCAB = 4096;

    private final PrintStream out;
    private final PrintStream err;

    Demo(PrintStream out, PrintStream err) {
        this.out = out;
        this.err = err;
    }

    int run(Args a) throws UsageException, IOException {
        a.expectPositional(0, "qkern demo [--dir D] [--keep] [--device D]");
        Device device = a.options.containsKey("--device") ? Device.parse(a.option("--device", "cpu"))
                : Qkern.defaultDevice();
        boolean keep = a.flag("--keep") || a.options.containsKey("--dir");
        Path dir = a.options.containsKey("--dir") ? Path.of(a.option("--dir", "")) : Files.createTempDirectory("qkern-demo-");
        Files.createDirectories(dir);
        Path model = dir.resolve("sample-llama");
        Path nf4 = dir.resolve("sample-llama-nf4");
        Path dense = dir.resolve("sample-llama-dequantized");
        for (Path p : List.of(model, nf4, dense)) {
            if (Files.exists(p)) {
                throw new UsageException(p + " already exists: pick an empty --dir");
            }
        }
        try {
            Qkern.Info info = Qkern.info();
            out.printf(Locale.ROOT, "qkern %s on %s (cpu path %s, %d threads)%n", info.libraryVersion(), device,
                    info.cpuPath(), info.cpuThreads());
            long params = writeSampleModel(model);
            out.printf(Locale.ROOT, "sample checkpoint  %s: %d layers, 2 shards, %.1f M parameters, %s bf16%n", model,
                    LAYERS, params / 1e6, Main.mib(sizeOf(model)));

            Nf4Checkpoint.Report q = Nf4Checkpoint.quantize(model, nf4, new Nf4Checkpoint.Options(
                    new Nf4.Options(Nf4Format.DEFAULT_BLOCKSIZE, true), null, device, s -> {}));
            out.printf(Locale.ROOT, "quantize   -> %s: %d tensors NF4 (blocksize 64, double quant), %d dense;"
                    + " %s -> %s in %.3f s = %.2f G weights/s%n", nf4.getFileName(), q.converted(), q.passedThrough(),
                    Main.mib(q.bytesIn()), Main.mib(q.bytesOut()), q.seconds(), q.convertedElements() / q.seconds() / 1e9);

            Nf4Checkpoint.Report d = Nf4Checkpoint.dequantize(nf4, dense, null, device, s -> {});
            out.printf(Locale.ROOT, "dequantize -> %s: %d tensors back to bf16 in %.3f s = %.2f G weights/s%n",
                    dense.getFileName(), d.converted(), d.seconds(), d.convertedElements() / d.seconds() / 1e9);

            compare(model, nf4, dense, device);
            kernelThroughput(device);
            if (keep) {
                out.println("kept in " + dir);
            }
            return 0;
        } finally {
            if (!keep) {
                deleteTree(dir);
            }
        }
    }

    /** Writes a Llama-shaped HF directory with random bf16 weights; returns the parameter count. */
    private static long writeSampleModel(Path model) throws IOException {
        Files.createDirectories(model);
        SplittableRandom rng = new SplittableRandom(20261121);
        Map<String, long[]> shard1 = new LinkedHashMap<>();
        Map<String, long[]> shard2 = new LinkedHashMap<>();
        shard1.put("model.embed_tokens.weight", new long[] {VOCAB, HIDDEN});
        for (int l = 0; l < LAYERS; l++) {
            Map<String, long[]> s = l < LAYERS / 2 ? shard1 : shard2;
            String p = "model.layers." + l + ".";
            s.put(p + "input_layernorm.weight", new long[] {HIDDEN});
            s.put(p + "self_attn.q_proj.weight", new long[] {HIDDEN, HIDDEN});
            s.put(p + "self_attn.k_proj.weight", new long[] {HIDDEN, HIDDEN});
            s.put(p + "self_attn.v_proj.weight", new long[] {HIDDEN, HIDDEN});
            s.put(p + "self_attn.o_proj.weight", new long[] {HIDDEN, HIDDEN});
            s.put(p + "post_attention_layernorm.weight", new long[] {HIDDEN});
            s.put(p + "mlp.gate_proj.weight", new long[] {INTERMEDIATE, HIDDEN});
            s.put(p + "mlp.up_proj.weight", new long[] {INTERMEDIATE, HIDDEN});
            s.put(p + "mlp.down_proj.weight", new long[] {HIDDEN, INTERMEDIATE});
        }
        shard2.put("model.norm.weight", new long[] {HIDDEN});
        shard2.put("lm_head.weight", new long[] {VOCAB, HIDDEN});
        String[] names = {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"};
        Map<String, Object> weightMap = new LinkedHashMap<>();
        long params = 0;
        long total = 0;
        int i = 0;
        for (Map<String, long[]> shard : List.of(shard1, shard2)) {
            List<Tensor> tensors = new ArrayList<>();
            try {
                SafetensorsWriter w = SafetensorsWriter.create(model.resolve(names[i]))
                        .metadata(Map.of("format", "pt"));
                for (Map.Entry<String, long[]> e : shard.entrySet()) {
                    Tensor t = Tensor.allocate(DType.BF16, Device.CPU, e.getValue());
                    tensors.add(t);
                    fillWeights(t, e.getKey(), rng);
                    w.add(e.getKey(), DType.BF16, e.getValue(), t.segment());
                    weightMap.put(e.getKey(), names[i]);
                    params += t.numel();
                    total += t.byteSize();
                }
                w.write();
            } finally {
                tensors.forEach(Tensor::close);
            }
            i++;
        }
        Map<String, Object> index = new LinkedHashMap<>();
        index.put("metadata", new LinkedHashMap<>(Map.of("total_size", total)));
        index.put("weight_map", weightMap);
        Files.writeString(model.resolve(Nf4Checkpoint.INDEX), Json.writePretty(index) + "\n");
        Map<String, Object> config = new LinkedHashMap<>();
        config.put("architectures", List.of("LlamaForCausalLM"));
        config.put("hidden_size", (long) HIDDEN);
        config.put("intermediate_size", (long) INTERMEDIATE);
        config.put("model_type", "llama");
        config.put("num_attention_heads", 16L);
        config.put("num_hidden_layers", (long) LAYERS);
        config.put("num_key_value_heads", 16L);
        config.put("rms_norm_eps", 1e-05);
        config.put("torch_dtype", "bfloat16");
        config.put("vocab_size", (long) VOCAB);
        Files.writeString(model.resolve(Nf4Checkpoint.CONFIG), Json.writePretty(config) + "\n");
        Files.writeString(model.resolve("generation_config.json"), "{\n  \"do_sample\": false\n}\n");
        return params;
    }

    /** Gaussian weights (std 0.02) with rare large outliers, as trained LLM layers have; norms near 1. */
    private static void fillWeights(Tensor t, String name, SplittableRandom rng) {
        MemorySegment s = t.segment();
        boolean norm = t.rank() == 1;
        for (long i = 0; i < t.numel(); i++) {
            double v = norm ? 1.0 + 0.05 * rng.nextGaussian() : 0.02 * rng.nextGaussian();
            if (!norm && rng.nextInt(4096) == 0) {
                v *= 12;
            }
            int bits = Float.floatToRawIntBits((float) v);
            bits += 0x7fff + ((bits >>> 16) & 1);  // round to nearest even bf16
            s.setAtIndex(ValueLayout.JAVA_SHORT, i, (short) (bits >>> 16));
        }
    }

    /** In-memory kernel speed on a 4096x4096 bf16 layer (best of 5), apart from file I/O. */
    private void kernelThroughput(Device device) {
        long n = 4096L * 4096;
        try (Tensor host = Tensor.allocate(DType.BF16, Device.CPU, 4096, 4096)) {
            fillWeights(host, "layer", new SplittableRandom(7));
            try (Tensor x = host.copyTo(device); Tensor y = Tensor.allocate(DType.BF16, device, 4096, 4096)) {
                Nf4.Options options = new Nf4.Options(Nf4Format.DEFAULT_BLOCKSIZE, false);
                double bestQ = Double.MAX_VALUE;
                double bestD = Double.MAX_VALUE;
                for (int r = 0; r < 5; r++) {
                    long t0 = System.nanoTime();
                    Nf4Tensor q = Nf4.quantize("layer", x, options);
                    long t1 = System.nanoTime();
                    Nf4.dequantizeInto(q, y);
                    long t2 = System.nanoTime();
                    q.close();
                    bestQ = Math.min(bestQ, (t1 - t0) / 1e9);
                    bestD = Math.min(bestD, (t2 - t1) / 1e9);
                }
                double nf4Bytes = n / 2.0 + n / 64.0 * 4;
                out.printf(Locale.ROOT, "kernels    4096x4096 bf16 on %s: quantize %.2f G weights/s (%.1f GB/s moved),"
                        + " dequantize %.2f G weights/s (%.1f GB/s moved)%n", device, n / bestQ / 1e9,
                        (2.0 * n + nf4Bytes) / bestQ / 1e9, n / bestD / 1e9, (2.0 * n + nf4Bytes) / bestD / 1e9);
            }
        }
    }

    /** Reconstruction error of every quantized tensor, and the per-element NF4 error bound. */
    private void compare(Path model, Path nf4, Path dense, Device device) throws IOException {
        float[] table = Nf4Format.codeTable();
        double maxHalfGap = 0;
        for (int i = 1; i < 16; i++) {
            maxHalfGap = Math.max(maxHalfGap, (table[i] - table[i - 1]) / 2);
        }
        double sumSq = 0;
        double sumErr = 0;
        double worstRel = 0;
        long elements = 0;
        long violations = 0;
        int tensors = 0;
        Map<String, String> shardOf = shardMap(nf4);
        for (Map.Entry<String, String> e : shardMap(model).entrySet()) {
            String name = e.getKey();
            try (SafetensorsFile orig = SafetensorsFile.open(model.resolve(e.getValue()));
                    SafetensorsFile back = SafetensorsFile.open(dense.resolve(e.getValue()));
                    SafetensorsFile q = SafetensorsFile.open(nf4.resolve(shardOf.get(name)))) {
                if (!Nf4Tensor.isNf4(q, name)) {
                    continue;
                }
                tensors++;
                TensorInfo info = orig.info(name);
                float[] x = Floats.widen(orig.data(name), DType.BF16, (int) info.numel());
                float[] y = Floats.widen(back.data(name), DType.BF16, (int) info.numel());
                float[] absmax;
                try (Nf4Tensor nt = Nf4Tensor.read(q, name, device); Tensor a = Nf4.absmaxOf(nt)) {
                    absmax = a.toFloatArray();
                }
                double tensorErr = 0;
                double tensorSq = 0;
                float[] exactAbsmax = new float[absmax.length];
                for (int i = 0; i < x.length; i++) {
                    exactAbsmax[i / 64] = Math.max(exactAbsmax[i / 64], Math.abs(x[i]));
                }
                for (int i = 0; i < x.length; i++) {
                    double d = x[i] - y[i];
                    tensorErr += d * d;
                    tensorSq += (double) x[i] * x[i];
                    // codes come from the exact block scale, decoding uses the rebuilt one:
                    // half a code step of the scale + the scale's own error + bf16 output rounding
                    int b = i / 64;
                    double bound = exactAbsmax[b] * maxHalfGap * (1 + 1e-6) + Math.abs(exactAbsmax[b] - absmax[b])
                            + Math.abs(y[i]) * 0x1p-8;
                    if (Math.abs(d) > bound) {
                        violations++;
                    }
                }
                worstRel = Math.max(worstRel, Math.sqrt(tensorErr / tensorSq));
                sumErr += tensorErr;
                sumSq += tensorSq;
                elements += x.length;
            }
        }
        double rel = Math.sqrt(sumErr / sumSq);
        out.printf(Locale.ROOT, "error      relative RMS %.4f over %d tensors (%.1f M weights; worst tensor %.4f);"
                + " NF4 on Gaussian weights is ~0.09-0.10%n", rel, tensors, elements / 1e6, worstRel);
        out.printf(Locale.ROOT, "bound      %d of %d elements outside |x - dequant(x)| <= absmax * max half code step"
                + " + |absmax - stored absmax| + bf16 rounding%n", violations, elements);
        if (violations > 0 || !(rel < 0.12)) {
            throw new IllegalStateException("reconstruction error is larger than NF4 allows: a qkern bug");
        }
    }

    private static Map<String, String> shardMap(Path dir) throws IOException {
        Object index = Json.parse(Files.readString(dir.resolve(Nf4Checkpoint.INDEX)));
        Map<String, String> out = new LinkedHashMap<>();
        ((Map<?, ?>) ((Map<?, ?>) index).get("weight_map")).forEach((k, v) -> out.put((String) k, (String) v));
        return out;
    }


    private static long sizeOf(Path dir) throws IOException {
        try (var s = Files.walk(dir)) {
            return s.filter(Files::isRegularFile).mapToLong(p -> p.toFile().length()).sum();
        }
    }

    private void deleteTree(Path dir) {
        try (var s = Files.walk(dir)) {
            s.sorted(java.util.Comparator.reverseOrder()).forEach(p -> p.toFile().delete());
        } catch (IOException e) {
            err.println("qkern: warning: could not delete " + dir + ": " + e.getMessage());
        }
    }
}
