package io.qkern.topk;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Tensor;
import io.qkern.io.SafetensorsFile;
import io.qkern.io.SafetensorsWriter;
import java.io.IOException;
import java.lang.foreign.MemorySegment;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;

/**
 * Deep Gradient Compression over a model's named gradient tensors, one rank's side.
 *
 * <p>Per step, {@link #compress} turns each gradient into what this rank sends: for a sparse
 * tensor exactly k (index, value) pairs from {@link Dgc#step}, with k from the tensor's density
 * (its {@link RatioPolicy}, shaped by the {@link WarmupSchedule} during warm-up); tensors with
 * fewer than {@link #DENSE_BELOW} elements or of rank 1 (biases, norms) go dense, unchanged.
 * After the exchange, {@link #decompress} turns what all P ranks sent for one tensor into the
 * averaged dense gradient. The error-feedback state (u, v per sparse tensor) can be saved and
 * restored with a checkpoint ({@link #save}, {@link #restore}).
 *
 * <p>Not thread-safe: one compressor per training loop.
 */
public final class GradientCompressor implements AutoCloseable {
    /** Tensors with fewer elements than this go dense. */
    public static final long DENSE_BELOW = 16384;

    /** The density (fraction of elements sent) for a tensor: a layer-wise policy plugs in here. */
    @FunctionalInterface
    public interface RatioPolicy {
        double ratio(String name, long[] shape);

        static RatioPolicy uniform(double ratio) {
            check(ratio, "ratio");
            return (name, shape) -> ratio;
        }
    }

    /** What one rank sends for one tensor. Owns its tensors. */
    public record Compressed(String name, long[] shape, boolean dense, Tensor indices, Tensor values, long selected)
            implements AutoCloseable {
        /** A dense gradient (sent as is): {@code values} holds it, indices is null. */
        public static Compressed dense(String name, Tensor values) {
            return new Compressed(name, values.shape(), true, null, values, values.numel());
        }

        @Override
        public void close() {
            if (indices != null) {
                indices.close();
            }
            values.close();
        }
    }

    private static final class Slot {
        final String name;
        final long[] shape;
        final long numel;
        final boolean dense;
        final Tensor u, v;

        Slot(String name, long[] shape, boolean dense, Tensor u, Tensor v) {
            this.name = name;
            this.shape = shape;
            this.numel = Arrays.stream(shape).reduce(1, Math::multiplyExact);
            this.dense = dense;
            this.u = u;
            this.v = v;
        }
    }

    private final Map<String, Slot> slots = new LinkedHashMap<>();
    private final Dgc.Options options;
    private final RatioPolicy policy;
    private final WarmupSchedule warmup;
    private final Device device;
    private boolean closed;

    /**
     * A compressor for the gradients named in {@code shapes} (in that order), on {@code device}.
     * The state starts at zero.
     */
    public GradientCompressor(Map<String, long[]> shapes, RatioPolicy policy, WarmupSchedule warmup,
            Dgc.Options options, Device device) {
        this.options = Objects.requireNonNull(options, "options");
        this.policy = Objects.requireNonNull(policy, "policy");
        this.warmup = Objects.requireNonNull(warmup, "warmup");
        this.device = Objects.requireNonNull(device, "device");
        try {
            for (Map.Entry<String, long[]> e : shapes.entrySet()) {
                String name = Objects.requireNonNull(e.getKey(), "tensor name");
                long[] shape = e.getValue().clone();
                long n = Arrays.stream(shape).reduce(1, Math::multiplyExact);
                boolean dense = n < DENSE_BELOW || shape.length <= 1;
                Tensor u = null, v = null;
                if (!dense) {
                    v = zeros(n);
                    if (options.feedback() == Dgc.Feedback.MOMENTUM) {
                        u = zeros(n);
                    }
                }
                slots.put(name, new Slot(name, shape, dense, u, v));
            }
        } catch (RuntimeException e) {
            close();
            throw e;
        }
    }

    /** The tensor names, in registration order. */
    public List<String> names() {
        return List.copyOf(slots.keySet());
    }

    /** Whether {@code name} is sent dense (small or 1-D). */
    public boolean isDense(String name) {
        return slot(name).dense;
    }

    /** The number of pairs {@code name} sends in {@code epoch} (its element count when dense). */
    public long k(String name, int epoch) {
        Slot s = slot(name);
        if (s.dense) {
            return s.numel;
        }
        double target = policy.ratio(name, s.shape.clone());
        check(target, "ratio of \"" + name + "\"");
        double r = warmup.ratio(epoch, target);
        check(r, "warm-up ratio of \"" + name + "\" in epoch " + epoch);
        return TopK.kFor(s.numel, r);
    }

    /**
     * Compresses every registered gradient (all must be present, F32, of the registered shape)
     * for {@code epoch}. Returns what to send, by name, in registration order. NaN/Inf in a
     * gradient throws a {@link io.qkern.nf4.NonFiniteException} naming the tensor and element
     * (with the default options before any state was changed for that tensor).
     */
    public Map<String, Compressed> compress(Map<String, Tensor> gradients, int epoch) {
        checkOpen();
        for (String name : gradients.keySet()) {
            slot(name);  // unknown names are an error, not silently ignored
        }
        Map<String, Compressed> out = new LinkedHashMap<>();
        try {
            for (Slot s : slots.values()) {
                Tensor g = gradients.get(s.name);
                if (g == null) {
                    throw new IllegalArgumentException("no gradient for \"" + s.name + "\"");
                }
                if (g.dtype() != DType.F32 || !Arrays.equals(g.shape(), s.shape)) {
                    throw new IllegalArgumentException("gradient \"" + s.name + "\" is " + g.dtype() + " "
                            + Arrays.toString(g.shape()) + ", registered as F32 " + Arrays.toString(s.shape));
                }
                if (s.dense) {
                    checkFiniteDense(s.name, g);
                    out.put(s.name, Compressed.dense(s.name, g.copyTo(device)));
                    continue;
                }
                long k = k(s.name, epoch);
                Tensor idx = Tensor.allocate(DType.I32, device, k);
                Tensor val;
                try {
                    val = Tensor.allocate(options.valueType(), device, k);
                } catch (RuntimeException e) {
                    idx.close();
                    throw e;
                }
                try {
                    long selected = Dgc.step(s.name, g, s.u, s.v, options, idx, val);
                    out.put(s.name, new Compressed(s.name, s.shape, false, idx, val, selected));
                } catch (RuntimeException e) {
                    idx.close();
                    val.close();
                    throw e;
                }
            }
            return Collections.unmodifiableMap(out);
        } catch (RuntimeException e) {
            out.values().forEach(Compressed::close);
            throw e;
        }
    }

    /**
     * The averaged dense gradient of {@code name} from what the P = fromRanks.size() ranks sent:
     * sparse pairs are scatter-added and divided by P ({@link Dgc#decompress}); dense gradients
     * are summed in rank order and divided by P. A new F32 tensor of the registered shape.
     */
    public Tensor decompress(String name, List<Compressed> fromRanks) {
        checkOpen();
        Slot s = slot(name);
        if (fromRanks.isEmpty()) {
            throw new IllegalArgumentException("decompress \"" + name + "\": no ranks");
        }
        int p = fromRanks.size();
        for (Compressed c : fromRanks) {
            if (!c.name().equals(name) || c.dense() != s.dense) {
                throw new IllegalArgumentException("decompress \"" + name + "\": got " + (c.dense() ? "dense" : "sparse")
                        + " data for \"" + c.name() + "\"");
            }
        }
        if (s.dense) {
            float[] sum = new float[Math.toIntExact(s.numel)];
            for (Compressed c : fromRanks) {
                float[] x = c.values().toFloatArray();
                for (int i = 0; i < sum.length; i++) {
                    sum[i] += x[i];
                }
            }
            for (int i = 0; i < sum.length; i++) {
                sum[i] /= p;
            }
            return Tensor.ofFloats(sum, s.shape);
        }
        // concatenate the ranks' pairs in rank order, then one native scatter-add
        long m = 0;
        for (Compressed c : fromRanks) {
            m += c.indices().numel();
        }
        DType vt = fromRanks.get(0).values().dtype();
        DType it = fromRanks.get(0).indices().dtype();
        Tensor out = Tensor.allocate(DType.F32, device, s.shape);
        try (Tensor idx = Tensor.allocate(it, Device.CPU, m); Tensor val = Tensor.allocate(vt, Device.CPU, m)) {
            long off = 0;
            for (Compressed c : fromRanks) {
                if (c.values().dtype() != vt || c.indices().dtype() != it) {
                    throw new IllegalArgumentException("decompress \"" + name + "\": ranks sent different dtypes");
                }
                copyInto(c.indices(), idx, off);
                copyInto(c.values(), val, off);
                off += c.indices().numel();
            }
            Dgc.decompress(idx, val, p, out);
            return out;
        } catch (RuntimeException e) {
            out.close();
            throw e;
        }
    }

    /**
     * Writes the error-feedback state (u and v of every sparse tensor, as "NAME.u" / "NAME.v")
     * to a safetensors file (atomically: a temp file, then a rename).
     */
    public void save(Path path) throws IOException {
        checkOpen();
        SafetensorsWriter w = SafetensorsWriter.create(path);
        Map<String, String> meta = new LinkedHashMap<>();
        meta.put("format", "qkern.dgc.v1");
        meta.put("feedback", options.feedback().name());
        w.metadata(meta);
        for (Slot s : slots.values()) {
            if (s.v != null) {
                w.add(s.name + ".v", DType.F32, s.shape, s.v.segment());
            }
            if (s.u != null) {
                w.add(s.name + ".u", DType.F32, s.shape, s.u.segment());
            }
        }
        w.write();
    }

    /**
     * Loads the state written by {@link #save}. Every sparse tensor of this compressor must be in
     * the file with its registered shape, and the feedback kind must match.
     */
    public void restore(Path path) throws IOException {
        checkOpen();
        try (SafetensorsFile f = SafetensorsFile.open(path)) {
            String fb = f.metadata().get("feedback");
            if (!options.feedback().name().equals(fb)) {
                throw new IllegalArgumentException(path + ": state was saved with feedback " + fb + ", this compressor"
                        + " uses " + options.feedback());
            }
            // check everything first, so a bad file changes nothing
            List<Runnable> copies = new ArrayList<>();
            for (Slot s : slots.values()) {
                for (Tensor t : new Tensor[] {s.v, s.u}) {
                    if (t == null) {
                        continue;
                    }
                    String key = s.name + (t == s.v ? ".v" : ".u");
                    if (!f.contains(key)) {
                        throw new IllegalArgumentException(path + " has no tensor \"" + key + "\"");
                    }
                    var info = f.info(key);
                    if (info.dtype() != DType.F32 || !Arrays.equals(info.shape(), s.shape)) {
                        throw new IllegalArgumentException(path + ": \"" + key + "\" is " + info.dtype() + " "
                                + Arrays.toString(info.shape()) + ", expected F32 " + Arrays.toString(s.shape));
                    }
                    MemorySegment src = f.data(key);
                    copies.add(() -> MemorySegment.copy(src, 0, t.segment(), 0, src.byteSize()));
                }
            }
            copies.forEach(Runnable::run);
        }
    }

    /** The residual v of a sparse tensor (a view owned by the compressor), for inspection. */
    public Tensor residual(String name) {
        Slot s = slot(name);
        if (s.dense) {
            throw new IllegalArgumentException("\"" + name + "\" is sent dense and has no residual");
        }
        return s.v;
    }

    @Override
    public void close() {
        if (closed) {
            return;
        }
        closed = true;
        for (Slot s : slots.values()) {
            if (s.u != null) {
                s.u.close();
            }
            if (s.v != null) {
                s.v.close();
            }
        }
    }

    private Slot slot(String name) {
        Slot s = slots.get(name);
        if (s == null) {
            throw new IllegalArgumentException("unknown gradient \"" + name + "\" (registered: " + slots.keySet() + ")");
        }
        return s;
    }

    private void checkOpen() {
        if (closed) {
            throw new IllegalStateException("GradientCompressor is closed");
        }
    }

    private Tensor zeros(long n) {
        if (!device.isCpu()) {
            throw new IllegalArgumentException("GradientCompressor keeps its state on the CPU for now, not " + device);
        }
        Tensor t = Tensor.allocate(DType.F32, device, n);
        t.fillBytes(0);
        return t;
    }

    private static void checkFiniteDense(String name, Tensor g) {
        float[] x = g.toFloatArray();
        for (int i = 0; i < x.length; i++) {
            if (!Float.isFinite(x[i])) {
                throw new io.qkern.nf4.NonFiniteException(name, g.shape(), i, new io.qkern.QkernException(
                        io.qkern.QkernException.Status.NON_FINITE, name + "[" + i + "] is " + x[i]));
            }
        }
    }

    private static void copyInto(Tensor src, Tensor dst, long elementOffset) {
        long es = src.dtype().byteSize();
        MemorySegment.copy(src.segment(), 0, dst.segment(), elementOffset * es, src.byteSize());
    }

    static void check(double ratio, String what) {
        if (!(ratio > 0 && ratio <= 1)) {
            throw new IllegalArgumentException(what + " " + ratio + " is outside (0, 1]");
        }
    }

}
