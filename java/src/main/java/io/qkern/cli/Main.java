package io.qkern.cli;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Qkern;
import io.qkern.Tensor;
import io.qkern.io.SafetensorsFile;
import io.qkern.io.SafetensorsWriter;
import io.qkern.io.TensorInfo;
import io.qkern.nf4.Nf4;
import io.qkern.nf4.Nf4Checkpoint;
import io.qkern.nf4.Nf4Format;
import java.io.IOException;
import java.io.PrintStream;
import java.lang.foreign.MemorySegment;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Set;
import java.util.function.Consumer;
import java.util.regex.Pattern;
import java.util.regex.PatternSyntaxException;
import java.util.stream.Stream;

/**
 * The {@code qkern} command line. Exit codes: 0 success, 1 failure, 2 usage error.
 * Results go to stdout, progress and errors to stderr.
 */
public final class Main {
    static final String USAGE = """
            usage: qkern <command> [options]

              info                                   library, CPU path, CUDA state and devices
              nf4 quantize IN OUT [--blocksize N] [--double-quant] [--include REGEX] [--device D]
                                                     quantize a .safetensors file or a Hugging Face model
                                                     directory to NF4 (bitsandbytes layout)
              nf4 dequantize IN OUT [--dtype f32|f16|bf16] [--device D]
                                                     back to dense weights (default: the recorded dtype)
              run OP IN OUT [--set key=value ...] [--device D]
                                                     run one kernel on named tensors of a .safetensors file
              run --list                             every op with its inputs, outputs and parameters
              bench [SUITE ...] [--json] [--quick] [--device D]
                                                     time the kernels beside this machine's read bandwidth
                                                     (suites: `qkern bench --list`; default: all)
              demo [--dir D] [--keep]                generate a sample checkpoint, quantize and dequantize
                                                     it, print the error and the throughput
              plan --model NAME|hidden=..,ffn=..,layers=.. [--gpus 8,64,512,1024] [--tp 8] [--gpu h100]
                   [--intra nvlink] [--inter ib|ethernet] [--tokens N] [--weights nf4|bf16] [--dgc RATIO]
                   [--calibrate] [--json]            predicted per-layer time and scaling efficiency on TP x DP
                                                     meshes (alpha-beta cost model); --calibrate checks the
                                                     model's inputs against this machine

            D is cpu, cuda or cuda:N (default: the best available). Progress goes to stderr.
            """;

    private final PrintStream out;
    private final PrintStream err;

    Main(PrintStream out, PrintStream err) {
        this.out = out;
        this.err = err;
    }

    public static void main(String[] args) {
        int code = new Main(System.out, System.err).run(args);
        System.out.flush();
        System.exit(code);
    }

    /** Runs one command line; returns the exit code. */
    int run(String... argv) {
        try {
            return dispatch(List.of(argv));
        } catch (UsageException e) {
            err.println("qkern: " + e.getMessage());
            if (!e.getMessage().contains("usage:")) {
                err.println("run `qkern help` for usage");
            }
            return 2;
        } catch (IOException | RuntimeException e) {
            err.println("qkern: error: " + message(e));
            return 1;
        } catch (OutOfMemoryError e) {
            err.println("qkern: error: out of memory: " + e.getMessage() + " (raise -Xmx)");
            return 1;
        }
    }

    private static String message(Throwable e) {
        String m = e.getMessage();
        if (m == null || m.isBlank()) {
            return e.getClass().getSimpleName();
        }
        if (e instanceof java.nio.file.NoSuchFileException) {
            return "no such file: " + m;
        }
        if (e instanceof java.nio.file.FileAlreadyExistsException f) {
            return f.getFile() + ": " + (f.getReason() == null ? "already exists" : f.getReason());
        }
        return m;
    }

    private int dispatch(List<String> argv) throws UsageException, IOException {
        if (argv.isEmpty() || argv.get(0).equals("help") || argv.get(0).equals("--help") || argv.get(0).equals("-h")) {
            out.print(USAGE);
            return argv.isEmpty() ? 2 : 0;
        }
        List<String> rest = argv.subList(1, argv.size());
        return switch (argv.get(0)) {
            case "info" -> info(rest);
            case "nf4" -> nf4(rest);
            case "run" -> runOp(rest);
            case "bench" -> bench(rest);
            case "demo" -> new Demo(out, err).run(Args.parse(rest, Set.of("--keep"), Set.of("--dir", "--device")));
            case "plan" -> new PlanCommand(out, err).run(rest);
            case "--version", "version" -> {
                out.println(Qkern.info().libraryVersion());
                yield 0;
            }
            default -> throw new UsageException("unknown command \"" + argv.get(0) + "\"\n" + USAGE);
        };
    }

    private int info(List<String> rest) throws UsageException {
        Args.parse(rest, Set.of(), Set.of()).expectPositional(0, "qkern info");
        Qkern.Info info = Qkern.info();
        out.print(info.format());
        out.println("nccl        " + io.qkern.dist.Nccl.describe());
        String mpi;
        try {
            mpi = io.qkern.dist.MpiCommunicator.libraryVersion();
        } catch (RuntimeException e) {
            mpi = "not found: " + e.getMessage();
        }
        out.println("mpi         " + mpi);
        return info.nativeLoaded() ? 0 : 1;
    }

    // ---- nf4 ------------------------------------------------------------------------------------

    private int nf4(List<String> argv) throws UsageException, IOException {
        if (argv.isEmpty()) {
            throw new UsageException("nf4 needs a subcommand: quantize or dequantize\n" + USAGE);
        }
        List<String> rest = argv.subList(1, argv.size());
        switch (argv.get(0)) {
            case "quantize" -> {
                Args a = Args.parse(rest, Set.of("--double-quant", "--quiet"),
                        Set.of("--blocksize", "--include", "--device"));
                a.expectPositional(2, "qkern nf4 quantize IN OUT [--blocksize N] [--double-quant] [--include REGEX]");
                int blocksize;
                try {
                    blocksize = Nf4Format.checkBlocksize(Long.parseLong(a.option("--blocksize", "64")));
                } catch (NumberFormatException e) {
                    throw new UsageException("--blocksize must be a number, got \"" + a.option("--blocksize", "") + "\"");
                } catch (IllegalArgumentException e) {
                    throw new UsageException(e.getMessage());
                }
                Pattern include = null;
                if (a.options.containsKey("--include")) {
                    try {
                        include = Pattern.compile(a.option("--include", ""));
                    } catch (PatternSyntaxException e) {
                        throw new UsageException("--include is not a valid regular expression: " + e.getDescription());
                    }
                }
                Path in = Path.of(a.positional.get(0));
                Path outPath = Path.of(a.positional.get(1));
                Nf4Checkpoint.Options options = new Nf4Checkpoint.Options(
                        new Nf4.Options(blocksize, a.flag("--double-quant")), include, device(a), progress(in, a));
                Nf4Checkpoint.Report r = Nf4Checkpoint.quantize(in, outPath, options);
                out.printf(Locale.ROOT, "quantized %d tensor(s) to NF4 (blocksize %d%s), passed %d through: %s -> %s%n",
                        r.converted(), blocksize, a.flag("--double-quant") ? ", double quant" : "", r.passedThrough(),
                        mib(r.bytesIn()), mib(r.bytesOut()));
                out.printf(Locale.ROOT, "%.2f s, %.3f G weights/s%n", r.seconds(), r.convertedElements() / r.seconds() / 1e9);
                if (r.converted() == 0) {
                    err.println("qkern: warning: no tensor matched; the output equals the input"
                            + (include == null ? " (default: 2-D floating *.weight except lm_head/embeddings)" : ""));
                }
                return 0;
            }
            case "dequantize" -> {
                Args a = Args.parse(rest, Set.of("--quiet"), Set.of("--dtype", "--device"));
                a.expectPositional(2, "qkern nf4 dequantize IN OUT [--dtype f32|f16|bf16]");
                DType dtype = null;
                if (a.options.containsKey("--dtype")) {
                    try {
                        dtype = DType.parse(a.option("--dtype", ""));
                    } catch (IllegalArgumentException e) {
                        throw new UsageException(e.getMessage());
                    }
                    if (dtype != DType.F32 && dtype != DType.F16 && dtype != DType.BF16) {
                        throw new UsageException("--dtype must be f32, f16 or bf16, got " + a.option("--dtype", ""));
                    }
                }
                Path in = Path.of(a.positional.get(0));
                Nf4Checkpoint.Report r = Nf4Checkpoint.dequantize(in, Path.of(a.positional.get(1)), dtype, device(a),
                        progress(in, a));
                out.printf(Locale.ROOT, "dequantized %d NF4 tensor(s), passed %d through: %s -> %s%n", r.converted(),
                        r.passedThrough(), mib(r.bytesIn()), mib(r.bytesOut()));
                out.printf(Locale.ROOT, "%.2f s, %.3f G weights/s%n", r.seconds(), r.convertedElements() / r.seconds() / 1e9);
                return 0;
            }
            default -> throw new UsageException("unknown nf4 subcommand \"" + argv.get(0) + "\" (quantize, dequantize)");
        }
    }

    private int bench(List<String> argv) throws UsageException {
        Args a = Args.parse(argv, Set.of("--json", "--quick", "--list"), Set.of("--device"));
        if (a.flag("--list")) {
            for (BenchSuite suite : BenchSuites.all()) {
                out.printf(Locale.ROOT, "%-10s %s%n", suite.name(), suite.summary());
            }
            return 0;
        }
        List<BenchSuite> suites = new java.util.ArrayList<>();
        for (String name : a.positional) {
            suites.add(BenchSuites.find(name));
        }
        if (suites.isEmpty()) {
            suites.addAll(BenchSuites.all());
        }
        Device device = device(a);
        try (BenchContext ctx = new BenchContext(out, err, a.flag("--json"), a.flag("--quick"), device)) {
            for (BenchSuite suite : suites) {
                ctx.note("suite " + suite.name() + " on " + device + (a.flag("--quick") ? " (quick: not a result)" : ""));
                try {
                    suite.run(ctx);
                } catch (RuntimeException e) {
                    throw e;
                } catch (Exception e) {
                    throw new IllegalStateException("benchmark suite " + suite.name() + " failed: " + e, e);
                }
            }
        }
        return 0;
    }

    private Consumer<String> progress(Path in, Args a) throws IOException {
        if (a.flag("--quiet")) {
            return s -> {};
        }
        long size;
        if (Files.isDirectory(in)) {
            try (Stream<Path> s = Files.walk(in)) {
                size = s.filter(Files::isRegularFile).mapToLong(p -> p.toFile().length()).sum();
            }
        } else {
            size = Files.exists(in) ? Files.size(in) : 0;
        }
        // small inputs finish at once: only large ones report progress
        return size >= (32L << 20) ? s -> err.println(s) : s -> {};
    }

    private static Device device(Args a) throws UsageException {
        String d = a.option("--device", null);
        if (d == null) {
            return Qkern.defaultDevice();
        }
        try {
            return Device.parse(d);
        } catch (IllegalArgumentException e) {
            throw new UsageException(e.getMessage());
        }
    }

    static String mib(long bytes) {
        return String.format(Locale.ROOT, "%.1f MiB", bytes / 1048576.0);
    }

    // ---- run ------------------------------------------------------------------------------------

    private int runOp(List<String> argv) throws UsageException, IOException {
        Args a = Args.parse(argv, Set.of("--list"), Set.of("--device"));
        if (a.flag("--list")) {
            a.expectPositional(0, "qkern run --list");
            for (Op op : Ops.all()) {
                out.println(op.name() + " — " + op.summary());
                op.inputs().forEach(s -> out.println("    in   " + s.name() + ": " + s.description()
                        + (s.required() ? "" : " [optional]")));
                op.outputs().forEach(s -> out.println("    out  " + s.name() + ": " + s.description()));
                op.params().forEach(p -> out.println("    set  " + p.name() + "=" + (p.defaultValue() == null
                        ? "(required)" : p.defaultValue()) + "  " + p.description()));
            }
            return 0;
        }
        a.expectPositional(3, "qkern run OP IN OUT [--set key=value ...] [--device D]");
        Op op = Ops.find(a.positional.get(0));
        Map<String, String> values = new LinkedHashMap<>();
        Set<String> known = new HashSet<>();
        for (Op.Param p : op.params()) {
            known.add(p.name());
            if (p.defaultValue() != null) {
                values.put(p.name(), p.defaultValue());
            }
        }
        for (Map.Entry<String, String> e : a.sets.entrySet()) {
            if (!known.contains(e.getKey())) {
                throw new UsageException(op.name() + " has no parameter \"" + e.getKey() + "\" (parameters: "
                        + String.join(", ", known) + ")");
            }
            values.put(e.getKey(), e.getValue());
        }
        Device device = device(a);
        Path in = Path.of(a.positional.get(1));
        Path outPath = Path.of(a.positional.get(2));
        List<Tensor> owned = new ArrayList<>();
        try (SafetensorsFile f = SafetensorsFile.open(in)) {
            Map<String, Tensor> inputs = new LinkedHashMap<>();
            Set<String> slotNames = new HashSet<>();
            for (Op.Slot slot : op.inputs()) {
                slotNames.add(slot.name());
                if (!f.contains(slot.name())) {
                    continue;
                }
                TensorInfo t = f.info(slot.name());
                Tensor host = Tensor.allocate(t.dtype(), Device.CPU, t.shape());
                owned.add(host);
                MemorySegment.copy(f.data(t.name()), 0, host.segment(), 0, host.byteSize());
                Tensor placed = device.isCpu() ? host : host.copyTo(device);
                if (placed != host) {
                    owned.add(placed);
                }
                inputs.put(slot.name(), placed);
            }
            for (Op.Slot slot : op.inputs()) {
                if (slot.required() && !inputs.containsKey(slot.name())) {
                    throw new IllegalArgumentException(in + " has no tensor \"" + slot.name() + "\", an input of "
                            + op.name() + " (the file has " + f.names() + "; the op reads " + slotNames + ")");
                }
            }
            long t0 = System.nanoTime();
            Map<String, Tensor> results = op.run(inputs, new Params(op.name(), values), device);
            double seconds = (System.nanoTime() - t0) / 1e9;
            results.values().forEach(owned::add);
            SafetensorsWriter w = SafetensorsWriter.create(outPath);
            for (Map.Entry<String, Tensor> e : results.entrySet()) {
                Tensor r = e.getValue();
                Tensor host = r.device().isCpu() ? r : r.copyTo(Device.CPU);
                if (host != r) {
                    owned.add(host);
                }
                w.add(e.getKey(), r.dtype(), r.shape(), host.segment());
            }
            w.write();
            out.printf(Locale.ROOT, "%s on %s: %.3f ms; wrote %s to %s%n", op.name(), device, seconds * 1e3,
                    results.keySet().stream().map(k -> k + Arrays.toString(results.get(k).shape())).toList(), outPath);
            return 0;
        } finally {
            for (Tensor t : owned) {
                t.close();
            }
        }
    }
}
