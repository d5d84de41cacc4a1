package io.qkern.nf4;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Tensor;
import io.qkern.internal.Floats;
import io.qkern.io.SafetensorsFile;
import io.qkern.io.SafetensorsFormatException;
import io.qkern.io.SafetensorsWriter;
import io.qkern.io.TensorInfo;
import java.io.IOException;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

/**
 * An NF4-quantized tensor in bitsandbytes' layout: packed 4-bit codes (first element in the
 * high nibble), a float32 absmax per block — or, with double quantization, 8-bit absmax codes
 * with a float32 scale per 256 blocks, the 256-entry code map and an offset — and the
 * original dtype and shape. Owns its tensors; {@link #close()} frees them (idempotent).
 */
public final class Nf4Tensor implements AutoCloseable {
    /** Second-level quantization of absmax (bitsandbytes {@code compress_statistics}). */
    public record DoubleQuant(Tensor codes, Tensor nestedAbsmax, Tensor nestedMap, float offset) {}

    /** Suffixes of the tensors bitsandbytes stores beside {@code P.weight}. */
    public static final String ABSMAX = ".absmax";
    public static final String QUANT_MAP = ".quant_map";
    public static final String NESTED_ABSMAX = ".nested_absmax";
    public static final String NESTED_QUANT_MAP = ".nested_quant_map";
    public static final String QUANT_STATE = ".quant_state.bitsandbytes__nf4";

    private final Nf4QuantState state;
    private final Tensor packed;
    private final Tensor absmax;          // F32 per block, null with double quantization
    private final DoubleQuant doubleQuant;
    private boolean closed;

    Nf4Tensor(Nf4QuantState state, Tensor packed, Tensor absmax, DoubleQuant doubleQuant) {
        this.state = state;
        this.packed = packed;
        this.absmax = absmax;
        this.doubleQuant = doubleQuant;
    }

    /**
     * Assembles an NF4 tensor from its parts (all on one device), checking dtypes and sizes
     * against the quant state. Takes ownership of the tensors. {@code absmax} is F32 per block
     * without double quantization, null with it.
     */
    public static Nf4Tensor of(Nf4QuantState state, Tensor packed, Tensor absmax, DoubleQuant doubleQuant) {
        long n = state.numel();
        long blocks = Nf4Format.blocks(n, state.blocksize());
        expect(packed, DType.U8, Nf4Format.packedBytes(n), "packed", packed.device());
        if (state.doubleQuant() != (doubleQuant != null) || (absmax == null) == (doubleQuant == null)) {
            throw new IllegalArgumentException("give F32 absmax without double quantization, or the double"
                    + " quantization parts with it (quant state says double_quant=" + state.doubleQuant() + ")");
        }
        if (absmax != null) {
            expect(absmax, DType.F32, blocks, "absmax", packed.device());
        } else {
            expect(doubleQuant.codes(), DType.U8, blocks, "absmax codes", packed.device());
            expect(doubleQuant.nestedAbsmax(), DType.F32, Nf4Format.blocks(blocks, Nf4Format.NESTED_BLOCKSIZE),
                    "nested_absmax", packed.device());
            expect(doubleQuant.nestedMap(), DType.F32, 256, "nested_quant_map", packed.device());
            if (doubleQuant.offset() != state.nestedOffset()) {
                throw new IllegalArgumentException("double quantization offset " + doubleQuant.offset()
                        + " differs from the quant state's nested_offset " + state.nestedOffset());
            }
        }
        return new Nf4Tensor(state, packed, absmax, doubleQuant);
    }

    private static void expect(Tensor t, DType dtype, long numel, String what, Device device) {
        if (t == null) {
            throw new IllegalArgumentException(what + " is missing");
        }
        if (t.dtype() != dtype || t.numel() != numel) {
            throw new IllegalArgumentException(what + " must be " + dtype + " with " + numel + " elements, got "
                    + t.dtype() + " with " + t.numel());
        }
        if (!t.device().equals(device)) {
            throw new IllegalArgumentException(what + " is on " + t.device() + ", expected " + device);
        }
    }

    public Nf4QuantState quantState() {
        return state;
    }

    public long[] shape() {
        return state.shape();
    }

    public long numel() {
        return state.numel();
    }

    /** The dtype of the tensor that was quantized (and the default for dequantization). */
    public DType originalDtype() {
        return state.dtype();
    }

    public int blocksize() {
        return state.blocksize();
    }

    public boolean isDoubleQuantized() {
        return doubleQuant != null;
    }

    public Device device() {
        return packed.device();
    }

    /** U8 [(n+1)/2]: two codes per byte, first element in the high nibble. */
    public Tensor packed() {
        return packed;
    }

    /** F32 absmax per block; null when double-quantized (see {@link #doubleQuant()}). */
    public Tensor absmax() {
        return absmax;
    }

    public DoubleQuant doubleQuant() {
        return doubleQuant;
    }

    /** Bytes of the quantized representation (codes and statistics). */
    public long storageBytes() {
        long b = packed.byteSize();
        if (absmax != null) {
            b += absmax.byteSize();
        } else {
            b += doubleQuant.codes().byteSize() + doubleQuant.nestedAbsmax().byteSize() + doubleQuant.nestedMap().byteSize();
        }
        return b + 16 * 4;
    }

    /** Dequantizes to the original dtype. */
    public Tensor dequantize() {
        return Nf4.dequantize(this, state.dtype());
    }

    /** Dequantizes to {@code dtype} (F32, F16 or BF16). */
    public Tensor dequantize(DType dtype) {
        return Nf4.dequantize(this, dtype);
    }

    // ---- safetensors (Hugging Face / bitsandbytes layout) ----------------------------------------

    /**
     * Adds {@code name} (e.g. "model.layers.0.mlp.down_proj.weight") and its companions to a
     * writer, exactly as bitsandbytes saves them. Device tensors are copied to the host; the
     * returned tensors hold those copies and must stay open until the writer has written.
     */
    public List<Tensor> addTo(SafetensorsWriter writer, String name) {
        List<Tensor> keepAlive = new ArrayList<>();
        writer.add(name, DType.U8, new long[] {packed.numel(), 1}, host(packed, keepAlive));
        if (doubleQuant == null) {
            writer.add(name + ABSMAX, DType.F32, absmax.shape(), host(absmax, keepAlive));
        } else {
            writer.add(name + ABSMAX, DType.U8, doubleQuant.codes().shape(), host(doubleQuant.codes(), keepAlive));
        }
        Tensor map = Tensor.ofFloats(Nf4Format.codeTable(), 16);
        keepAlive.add(map);
        writer.add(name + QUANT_MAP, DType.F32, new long[] {16}, map.segment());
        if (doubleQuant != null) {
            writer.add(name + NESTED_ABSMAX, DType.F32, doubleQuant.nestedAbsmax().shape(),
                    host(doubleQuant.nestedAbsmax(), keepAlive));
            writer.add(name + NESTED_QUANT_MAP, DType.F32, new long[] {256}, host(doubleQuant.nestedMap(), keepAlive));
        }
        byte[] json = state.toJson().getBytes(StandardCharsets.UTF_8);
        Tensor js = Tensor.ofBytes(json, DType.U8, json.length);
        keepAlive.add(js);
        writer.add(name + QUANT_STATE, DType.U8, new long[] {json.length}, js.segment());
        return keepAlive;
    }

    private static MemorySegment host(Tensor t, List<Tensor> keepAlive) {
        if (t.device().isCpu()) {
            return t.segment();
        }
        Tensor h = t.copyTo(Device.CPU);
        keepAlive.add(h);
        return h.segment();
    }

    /** True if {@code file} holds an NF4 weight called {@code name}. */
    public static boolean isNf4(SafetensorsFile file, String name) {
        return file.contains(name + QUANT_STATE);
    }

    /**
     * Reads an NF4 weight saved by bitsandbytes / Hugging Face (or by qkern) onto {@code device},
     * validating every companion tensor against the quant state.
     */
    public static Nf4Tensor read(SafetensorsFile file, String name, Device device) throws IOException {
        Where where = new Where(file.path(), name);
        if (!file.contains(name + QUANT_STATE)) {
            throw formatError(where, " has no " + name + QUANT_STATE + " tensor");
        }
        Nf4QuantState state;
        try {
            MemorySegment js = file.data(name + QUANT_STATE);
            state = Nf4QuantState.parse(new String(js.toArray(ValueLayout.JAVA_BYTE), StandardCharsets.UTF_8));
        } catch (IllegalArgumentException e) {
            throw formatError(where, ": bad quant state: " + e.getMessage());
        }
        long n;
        try {
            n = state.numel();
        } catch (ArithmeticException e) {
            throw formatError(where, ": shape " + Arrays.toString(state.shape()) + " overflows");
        }
        long blocks = Nf4Format.blocks(n, state.blocksize());
        TensorInfo weight = require(file, name, where);
        if (weight.byteSize() != Nf4Format.packedBytes(n)) {
            throw formatError(where, " holds " + weight.byteSize() + " bytes of codes but shape "
                    + Arrays.toString(state.shape()) + " needs " + Nf4Format.packedBytes(n));
        }
        TensorInfo map = require(file, name + QUANT_MAP, where);
        float[] mapValues = floats(file, map, where);
        if (!Arrays.equals(mapValues, Nf4Format.codeTable())) {
            throw formatError(where, ": " + name + QUANT_MAP
                    + " is not the NF4 code table (FP4 and custom tables are not supported)");
        }
        List<Tensor> made = new ArrayList<>();
        try {
            Tensor packed = upload(file.data(name), DType.U8, new long[] {weight.byteSize()}, device, made);
            TensorInfo absInfo = require(file, name + ABSMAX, where);
            if (absInfo.numel() != blocks) {
                throw formatError(where, ": " + name + ABSMAX + " has " + absInfo.numel()
                        + " elements but " + blocks + " blocks of " + state.blocksize() + " need " + blocks);
            }
            if (!state.doubleQuant()) {
                float[] a = floats(file, absInfo, where);
                checkAbsmax(a, where, name + ABSMAX);
                Tensor absmax = upload(a, new long[] {blocks}, device, made);
                return new Nf4Tensor(state, packed, absmax, null);
            }
            if (absInfo.dtype() != DType.U8) {
                throw formatError(where, ": with double quantization " + name + ABSMAX
                        + " must be U8 codes, is " + absInfo.dtype());
            }
            long nestedBlocks = Nf4Format.blocks(blocks, Nf4Format.NESTED_BLOCKSIZE);
            TensorInfo nestedInfo = require(file, name + NESTED_ABSMAX, where);
            if (nestedInfo.numel() != nestedBlocks) {
                throw formatError(where, ": " + name + NESTED_ABSMAX + " has " + nestedInfo.numel()
                        + " elements, expected " + nestedBlocks);
            }
            float[] nested = floats(file, nestedInfo, where);
            checkAbsmax(nested, where, name + NESTED_ABSMAX);
            TensorInfo nestedMapInfo = require(file, name + NESTED_QUANT_MAP, where);
            if (nestedMapInfo.numel() != 256) {
                throw formatError(where, ": " + name + NESTED_QUANT_MAP + " has "
                        + nestedMapInfo.numel() + " entries, expected 256");
            }
            float[] nestedMap = floats(file, nestedMapInfo, where);
            for (int i = 0; i < 256; i++) {
                if (!Float.isFinite(nestedMap[i])) {
                    throw formatError(where, ": " + name + NESTED_QUANT_MAP + "[" + i
                            + "] is not finite");
                }
            }
            Tensor codes = upload(file.data(name + ABSMAX), DType.U8, new long[] {blocks}, device, made);
            DoubleQuant dq = new DoubleQuant(codes, upload(nested, new long[] {nestedBlocks}, device, made),
                    upload(nestedMap, new long[] {256}, device, made), state.nestedOffset());
            return new Nf4Tensor(state, packed, null, dq);
        } catch (IOException | RuntimeException e) {
            made.forEach(Tensor::close);
            throw e;
        }
    }

    private record Where(java.nio.file.Path file, String name) {}

    private static SafetensorsFormatException formatError(Where where, String problem) {
        String p = problem.startsWith(": ") ? problem.substring(2) : problem.trim();
        return new SafetensorsFormatException(where.file(), where.name(), "NF4 weight: " + p);
    }

    private static TensorInfo require(SafetensorsFile file, String name, Where where) throws SafetensorsFormatException {
        if (!file.contains(name)) {
            throw formatError(where, " has no companion tensor \"" + name + "\"");
        }
        return file.info(name);
    }

    /** F32 as is; BF16/F16 widened (some published checkpoints store statistics that way). */
    private static float[] floats(SafetensorsFile file, TensorInfo info, Where where) throws SafetensorsFormatException {
        if (info.numel() > Integer.MAX_VALUE - 8) {
            throw formatError(where, ": " + info.name() + " is too large");
        }
        if (info.dtype() != DType.F32 && info.dtype() != DType.F16 && info.dtype() != DType.BF16) {
            throw formatError(where, ": " + info.name() + " has dtype " + info.dtype() + ", expected F32 (or BF16/F16)");
        }
        return Floats.widen(file.data(info.name()), info.dtype(), (int) info.numel());
    }

    private static void checkAbsmax(float[] a, Where where, String what) throws SafetensorsFormatException {
        for (int i = 0; i < a.length; i++) {
            if (!Float.isFinite(a[i]) || a[i] < 0) {
                throw formatError(where, what + "[" + i + "] is " + a[i]
                        + " (a block scale must be finite and >= 0)");
            }
        }
    }

    private static Tensor upload(MemorySegment bytes, DType dtype, long[] shape, Device device, List<Tensor> made) {
        Tensor t = Tensor.allocate(dtype, device, shape);
        made.add(t);
        if (device.isCpu()) {
            MemorySegment.copy(bytes, 0, t.segment(), 0, t.byteSize());
        } else {
            try (Tensor h = Tensor.allocate(dtype, Device.CPU, shape)) {
                MemorySegment.copy(bytes, 0, h.segment(), 0, h.byteSize());
                t.copyFrom(h);
            }
        }
        return t;
    }

    private static Tensor upload(float[] values, long[] shape, Device device, List<Tensor> made) {
        try (Tensor h = Tensor.ofFloats(values, shape)) {
            Tensor t = Tensor.allocate(DType.F32, device, shape);
            made.add(t);
            t.copyFrom(h);
            return t;
        }
    }

    @Override
    public synchronized void close() {
        if (closed) {
            return;
        }
        closed = true;
        packed.close();
        if (absmax != null) {
            absmax.close();
        }
        if (doubleQuant != null) {
            doubleQuant.codes().close();
            doubleQuant.nestedAbsmax().close();
            doubleQuant.nestedMap().close();
        }
    }

    @Override
    public String toString() {
        return "Nf4Tensor(" + state.toJson() + " on " + device() + ")";
    }
}
