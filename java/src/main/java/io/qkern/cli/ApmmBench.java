package io.qkern.cli;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Tensor;
import io.qkern.apmm.Apmm;
import io.qkern.apmm.ApmmFormat;
import io.qkern.apmm.ApmmMatrix;
import io.qkern.apmm.ApmmPath;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;

/**
 * {@code qkern bench apmm}: the APMM matmul of packed signed codes (exact I32 output) on LLM layer
 * shapes "KxN" (in x out features), M = 1 at 2- and 4-bit weights with 8-bit activations, and
 * M = 512 at W1A1 / W2A2 (bit-serial) beside the same W1A1 forced onto the int8 path and W4A8.
 *
 * <p>Traffic counted ({@code gbps}): the packed planes of W and A (what a weight-streaming kernel
 * must read). {@code tops} = 2*M*N*K / time; {@code path} is the kernel that ran.
 */
final class ApmmBench implements BenchSuite {
    @Override
    public String name() {
        return "apmm";
    }

    @Override
    public String summary() {
        return "APMM 1..8-bit x 1..8-bit matmul (M=1 W2A8/W4A8; M=512 W1A1/W2A2 vs the int8 path), TOPS";
    }

    record Case(int m, int wBits, int aBits, ApmmPath path) {}

    @Override
    public void run(BenchContext ctx) {
        Device device = ctx.device();
        List<int[]> shapes = ctx.quick() ? List.of(new int[] {1024, 1024}) : List.of(new int[] {4096, 4096},
                new int[] {4096, 11008});
        List<Case> cases = ctx.quick()
                ? List.of(new Case(1, 4, 8, ApmmPath.AUTO), new Case(64, 1, 1, ApmmPath.AUTO),
                        new Case(64, 1, 1, ApmmPath.INT8))
                : List.of(new Case(1, 2, 8, ApmmPath.AUTO), new Case(1, 4, 8, ApmmPath.AUTO),
                        new Case(512, 1, 1, ApmmPath.AUTO), new Case(512, 2, 2, ApmmPath.AUTO),
                        new Case(512, 1, 1, ApmmPath.INT8), new Case(512, 4, 8, ApmmPath.AUTO));
        for (int[] s : shapes) {
            int k = s[0], n = s[1];
            String shape = k + "x" + n;
            for (Case c : cases) {
                if (c.m() > 1 && n != shapes.get(0)[1]) {
                    continue;  // the compute-bound cases on the first shape only: they take seconds each
                }
                ctx.note("preparing " + shape + " M=" + c.m() + " W" + c.wBits() + "A" + c.aBits());
                try (ApmmMatrix w = packed(n, k, c.wBits(), 1, device); ApmmMatrix a = packed(c.m(), k, c.aBits(), 2,
                        device); Tensor out = Tensor.allocate(DType.I32, device, c.m(), n)) {
                    String[] ran = {""};
                    double t = ctx.seconds(() -> ran[0] = Apmm.matmulInto(a, w, out, c.path()));
                    Map<String, Object> e = new LinkedHashMap<>();
                    e.put("m", c.m());
                    e.put("w_bits", c.wBits());
                    e.put("a_bits", c.aBits());
                    e.put("path", ran[0]);
                    e.put("requested", c.path().name().toLowerCase(java.util.Locale.ROOT));
                    e.put("tops", Math.round(2.0 * c.m() * n * k / t / 1e12 * 1e4) / 1e4);
                    ctx.emit("apmm_matmul", shape, "i32", ctx.backend(), t, w.packedBytes() + a.packedBytes(), e);
                }
            }
        }
    }

    /** Random signed codes of {@code bits} bits, packed on {@code device}. */
    static ApmmMatrix packed(long rows, long k, int bits, long seed, Device device) {
        try (Tensor codes = Tensor.allocate(DType.I8, Device.CPU, rows, k)) {
            MemorySegment s = codes.segment();
            SplittableRandom r = new SplittableRandom(seed);
            int lo = ApmmFormat.SIGNED.min(bits), span = ApmmFormat.SIGNED.max(bits) - lo + 1;
            for (long i = 0; i < rows * k; i++) {
                s.set(ValueLayout.JAVA_BYTE, i, (byte) (lo + r.nextInt(span)));
            }
            if (device.isCpu()) {
                return Apmm.pack(codes, ApmmFormat.SIGNED, bits, 0);
            }
            try (Tensor onDevice = codes.copyTo(device)) {
                return Apmm.pack(onDevice, ApmmFormat.SIGNED, bits, 0);
            }
        }
    }
}
