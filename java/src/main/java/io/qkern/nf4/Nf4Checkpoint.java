package io.qkern.nf4;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Tensor;
import io.qkern.io.Json;
import io.qkern.io.SafetensorsFile;
import io.qkern.io.SafetensorsWriter;
import io.qkern.io.TensorInfo;
import java.io.IOException;
import java.lang.foreign.MemorySegment;
import java.nio.charset.StandardCharsets;
import java.nio.file.DirectoryNotEmptyException;
import java.nio.file.FileAlreadyExistsException;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Set;
import java.util.function.Consumer;
import java.util.regex.Pattern;
import java.util.stream.Stream;

/**
 * Converts whole checkpoints between dense weights and NF4 in the bitsandbytes / Hugging Face
 * layout: a single .safetensors file, or a model directory (sharded files listed in
 * {@code model.safetensors.index.json}, {@code config.json} given or stripped of a bitsandbytes
 * 4-bit {@code quantization_config}, every other file copied).
 *
 * <p>Nothing is half-written: a file goes to a temp name and is renamed; a directory is built
 * beside the target and renamed into place. Any error (NaN in a weight, a corrupt input) leaves
 * no output behind.
 */
public final class Nf4Checkpoint {
    public static final String INDEX = "model.safetensors.index.json";
    public static final String CONFIG = "config.json";

    private Nf4Checkpoint() {}

    /** What to quantize and how. {@code include} null means the default selection. */
    public record Options(Nf4.Options nf4, Pattern include, Device device, Consumer<String> progress) {
        public Options {
            if (nf4 == null || device == null) {
                throw new IllegalArgumentException("nf4 options and device are required");
            }
            if (progress == null) {
                progress = s -> {};
            }
        }
    }

    /** Counts and timings of one conversion. */
    public record Report(int converted, int passedThrough, long convertedElements, long bytesIn, long bytesOut,
            double seconds) {}

    /**
     * The default selection: 2-D floating-point {@code *.weight} tensors except the output head
     * and embeddings (kept dense, as bitsandbytes / transformers do).
     */
    public static boolean selectedByDefault(TensorInfo t) {
        String n = t.name().toLowerCase(Locale.ROOT);
        return t.dtype().isFloatingPoint() && t.dtype() != DType.F64 && t.rank() == 2 && n.endsWith(".weight")
                && !n.contains("lm_head") && !n.contains("embed") && !n.matches(".*\\bwte\\b.*|.*\\bwpe\\b.*");
    }

    static boolean selected(TensorInfo t, Pattern include) {
        if (include == null) {
            return selectedByDefault(t);
        }
        return (t.dtype() == DType.F32 || t.dtype() == DType.F16 || t.dtype() == DType.BF16)
                && include.matcher(t.name()).find();
    }

    // ---- quantize ---------------------------------------------------------------------------------------

    public static Report quantize(Path in, Path out, Options options) throws IOException {
        return convert(in, out, new Quantizer(options), options.progress());
    }

    /** Dequantizes every NF4 weight to {@code dtype}, or to its recorded dtype when null. */
    public static Report dequantize(Path in, Path out, DType dtype, Device device, Consumer<String> progress)
            throws IOException {
        if (dtype != null && dtype != DType.F32 && dtype != DType.F16 && dtype != DType.BF16) {
            throw new IllegalArgumentException("dequantize to f32, f16 or bf16, not " + dtype);
        }
        return convert(in, out, new Dequantizer(dtype, device), progress == null ? s -> {} : progress);
    }

    /** One direction of conversion, applied shard by shard. */
    private interface Converter {
        /** Adds the converted shard's tensors to the writer; returns resources to close after writing. */
        List<AutoCloseable> shard(SafetensorsFile in, SafetensorsWriter out, Counters counters,
                Consumer<String> progress) throws IOException;

        /** Rewrites config.json's object (adds or removes quantization_config). */
        void config(Map<String, Object> config, Counters counters);
    }

    private static final class Counters {
        int converted;
        int passed;
        long elements;
        final Set<String> denseLinearModules = new LinkedHashSet<>();
        final Set<DType> dtypes = new LinkedHashSet<>();
    }

    private static Report convert(Path in, Path out, Converter converter, Consumer<String> progress)
            throws IOException {
        long start = System.nanoTime();
        Counters counters = new Counters();
        if (!Files.exists(in)) {
            throw new NoSuchFileException(in.toString(), null, "input does not exist");
        }
        if (Files.isDirectory(in)) {
            long bytesIn = directorySize(in);
            Path target = out.toAbsolutePath();
            if (target.normalize().startsWith(in.toAbsolutePath().normalize())) {
                // the copy of the input's other files would copy the output being built into itself
                throw new IOException("output " + target + " is inside the input directory " + in.toAbsolutePath()
                        + "; choose an output directory outside it");
            }
            if (Files.exists(target) && !(Files.isDirectory(target) && isEmpty(target))) {
                throw new FileAlreadyExistsException(target.toString(), null,
                        "output exists and is not an empty directory; refusing to overwrite it");
            }
            Files.createDirectories(target.getParent());
            Path tmp = Files.createTempDirectory(target.getParent(), "." + target.getFileName() + ".tmp-");
            try {
                convertDirectory(in, tmp, converter, counters, progress);
                if (Files.isDirectory(target)) {
                    Files.delete(target);  // empty, checked above
                }
                Files.move(tmp, target, StandardCopyOption.ATOMIC_MOVE);
            } catch (IOException | RuntimeException | Error e) {
                deleteRecursively(tmp);
                throw e;
            }
            return new Report(counters.converted, counters.passed, counters.elements, bytesIn, directorySize(target),
                    (System.nanoTime() - start) / 1e9);
        }
        convertFile(in, out, converter, counters, progress);
        return new Report(counters.converted, counters.passed, counters.elements, Files.size(in), Files.size(out),
                (System.nanoTime() - start) / 1e9);
    }

    private static void convertFile(Path in, Path out, Converter converter, Counters counters,
            Consumer<String> progress) throws IOException {
        try (SafetensorsFile f = SafetensorsFile.open(in)) {
            SafetensorsWriter w = SafetensorsWriter.create(out).metadata(f.metadata());
            List<AutoCloseable> keep = converter.shard(f, w, counters, progress);
            try {
                w.write();
            } finally {
                closeAll(keep);
            }
        }
    }

    private static void convertDirectory(Path in, Path tmp, Converter converter, Counters counters,
            Consumer<String> progress) throws IOException {
        Path index = in.resolve(INDEX);
        List<String> shards = new ArrayList<>();
        Map<String, Object> indexJson = null;
        if (Files.isRegularFile(index)) {
            indexJson = jsonObject(index);
            if (!(indexJson.get("weight_map") instanceof Map<?, ?> wm)) {
                throw new IOException(index + ": no \"weight_map\" object");
            }
            for (Object file : wm.values()) {
                String s = String.valueOf(file);
                if (s.contains("/") || s.contains("\\") || s.startsWith(".")) {
                    throw new IOException(index + ": shard name \"" + s + "\" must be a plain file name");
                }
                if (!shards.contains(s)) {
                    shards.add(s);
                }
            }
        } else {
            try (Stream<Path> files = Files.list(in)) {
                files.map(p -> p.getFileName().toString()).filter(n -> n.endsWith(".safetensors")).sorted()
                        .forEach(shards::add);
            }
            if (shards.isEmpty()) {
                throw new IOException(in + " holds no .safetensors file");
            }
        }
        Map<String, String> weightMap = new LinkedHashMap<>();
        long totalSize = 0;
        for (int i = 0; i < shards.size(); i++) {
            String shard = shards.get(i);
            progress.accept("shard " + (i + 1) + "/" + shards.size() + ": " + shard);
            convertFile(in.resolve(shard), tmp.resolve(shard), converter, counters, progress);
            try (SafetensorsFile written = SafetensorsFile.open(tmp.resolve(shard))) {
                for (TensorInfo t : written.tensors()) {
                    weightMap.put(t.name(), shard);
                    totalSize += t.byteSize();
                }
            }
        }
        if (indexJson != null) {
            Map<String, Object> meta = indexJson.get("metadata") instanceof Map<?, ?> m ? copyMap(m) : new LinkedHashMap<>();
            meta.put("total_size", totalSize);
            indexJson.put("metadata", meta);
            Map<String, Object> sorted = new LinkedHashMap<>();
            weightMap.keySet().stream().sorted().forEach(k -> sorted.put(k, weightMap.get(k)));
            indexJson.put("weight_map", sorted);
            writeString(tmp.resolve(INDEX), Json.writePretty(indexJson) + "\n");
        }
        Set<String> handled = new LinkedHashSet<>(shards);
        handled.add(INDEX);
        Path config = in.resolve(CONFIG);
        if (Files.isRegularFile(config)) {
            Map<String, Object> cfg = jsonObject(config);
            converter.config(cfg, counters);
            writeString(tmp.resolve(CONFIG), Json.writePretty(cfg) + "\n");
            handled.add(CONFIG);
        }
        copyOthers(in, tmp, handled);
    }

    // ---- the two converters ----------------------------------------------------------------------------

    private static final class Quantizer implements Converter {
        private final Options options;

        Quantizer(Options options) {
            this.options = options;
        }

        @Override
        public List<AutoCloseable> shard(SafetensorsFile in, SafetensorsWriter out, Counters counters,
                Consumer<String> progress) throws IOException {
            List<AutoCloseable> keep = new ArrayList<>();
            try {
                for (TensorInfo t : in.tensors()) {
                    if (t.name().endsWith(Nf4Tensor.QUANT_STATE)) {
                        throw new IOException(in.path() + ": tensor \"" + t.name() + "\" is already NF4-quantized");
                    }
                    if (!selected(t, options.include())) {
                        out.add(t.name(), t.dtype(), t.shape(), in.data(t.name()));
                        counters.passed++;
                        if (t.rank() == 2 && t.name().endsWith(".weight") && t.dtype().isFloatingPoint()) {
                            counters.denseLinearModules.add(stripWeight(t.name()));
                        }
                        continue;
                    }
                    progress.accept("  quantize " + t.name() + " " + shapeText(t.shape()) + " "
                            + t.dtype().torchName());
                    counters.dtypes.add(t.dtype());
                    try (Tensor x = onDevice(in, t, options.device())) {
                        Nf4Tensor q = Nf4.quantize(t.name(), x, options.nf4());
                        keep.add(q);
                        keep.addAll(q.addTo(out, t.name()));
                    }
                    counters.converted++;
                    counters.elements += t.numel();
                }
                return keep;
            } catch (IOException | RuntimeException e) {
                closeAll(keep);
                throw e;
            }
        }

        @Override
        public void config(Map<String, Object> config, Counters counters) {
            Map<String, Object> q = new LinkedHashMap<>();
            String compute = config.get("torch_dtype") instanceof String s && !s.equals("float32") ? s
                    : counters.dtypes.contains(DType.F16) ? "float16" : "bfloat16";
            q.put("_load_in_4bit", true);
            q.put("_load_in_8bit", false);
            q.put("bnb_4bit_compute_dtype", compute);
            q.put("bnb_4bit_quant_storage", "uint8");
            q.put("bnb_4bit_quant_type", "nf4");
            q.put("bnb_4bit_use_double_quant", options.nf4().doubleQuant());
            q.put("llm_int8_enable_fp32_cpu_offload", false);
            q.put("llm_int8_has_fp16_weight", false);
            // modules whose 2-D weights stayed dense must not be replaced by Linear4bit on load
            q.put("llm_int8_skip_modules", counters.denseLinearModules.isEmpty() ? Json.NULL
                    : new ArrayList<Object>(counters.denseLinearModules));
            q.put("llm_int8_threshold", 6.0);
            q.put("load_in_4bit", true);
            q.put("load_in_8bit", false);
            q.put("quant_method", "bitsandbytes");
            config.put("quantization_config", q);
        }
    }

    private static final class Dequantizer implements Converter {
        private final DType dtype;
        private final Device device;

        Dequantizer(DType dtype, Device device) {
            this.dtype = dtype;
            this.device = device;
        }

        @Override
        public List<AutoCloseable> shard(SafetensorsFile in, SafetensorsWriter out, Counters counters,
                Consumer<String> progress) throws IOException {
            Set<String> companions = new LinkedHashSet<>();
            Set<String> weights = new LinkedHashSet<>();
            for (String name : in.names()) {
                if (name.endsWith(Nf4Tensor.QUANT_STATE)) {
                    String w = name.substring(0, name.length() - Nf4Tensor.QUANT_STATE.length());
                    weights.add(w);
                    for (String suffix : List.of(Nf4Tensor.ABSMAX, Nf4Tensor.QUANT_MAP, Nf4Tensor.NESTED_ABSMAX,
                            Nf4Tensor.NESTED_QUANT_MAP, Nf4Tensor.QUANT_STATE)) {
                        companions.add(w + suffix);
                    }
                }
            }
            List<AutoCloseable> keep = new ArrayList<>();
            try {
                for (TensorInfo t : in.tensors()) {
                    if (companions.contains(t.name())) {
                        continue;
                    }
                    if (!weights.contains(t.name())) {
                        out.add(t.name(), t.dtype(), t.shape(), in.data(t.name()));
                        counters.passed++;
                        continue;
                    }
                    try (Nf4Tensor q = Nf4Tensor.read(in, t.name(), device)) {
                        DType target = dtype != null ? dtype : q.originalDtype();
                        progress.accept("  dequantize " + t.name() + " " + shapeText(q.shape()) + " -> "
                                + target.torchName());
                        Tensor dense = Nf4.dequantize(q, target);
                        keep.add(dense);
                        Tensor host = dense.device().isCpu() ? dense : dense.copyTo(Device.CPU);
                        if (host != dense) {
                            keep.add(host);
                        }
                        out.add(t.name(), target, q.shape(), host.segment());
                        counters.converted++;
                        counters.elements += q.numel();
                    }
                }
                return keep;
            } catch (IOException | RuntimeException e) {
                closeAll(keep);
                throw e;
            }
        }

        @Override
        public void config(Map<String, Object> config, Counters counters) {
            if (config.get("quantization_config") instanceof Map<?, ?> q && "bitsandbytes".equals(q.get("quant_method"))) {
                config.remove("quantization_config");
            }
        }
    }

    // ---- helpers ---------------------------------------------------------------------------------------------

    /** The tensor's bytes as a tensor on {@code device}: the mapped file itself when aligned on the CPU. */
    private static Tensor onDevice(SafetensorsFile f, TensorInfo t, Device device) {
        MemorySegment data = f.data(t.name());
        if (device.isCpu() && data.address() % t.dtype().byteSize() == 0) {
            return Tensor.wrap(data, t.dtype(), t.shape());
        }
        Tensor host = Tensor.allocate(t.dtype(), Device.CPU, t.shape());
        MemorySegment.copy(data, 0, host.segment(), 0, host.byteSize());
        if (device.isCpu()) {
            return host;
        }
        try (host) {
            return host.copyTo(device);
        }
    }

    private static String stripWeight(String name) {
        return name.endsWith(".weight") ? name.substring(0, name.length() - ".weight".length()) : name;
    }

    static String shapeText(long[] shape) {
        StringBuilder sb = new StringBuilder();
        for (int i = 0; i < shape.length; i++) {
            sb.append(i == 0 ? "" : "x").append(shape[i]);
        }
        return sb.length() == 0 ? "scalar" : sb.toString();
    }

    private static Map<String, Object> jsonObject(Path p) throws IOException {
        Object o;
        try {
            o = Json.parse(Files.readString(p, StandardCharsets.UTF_8), 64 << 20);
        } catch (IllegalArgumentException e) {
            throw new IOException(p + ": invalid JSON: " + e.getMessage(), e);
        }
        if (!(o instanceof Map<?, ?> m)) {
            throw new IOException(p + ": expected a JSON object");
        }
        return copyMap(m);
    }

    private static Map<String, Object> copyMap(Map<?, ?> m) {
        Map<String, Object> out = new LinkedHashMap<>();
        m.forEach((k, v) -> out.put(String.valueOf(k), v));
        return out;
    }

    private static void writeString(Path p, String s) throws IOException {
        Files.writeString(p, s, StandardCharsets.UTF_8);
    }

    private static void copyOthers(Path in, Path out, Set<String> handled) throws IOException {
        try (Stream<Path> walk = Files.walk(in)) {
            for (Path src : (Iterable<Path>) walk::iterator) {
                Path rel = in.relativize(src);
                if (rel.toString().isEmpty() || (rel.getNameCount() == 1 && handled.contains(rel.toString()))) {
                    continue;
                }
                Path dst = out.resolve(rel.toString());
                if (Files.isDirectory(src)) {
                    Files.createDirectories(dst);
                } else {
                    Files.copy(src, dst, StandardCopyOption.COPY_ATTRIBUTES);
                }
            }
        }
    }

    private static boolean isEmpty(Path dir) throws IOException {
        try (Stream<Path> s = Files.list(dir)) {
            return s.findAny().isEmpty();
        }
    }

    private static long directorySize(Path dir) throws IOException {
        try (Stream<Path> s = Files.walk(dir)) {
            return s.filter(Files::isRegularFile).mapToLong(p -> {
                try {
                    return Files.size(p);
                } catch (IOException e) {
                    return 0;
                }
            }).sum();
        }
    }

    static void deleteRecursively(Path p) {
        if (!Files.exists(p)) {
            return;
        }
        try (Stream<Path> s = Files.walk(p)) {
            s.sorted(Comparator.reverseOrder()).forEach(x -> {
                try {
                    Files.deleteIfExists(x);
                } catch (DirectoryNotEmptyException e) {
                    // a racing writer; the outer delete reports nothing more useful
                } catch (IOException e) {
                    // best effort: the temp directory is a hidden sibling of the target
                }
            });
        } catch (IOException e) {
            // best effort, see above
        }
    }

    private static void closeAll(List<AutoCloseable> resources) {
        for (AutoCloseable c : resources) {
            try {
                c.close();
            } catch (Exception e) {
                // closing owned tensors cannot fail unless a native call still uses them
            }
        }
    }
}
