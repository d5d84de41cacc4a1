package io.qkern.dist;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Tensor;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Random;

/**
 * Runs in every process of {@code mpirun -np N java ... MpiSelfTestMain SCENARIO} (see
 * MpiCommunicatorTest). Every rank generates every rank's inputs from per-rank seeds, so it can
 * compute the expected result of each collective on its own.
 *
 * <p>Scenarios: {@code collectives} (every operation, dtype and reduction; mismatches; split),
 * {@code stall} (rank 1 arrives after the timeout: rank 0 must fail with TIMEOUT in time),
 * {@code die} (rank 1 halts: rank 0 must fail or the job must end). Prints {@code RESULT ...} lines
 * the JUnit test reads; exits 1 when a check failed.
 */
public final class MpiSelfTestMain {
    static final List<DType> REDUCIBLE = List.of(DType.F32, DType.F64, DType.F16, DType.BF16, DType.I32, DType.I64);
    static final long SEED = 0x5eed_8_3L;

    private final MpiCommunicator world;
    private final int rank;
    private final int size;
    private final List<String> failures = new ArrayList<>();
    private int checks;

    private MpiSelfTestMain(MpiCommunicator world) {
        this.world = world;
        this.rank = world.rank();
        this.size = world.size();
    }

    public static void main(String[] args) throws Exception {
        String scenario = args.length > 0 ? args[0] : "collectives";
        switch (scenario) {
            case "collectives" -> collectives();
            case "ring" -> ring();
            case "stall" -> stall(Duration.ofMillis(Long.parseLong(args[1])));
            case "die" -> die(Duration.ofMillis(Long.parseLong(args[1])));
            default -> throw new IllegalArgumentException("unknown scenario " + scenario);
        }
    }

    // ---- scenarios ---------------------------------------------------------------------------------

    /** Any number of ranks: all-reduce and reduce-scatter of small integers (exact in every dtype and order). */
    private static void ring() {
        int checks = 0;
        int failures = 0;
        int rank;
        try (MpiCommunicator world = MpiCommunicator.world(Duration.ofSeconds(60))) {
            rank = world.rank();
            int size = world.size();
            for (io.qkern.DType dt : List.of(io.qkern.DType.F32, io.qkern.DType.F64, io.qkern.DType.F16,
                    io.qkern.DType.BF16, io.qkern.DType.I32, io.qkern.DType.I64)) {
                for (ReduceOp op : ReduceOp.values()) {
                    for (long n : new long[] {1, 7, 1000, 30001}) {
                        try (io.qkern.Tensor x = small(dt, rank, n, 0); io.qkern.Tensor y = small(dt, rank, n, 0)) {
                            world.allReduce(x, y, op);
                            for (long i = 0; i < n; i++) {
                                checks++;
                                if (read(dt, y, i) != expected(op, size, i)) {
                                    failures++;
                                    System.out.println("FAIL rank " + rank + " allReduce " + dt + " " + op + " n " + n
                                            + " element " + i + ": " + read(dt, y, i) + " != " + expected(op, size, i));
                                }
                            }
                        }
                        try (io.qkern.Tensor x = small(dt, rank, n * size, 0); io.qkern.Tensor y = small(dt, rank, n, 0)) {
                            world.reduceScatter(x, y, op);
                            for (long i = 0; i < n; i++) {
                                checks++;
                                if (read(dt, y, i) != expected(op, size, rank * n + i)) {
                                    failures++;
                                    System.out.println("FAIL rank " + rank + " reduceScatter " + dt + " " + op + " n " + n
                                            + " element " + i);
                                }
                            }
                        }
                    }
                }
            }
        }
        System.out.println("RESULT ring rank " + rank + " checks " + checks + " failures " + failures);
    }

    private static long smallValue(int rank, long i) {
        return (i * 31 + rank * 17) % 13 - 6;
    }

    private static long expected(ReduceOp op, int size, long i) {
        long acc = smallValue(0, i);
        for (int r = 1; r < size; r++) {
            long v = smallValue(r, i);
            acc = switch (op) {
                case SUM -> acc + v;
                case MAX -> Math.max(acc, v);
                case MIN -> Math.min(acc, v);
            };
        }
        return acc;
    }

    private static io.qkern.Tensor small(io.qkern.DType dt, int rank, long n, int unused) {
        io.qkern.Tensor t = io.qkern.Tensor.allocate(dt, io.qkern.Device.CPU, n);
        var s = t.segment();
        for (long i = 0; i < n; i++) {
            long v = smallValue(rank, i);
            switch (dt) {
                case F32 -> s.set(java.lang.foreign.ValueLayout.JAVA_FLOAT_UNALIGNED, 4 * i, v);
                case F64 -> s.set(java.lang.foreign.ValueLayout.JAVA_DOUBLE_UNALIGNED, 8 * i, v);
                case F16 -> s.set(java.lang.foreign.ValueLayout.JAVA_SHORT_UNALIGNED, 2 * i, Float.floatToFloat16(v));
                case BF16 -> s.set(java.lang.foreign.ValueLayout.JAVA_SHORT_UNALIGNED, 2 * i,
                        (short) (Float.floatToIntBits(v) >>> 16));
                case I32 -> s.set(java.lang.foreign.ValueLayout.JAVA_INT_UNALIGNED, 4 * i, (int) v);
                default -> s.set(java.lang.foreign.ValueLayout.JAVA_LONG_UNALIGNED, 8 * i, v);
            }
        }
        return t;
    }

    private static long read(io.qkern.DType dt, io.qkern.Tensor t, long i) {
        var s = t.segment();
        double v = switch (dt) {
            case F32 -> s.get(java.lang.foreign.ValueLayout.JAVA_FLOAT_UNALIGNED, 4 * i);
            case F64 -> s.get(java.lang.foreign.ValueLayout.JAVA_DOUBLE_UNALIGNED, 8 * i);
            case F16 -> Float.float16ToFloat(s.get(java.lang.foreign.ValueLayout.JAVA_SHORT_UNALIGNED, 2 * i));
            case BF16 -> Float.intBitsToFloat(s.get(java.lang.foreign.ValueLayout.JAVA_SHORT_UNALIGNED, 2 * i) << 16);
            case I32 -> s.get(java.lang.foreign.ValueLayout.JAVA_INT_UNALIGNED, 4 * i);
            default -> s.get(java.lang.foreign.ValueLayout.JAVA_LONG_UNALIGNED, 8 * i);
        };
        return (long) v == v ? (long) v : Long.MIN_VALUE;
    }

    private static void collectives() {
        MpiSelfTestMain t;
        try (MpiCommunicator world = MpiCommunicator.world(Duration.ofSeconds(60))) {
            t = new MpiSelfTestMain(world);
            if (t.size != 2) {
                // float sums of two ranks are exact-order-free (a + b == b + a); more ranks would need a tolerance
                throw new IllegalStateException("run with mpirun -np 2 (size is " + t.size + ")");
            }
            t.runAll();
        }
        System.out.println("RESULT rank " + t.rank + " checks " + t.checks + " failures " + t.failures.size());
        for (String f : t.failures) {
            System.out.println("FAIL rank " + t.rank + ": " + f);
        }
        System.out.flush();
        System.exit(t.failures.isEmpty() ? 0 : 1);
    }

    /** Rank 1 arrives late; rank 0 must fail with TIMEOUT naming rank 1 within the timeout plus slack. */
    private static void stall(Duration timeout) throws InterruptedException {
        MpiCommunicator world = MpiCommunicator.world(timeout);
        world.barrier();
        try (Tensor t = Tensor.ofFloats(new float[] {1, 2, 3}, 3)) {
            if (world.rank() == 1) {
                Thread.sleep(timeout.toMillis() + 1000);
            }
            long start = System.nanoTime();
            try {
                world.allReduce(t, ReduceOp.SUM);
                System.out.println("RESULT stall rank " + world.rank() + " completed (no timeout)");
            } catch (CommunicatorException e) {
                long ms = (System.nanoTime() - start) / 1_000_000;
                System.out.println("RESULT stall rank " + world.rank() + " kind " + e.kind() + " after_ms " + ms
                        + " message " + e.getMessage());
                try {
                    world.barrier();
                } catch (CommunicatorException later) {
                    System.out.println("RESULT stall rank " + world.rank() + " later " + later.kind());
                }
            }
        }
        System.out.flush();
        // No MPI_Finalize after a timeout (it would wait for the stalled rank): mpirun ends the job.
        world.close();
        System.exit(0);
    }

    /** Rank 1 halts without a word; rank 0 must fail with a clear error or be ended by mpirun. */
    private static void die(Duration timeout) {
        MpiCommunicator world = MpiCommunicator.world(timeout);
        world.barrier();
        if (world.rank() == 1) {
            System.out.println("RESULT die rank 1 halting");
            System.out.flush();
            Runtime.getRuntime().halt(3);
        }
        long start = System.nanoTime();
        try (Tensor t = Tensor.ofFloats(new float[] {1, 2, 3}, 3)) {
            world.allReduce(t, ReduceOp.SUM);
            System.out.println("RESULT die rank " + world.rank() + " completed (no failure)");
        } catch (CommunicatorException e) {
            System.out.println("RESULT die rank " + world.rank() + " kind " + e.kind() + " after_ms "
                    + (System.nanoTime() - start) / 1_000_000 + " message " + e.getMessage());
        }
        System.out.flush();
        world.close();
        System.exit(0);
    }

    // ---- the checks ----------------------------------------------------------------------------------

    private void runAll() {
        long[] sizes = {1, 2, 7, 1000, 4099};
        for (DType dt : REDUCIBLE) {
            for (ReduceOp op : ReduceOp.values()) {
                for (long n : sizes) {
                    checkAllReduce(dt, op, n, false);
                }
                checkAllReduce(dt, op, 33, true);
                checkReduceScatter(dt, op, 5);
                checkReduceScatter(dt, op, 1);
            }
        }
        for (DType dt : List.of(DType.F32, DType.F64, DType.F16, DType.BF16, DType.I32, DType.I64, DType.U8)) {
            checkAllGather(dt, new long[] {3, 5});
            checkAllGather(dt, new long[] {1});
            for (int root = 0; root < size; root++) {
                checkBroadcast(dt, 37, root);
            }
            checkSendRecv(dt, 11);
        }
        checkBroadcast(DType.U8, 128, 0);   // an NCCL unique id
        checkBarrierAndEmpty();
        checkSplit();
        checkMismatch();
        checkHostOnly();
    }

    private void checkAllReduce(DType dt, ReduceOp op, long n, boolean inPlace) {
        String name = "allReduce " + dt + " " + op + " n=" + n + (inPlace ? " in-place" : "");
        try (Tensor send = input(dt, name, rank, n); Tensor recv = inPlace ? null : Tensor.allocate(dt, Device.CPU, n)) {
            Tensor out = inPlace ? send : recv;
            if (!inPlace) {
                recv.fillBytes(0xff);
            }
            world.allReduce(send, out, op);
            long[] expected = expectedReduction(dt, op, name, n);
            compare(name, dt, out, expected);
            sameBitsEverywhere(name, out);
        }
    }

    private void checkReduceScatter(DType dt, ReduceOp op, long perRank) {
        String name = "reduceScatter " + dt + " " + op + " per-rank=" + perRank;
        try (Tensor send = input(dt, name, rank, size * perRank, 2); Tensor recv = Tensor.allocate(dt, Device.CPU,
                perRank, 2)) {
            recv.fillBytes(0xff);
            world.reduceScatter(send, recv, op);
            long[] all = expectedReduction(dt, op, name, size * perRank * 2);
            compare(name, dt, recv, Arrays.copyOfRange(all, (int) (rank * perRank * 2), (int) ((rank + 1) * perRank * 2)));
        }
    }

    private void checkAllGather(DType dt, long[] shape) {
        String name = "allGather " + dt + " " + Arrays.toString(shape);
        long[] big = shape.clone();
        big[0] *= size;
        try (Tensor send = input(dt, name, rank, shape); Tensor recv = Tensor.allocate(dt, Device.CPU, big)) {
            recv.fillBytes(0xff);
            world.allGather(send, recv);
            long n = send.numel();
            long[] expected = new long[(int) (n * size)];
            for (int r = 0; r < size; r++) {
                System.arraycopy(values(dt, name, r, n), 0, expected, (int) (r * n), (int) n);
            }
            compare(name, dt, recv, expected);
        }
    }

    private void checkBroadcast(DType dt, long n, int root) {
        String name = "broadcast " + dt + " n=" + n + " root " + root;
        try (Tensor buf = input(dt, name, rank, n)) {
            world.broadcast(buf, root);
            compare(name, dt, buf, values(dt, name, root, n));
        }
    }

    private void checkSendRecv(DType dt, long n) {
        for (int from = 0; from < 2; from++) {
            int to = 1 - from;
            String name = "send/recv " + dt + " " + from + "->" + to;
            if (rank == from) {
                try (Tensor t = input(dt, name, rank, n)) {
                    world.send(t, to);
                }
            } else if (rank == to) {
                try (Tensor t = Tensor.allocate(dt, Device.CPU, n)) {
                    t.fillBytes(0xff);
                    world.recv(t, from);
                    compare(name, dt, t, values(dt, name, from, n));
                }
            }
        }
    }

    private void checkBarrierAndEmpty() {
        world.barrier();
        try (Tensor e = Tensor.allocate(DType.F32, Device.CPU, 0)) {
            world.allReduce(e, ReduceOp.SUM);
            world.broadcast(e, 0);
        }
        checks++;
    }

    private void checkSplit() {
        // Everyone in one group, ranks reversed by the key.
        try (MpiCommunicator reversed = world.split(0, size - rank)) {
            expect("split reversed rank", reversed.rank() == size - 1 - rank && reversed.size() == size,
                    "rank " + reversed.rank() + " of " + reversed.size());
            try (Tensor t = Tensor.ofFloats(new float[] {reversed.rank()}, 1); Tensor all = Tensor.allocate(DType.F32,
                    Device.CPU, size)) {
                reversed.allGather(t, all);
                float[] got = all.toFloatArray();
                boolean ok = true;
                for (int r = 0; r < size; r++) {
                    ok &= got[r] == r;
                }
                expect("split reversed allGather", ok, Arrays.toString(got));
            }
        }
        // Even and odd world ranks apart.
        try (MpiCommunicator parity = world.split(rank % 2, rank)) {
            int expectedSize = (size + 1 - rank % 2) / 2;
            expect("split parity", parity.size() == expectedSize && parity.rank() == rank / 2,
                    "rank " + parity.rank() + " of " + parity.size());
            try (Tensor t = Tensor.ofFloats(new float[] {rank}, 1)) {
                parity.allReduce(t, ReduceOp.SUM);
                float want = 0;
                for (int r = rank % 2; r < size; r += 2) {
                    want += r;
                }
                expect("split parity allReduce", t.toFloatArray()[0] == want, t.toFloatArray()[0] + " vs " + want);
            }
        }
    }

    private void checkMismatch() {
        // A collective with different shapes: every rank fails with MISMATCH naming both shapes.
        try (MpiCommunicator c = world.split(0, rank); Tensor t = Tensor.allocate(DType.F32, Device.CPU,
                rank == 1 ? 5 : 4, 3)) {
            t.fillBytes(0);
            CommunicatorException e = expectThrows(() -> c.allReduce(t, ReduceOp.SUM));
            expect("mismatch allReduce kind", e != null && e.kind() == CommunicatorException.Kind.MISMATCH, e);
            expect("mismatch allReduce names shapes", e != null && e.getMessage().contains("F32[4, 3]")
                    && e.getMessage().contains("F32[5, 3]") && e.getMessage().contains("rank 1"), e);
            CommunicatorException later = expectThrows(c::barrier);
            expect("after mismatch: aborted", later != null && later.kind() == CommunicatorException.Kind.ABORTED, later);
        }
        // send/recv of different shapes: both ends fail with MISMATCH before data moves.
        try (MpiCommunicator c = world.split(0, rank)) {
            if (rank < 2) {
                try (Tensor t = Tensor.allocate(DType.I32, Device.CPU, rank == 0 ? 6 : 7)) {
                    t.fillBytes(0);
                    CommunicatorException e = expectThrows(() -> {
                        if (rank == 0) {
                            c.send(t, 1);
                        } else {
                            c.recv(t, 0);
                        }
                    });
                    expect("mismatch send/recv", e != null && e.kind() == CommunicatorException.Kind.MISMATCH
                            && e.getMessage().contains("I32[6]") && e.getMessage().contains("I32[7]"), e);
                }
            }
        }
        // Different operations at the same point: broadcast against barrier.
        try (MpiCommunicator c = world.split(0, rank); Tensor t = Tensor.allocate(DType.F32, Device.CPU, 2)) {
            t.fillBytes(0);
            CommunicatorException e = expectThrows(() -> {
                if (rank == 0) {
                    c.barrier();
                } else {
                    c.broadcast(t, 0);
                }
            });
            expect("mismatch barrier/broadcast", e != null && e.kind() == CommunicatorException.Kind.MISMATCH
                    && e.getMessage().contains("barrier") && e.getMessage().contains("broadcast"), e);
        }
        // The world is still fine.
        world.barrier();
    }

    private void checkHostOnly() {
        try (Tensor gpu = Tensor.wrapAddress(1L << 20, DType.F32, Device.cuda(0), 4)) {
            CommunicatorException e = expectThrows(() -> world.allReduce(gpu, ReduceOp.SUM));
            expect("cuda tensor refused", e != null && e.kind() == CommunicatorException.Kind.INVALID_ARGUMENT
                    && e.getMessage().contains("host (cpu) tensors only"), e);
        }
        world.barrier();
    }

    // ---- inputs and references ------------------------------------------------------------------

    /** Rank r's input for the check {@code name}: the same on every rank that computes it. */
    static long[] values(DType dt, String name, int r, long n) {
        Random rnd = new Random(SEED ^ name.hashCode() * 31L ^ r * 1_000_003L);
        long[] v = new long[(int) n];   // raw bits of each element, little-endian in the tensor
        for (int i = 0; i < n; i++) {
            v[i] = switch (dt) {
                case F32 -> Float.floatToRawIntBits((float) (rnd.nextGaussian() * 100)) & 0xffffffffL;
                case F64 -> Double.doubleToRawLongBits(rnd.nextGaussian() * 1e6);
                case F16 -> Float.floatToFloat16((float) (rnd.nextGaussian() * 50)) & 0xffff;
                case BF16 -> (Float.floatToRawIntBits((float) (rnd.nextGaussian() * 50)) >>> 16) & 0xffff;
                case I32 -> rnd.nextInt() & 0xffffffffL;   // full range: sums wrap, as in C
                case I64 -> rnd.nextLong();
                case U8 -> rnd.nextInt(256);
                default -> throw new IllegalArgumentException(dt.toString());
            };
        }
        return v;
    }

    private static Tensor input(DType dt, String name, int r, long... shape) {
        long n = 1;
        for (long d : shape) {
            n *= d;
        }
        Tensor t = Tensor.allocate(dt, Device.CPU, shape);
        long[] v = values(dt, name, r, n);
        for (int i = 0; i < n; i++) {
            put(t.segment(), dt, i, v[i]);
        }
        return t;
    }

    /** Element i of op over every rank's input, as raw bits; F16/BF16 reduced in float and rounded once. */
    private long[] expectedReduction(DType dt, ReduceOp op, String name, long n) {
        long[][] in = new long[size][];
        for (int r = 0; r < size; r++) {
            in[r] = values(dt, name, r, n);
        }
        long[] out = new long[(int) n];
        for (int i = 0; i < n; i++) {
            switch (dt) {
                case I32, I64 -> {
                    long acc = signed(dt, in[0][i]);
                    for (int r = 1; r < size; r++) {
                        long x = signed(dt, in[r][i]);
                        acc = switch (op) {
                            case SUM -> dt == DType.I32 ? (int) (acc + x) : acc + x;
                            case MAX -> Math.max(acc, x);
                            case MIN -> Math.min(acc, x);
                        };
                    }
                    out[i] = dt == DType.I32 ? acc & 0xffffffffL : acc;
                }
                case F64 -> {
                    double acc = Double.longBitsToDouble(in[0][i]);
                    for (int r = 1; r < size; r++) {
                        double x = Double.longBitsToDouble(in[r][i]);
                        acc = op == ReduceOp.SUM ? acc + x : op == ReduceOp.MAX ? Math.max(acc, x) : Math.min(acc, x);
                    }
                    out[i] = Double.doubleToRawLongBits(acc);
                }
                default -> {
                    // F32 / F16 / BF16: in float (F16/BF16 widen exactly), one rounding at the end
                    float acc = toFloat(dt, in[0][i]);
                    for (int r = 1; r < size; r++) {
                        float x = toFloat(dt, in[r][i]);
                        acc = op == ReduceOp.SUM ? acc + x : op == ReduceOp.MAX ? Math.max(acc, x) : Math.min(acc, x);
                    }
                    out[i] = switch (dt) {
                        case F32 -> Float.floatToRawIntBits(acc) & 0xffffffffL;
                        case F16 -> Float.floatToFloat16(acc) & 0xffff;
                        default -> bf16Nearest(acc);
                    };
                }
            }
        }
        return out;
    }

    /**
     * bfloat16 nearest to f, ties to the even one, found by comparing the two neighbours in double
     * (a reference independent of the bit trick in MpiCommunicator).
     */
    static long bf16Nearest(float f) {
        int bits = Float.floatToRawIntBits(f);
        int down = bits & 0xffff0000;
        int up = down + 0x10000;
        double dDown = Math.abs((double) f - Float.intBitsToFloat(down));
        double upValue = Float.intBitsToFloat(up);
        if (Double.isInfinite(upValue)) {
            upValue = Math.copySign(0x1p128, f);   // past the largest finite bfloat16, rounding up gives infinity
        }
        double dUp = Math.abs((double) f - upValue);
        int pick;
        if (dDown < dUp) {
            pick = down;
        } else if (dUp < dDown) {
            pick = up;
        } else {
            pick = ((down >>> 16) & 1) == 0 ? down : up;
        }
        return (pick >>> 16) & 0xffff;
    }

    private static float toFloat(DType dt, long raw) {
        return switch (dt) {
            case F32 -> Float.intBitsToFloat((int) raw);
            case F16 -> Float.float16ToFloat((short) raw);
            case BF16 -> Float.intBitsToFloat((int) raw << 16);
            default -> throw new IllegalArgumentException(dt.toString());
        };
    }

    private static long signed(DType dt, long raw) {
        return dt == DType.I32 ? (int) raw : raw;
    }

    private static void put(MemorySegment s, DType dt, long i, long raw) {
        switch (dt.byteSize()) {
            case 1 -> s.set(ValueLayout.JAVA_BYTE, i, (byte) raw);
            case 2 -> s.set(ValueLayout.JAVA_SHORT_UNALIGNED, 2 * i, (short) raw);
            case 4 -> s.set(ValueLayout.JAVA_INT_UNALIGNED, 4 * i, (int) raw);
            default -> s.set(ValueLayout.JAVA_LONG_UNALIGNED, 8 * i, raw);
        }
    }

    private static long get(MemorySegment s, DType dt, long i) {
        return switch (dt.byteSize()) {
            case 1 -> s.get(ValueLayout.JAVA_BYTE, i) & 0xff;
            case 2 -> s.get(ValueLayout.JAVA_SHORT_UNALIGNED, 2 * i) & 0xffff;
            case 4 -> s.get(ValueLayout.JAVA_INT_UNALIGNED, 4 * i) & 0xffffffffL;
            default -> s.get(ValueLayout.JAVA_LONG_UNALIGNED, 8 * i);
        };
    }

    private void compare(String name, DType dt, Tensor t, long[] expected) {
        checks++;
        if (t.numel() != expected.length) {
            failures.add(name + ": " + t.numel() + " elements, expected " + expected.length);
            return;
        }
        for (int i = 0; i < expected.length; i++) {
            long got = get(t.segment(), dt, i);
            if (got != expected[i]) {
                failures.add(name + ": element " + i + " is 0x" + Long.toHexString(got) + ", expected 0x"
                        + Long.toHexString(expected[i]));
                return;
            }
        }
    }

    /** Every rank holds the same bytes: gathers them and compares with rank 0's. */
    private void sameBitsEverywhere(String name, Tensor t) {
        checks++;
        byte[] mine = t.toByteArray();
        try (Tensor u8 = Tensor.ofBytes(mine, DType.U8, mine.length); Tensor all = Tensor.allocate(DType.U8,
                Device.CPU, (long) mine.length * size)) {
            world.allGather(u8, all);
            byte[] every = all.toByteArray();
            for (int r = 1; r < size; r++) {
                if (!Arrays.equals(every, 0, mine.length, every, r * mine.length, (r + 1) * mine.length)) {
                    failures.add(name + ": rank " + r + "'s result differs from rank 0's");
                    return;
                }
            }
        }
    }

    private void expect(String name, boolean ok, Object detail) {
        checks++;
        if (!ok) {
            failures.add(name + ": " + detail);
        }
    }

    private static CommunicatorException expectThrows(Runnable r) {
        try {
            r.run();
            return null;
        } catch (CommunicatorException e) {
            return e;
        }
    }
}
