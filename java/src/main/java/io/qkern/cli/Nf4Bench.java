package io.qkern.cli;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Tensor;
import io.qkern.nf4.Nf4;
import io.qkern.nf4.Nf4Matmul;
import io.qkern.nf4.Nf4Tensor;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;

/**
 * {@code qkern bench nf4}: NF4 dequantize and the fused matmul over LLM layer shapes (weight
 * [rows, cols] = [out_features, in_features], blocksize 64), each next to the same-run read
 * probe, and the matmul next to the dense F32 matmul over the dequantized weights.
 *
 * <p>Traffic counted ({@code gbps}): dequantize reads the packed codes and absmax and writes the
 * output; the matmul rows count the NF4 bytes (packed codes + F32 absmax) and the activations in
 * and out; the dense rows the F32 weights and activations. {@code g_weights_per_s} is N*K / time.
 */
final class Nf4Bench implements BenchSuite {
    static final List<int[]> SHAPES = List.of(new int[] {4096, 4096}, new int[] {4096, 11008},
            new int[] {11008, 4096}, new int[] {14336, 4096});
    static final int BLOCKSIZE = 64;

    @Override
    public String name() {
        return "nf4";
    }

    @Override
    public String summary() {
        return "NF4 dequantize and fused matmul (M = 1, 16, 64; rows named by the kernel that ran) vs dense F32, on LLM layer shapes";
    }

    @Override
    public void run(BenchContext ctx) {
        List<int[]> shapes = ctx.quick() ? List.of(new int[] {1024, 1024}) : SHAPES;
        int[] batches = ctx.quick() ? new int[] {1, 16} : new int[] {1, 16, 64};
        SplittableRandom rnd = new SplittableRandom(42);
        Device device = ctx.device();
        for (int[] s : shapes) {
            int n = s[0], k = s[1];
            String shape = n + "x" + k;
            ctx.note("preparing " + shape);
            // weights are written straight into native memory: a heap array this size would leave the
            // garbage collector busy on these two cores while the kernels are timed
            try (Tensor hostW = Tensor.allocate(DType.F32, Device.CPU, n, k); Tensor w = fillNormal(hostW, rnd, 0.02)
                    .copyTo(device); Nf4Tensor q = Nf4.quantize("w", w, new Nf4.Options(BLOCKSIZE, false));
                    Tensor dense = Nf4.dequantize(q, DType.F32)) {
                long nf4Bytes = q.packed().byteSize() + q.absmax().byteSize();
                for (DType out : List.of(DType.BF16, DType.F32)) {
                    try (Tensor o = Tensor.allocate(out, device, n, k)) {
                        double t = ctx.seconds(() -> Nf4.dequantizeInto(q, o));
                        ctx.emit("nf4_dequantize", shape, out.name().toLowerCase(), ctx.backend(), t,
                                nf4Bytes + o.byteSize(), extra(n, k, t, 0, null));
                    }
                }
                for (int m : batches) {
                    float[] xv = new float[m * k];
                    for (int i = 0; i < xv.length; i++) {
                        xv[i] = (float) (rnd.nextDouble() * 2 - 1);
                    }
                    try (Tensor hostX = Tensor.ofFloats(xv, m, k); Tensor x = hostX.copyTo(device);
                            Tensor y = Tensor.allocate(DType.F32, device, m, n)) {
                        long act = x.byteSize() + y.byteSize();
                        String path = Nf4Matmul.path(m, device, false);
                        double tq = ctx.seconds(() -> Nf4Matmul.forwardInto(x, q, q.absmax(), null, y));
                        double td = device.isCpu() ? ctx.seconds(() -> Nf4Matmul.denseF32Into(x, dense, y)) : Double.NaN;
                        // named by the kernel that ran: the fused GEMV serves few rows, the tiled kernel more
                        boolean gemv = path.endsWith("-gemv");
                        ctx.emit(gemv ? "nf4_gemv" : "nf4_gemm", shape, "f32", ctx.backend(), tq, nf4Bytes + act,
                                extra(n, k, tq, m, path));
                        if (device.isCpu()) {
                            Map<String, Object> e = extra(n, k, td, m, "dense-f32");
                            e.put("nf4_speedup", Math.round(td / tq * 100) / 100.0);
                            ctx.emit(gemv ? "dense_f32_gemv" : "dense_f32_gemm", shape, "f32", ctx.backend(), td,
                                    dense.byteSize() + act, e);
                        }
                    }
                }
                try (Tensor dy = Tensor.allocate(DType.F32, device, 16, n);
                        Tensor dx = Tensor.allocate(DType.F32, device, 16, k)) {
                    dy.fillBytes(0);
                    double t = ctx.seconds(() -> Nf4Matmul.inputGradInto(dy, q, q.absmax(), dx));
                    ctx.emit("nf4_input_grad", shape, "f32", ctx.backend(), t, nf4Bytes + dy.byteSize() + dx.byteSize(),
                            extra(n, k, t, 16, Nf4Matmul.path(16, device, true)));
                }
            }
        }
    }

    private static Tensor fillNormal(Tensor t, SplittableRandom rnd, double scale) {
        java.lang.foreign.MemorySegment s = t.segment();
        for (long i = 0; i < t.numel(); i++) {
            s.setAtIndex(java.lang.foreign.ValueLayout.JAVA_FLOAT, i, (float) (rnd.nextGaussian() * scale));
        }
        return t;
    }

    private static Map<String, Object> extra(int n, int k, double seconds, int m, String path) {
        Map<String, Object> e = new LinkedHashMap<>();
        e.put("g_weights_per_s", Math.round((double) n * k / seconds / 1e9 * 1000) / 1000.0);
        if (m > 0) {
            e.put("m", m);
            e.put("gflops", Math.round(2.0 * m * n * k / seconds / 1e9 * 10) / 10.0);
        }
        if (path != null) {
            e.put("path", path);
        }
        return e;
    }
}
