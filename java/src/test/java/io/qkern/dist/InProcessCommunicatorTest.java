package io.qkern.dist;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Tensor;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.math.BigDecimal;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.concurrent.atomic.AtomicReference;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * The in-process backend against independent references: every rank's inputs are regenerated from
 * its seed, and the expected output is computed element by element (float sums in rank order, F16 /
 * BF16 rounded once by an exact BigDecimal nearest-even rule), then compared bit for bit.
 */
class InProcessCommunicatorTest {
    private static final Duration TIMEOUT = Duration.ofSeconds(20);
    private static final List<DType> REDUCIBLE = List.of(DType.F32, DType.F64, DType.F16, DType.BF16, DType.I32,
            DType.I64);

    // ---- inputs and references ------------------------------------------------------------------

    /** Rank r's input: values chosen so sums round (floats) or wrap (ints) now and then. */
    static Tensor input(DType dtype, int rank, long seed, long... shape) {
        Tensor t = Tensor.allocate(dtype, Device.CPU, shape);
        Random rnd = new Random(seed * 1000 + rank);
        MemorySegment s = t.segment();
        for (long i = 0; i < t.numel(); i++) {
            double v = rnd.nextGaussian() * Math.pow(2, rnd.nextInt(8) - 4);
            switch (dtype) {
                case F32 -> s.set(ValueLayout.JAVA_FLOAT, 4 * i, (float) v);
                case F64 -> s.set(ValueLayout.JAVA_DOUBLE, 8 * i, v);
                case F16 -> s.set(ValueLayout.JAVA_SHORT, 2 * i, Float.floatToFloat16((float) v));
                case BF16 -> s.set(ValueLayout.JAVA_SHORT, 2 * i, (short) (Float.floatToIntBits((float) v) >>> 16));
                case I32 -> s.set(ValueLayout.JAVA_INT, 4 * i, rnd.nextInt());
                case I64 -> s.set(ValueLayout.JAVA_LONG, 8 * i, rnd.nextLong());
                default -> s.set(ValueLayout.JAVA_BYTE, i, (byte) rnd.nextInt());
            }
        }
        return t;
    }

    /** Element i of a tensor as a double (exact for every supported dtype except I64 beyond 2^53 — not compared that way). */
    static double widen(DType dtype, MemorySegment s, long i) {
        return switch (dtype) {
            case F32 -> s.get(ValueLayout.JAVA_FLOAT, 4 * i);
            case F64 -> s.get(ValueLayout.JAVA_DOUBLE, 8 * i);
            case F16 -> Float.float16ToFloat(s.get(ValueLayout.JAVA_SHORT, 2 * i));
            case BF16 -> Float.intBitsToFloat((s.get(ValueLayout.JAVA_SHORT, 2 * i) & 0xffff) << 16);
            default -> throw new AssertionError(dtype);
        };
    }

    /** Nearest-even BF16 of a float, computed exactly from the two neighbouring candidates. */
    static short bf16Reference(float f) {
        int down = Float.floatToIntBits(f) & 0xffff0000;
        float lo = Float.intBitsToFloat(down);
        float hi = Float.intBitsToFloat(down + 0x10000);
        BigDecimal x = new BigDecimal(f);
        int cmp = x.subtract(new BigDecimal(lo)).abs().compareTo(new BigDecimal(hi).subtract(x).abs());
        int pick = cmp < 0 || (cmp == 0 && ((down >>> 16) & 1) == 0) ? down : down + 0x10000;
        return (short) (pick >>> 16);
    }

    /** Expected element {@code i} of op over every rank's input, as raw bits (long). */
    static long expectedBits(DType dtype, ReduceOp op, List<Tensor> inputs, long i) {
        switch (dtype) {
            case I32, I64 -> {
                long acc = 0;
                for (int r = 0; r < inputs.size(); r++) {
                    MemorySegment s = inputs.get(r).segment();
                    long v = dtype == DType.I32 ? s.get(ValueLayout.JAVA_INT, 4 * i) : s.get(ValueLayout.JAVA_LONG, 8 * i);
                    acc = r == 0 ? v : switch (op) {
                        case SUM -> acc + v;
                        case MAX -> Math.max(acc, v);
                        case MIN -> Math.min(acc, v);
                    };
                }
                return dtype == DType.I32 ? (int) acc : acc;
            }
            case F64 -> {
                double acc = 0;
                for (int r = 0; r < inputs.size(); r++) {
                    double v = widen(dtype, inputs.get(r).segment(), i);
                    acc = r == 0 ? v : op == ReduceOp.SUM ? acc + v : op == ReduceOp.MAX ? Math.max(acc, v) : Math.min(acc, v);
                }
                return Double.doubleToRawLongBits(acc);
            }
            default -> {
                float acc = 0;
                for (int r = 0; r < inputs.size(); r++) {
                    float v = (float) widen(dtype, inputs.get(r).segment(), i);
                    acc = r == 0 ? v : op == ReduceOp.SUM ? acc + v : op == ReduceOp.MAX ? Math.max(acc, v) : Math.min(acc, v);
                }
                return switch (dtype) {
                    case F32 -> Float.floatToRawIntBits(acc);
                    case F16 -> Float.floatToFloat16(acc);
                    default -> bf16Reference(acc);
                };
            }
        }
    }

    static long bits(DType dtype, MemorySegment s, long i) {
        return switch (dtype.byteSize()) {
            case 2 -> s.get(ValueLayout.JAVA_SHORT_UNALIGNED, 2 * i);
            case 4 -> s.get(ValueLayout.JAVA_INT_UNALIGNED, 4 * i);
            case 8 -> s.get(ValueLayout.JAVA_LONG_UNALIGNED, 8 * i);
            default -> s.get(ValueLayout.JAVA_BYTE, i);
        };
    }

    static <T> List<T> runRanks(int size, DeviceMesh.RankBody<T> body) {
        DeviceMesh mesh = DeviceMesh.cpu(size);
        List<Communicator> comms = mesh.inProcess(TIMEOUT);
        try {
            return mesh.run(comms, body);
        } finally {
            comms.forEach(Communicator::close);
        }
    }

    // ---- collectives ----------------------------------------------------------------------------

    @ParameterizedTest
    @ValueSource(ints = {1, 2, 3, 4, 8})
    void allReduceMatchesTheRankOrderReferenceForEveryDtypeAndOp(int size) {
        long n = 4099; // not a multiple of the rank count, several 2048-element blocks
        for (DType dtype : REDUCIBLE) {
            for (ReduceOp op : ReduceOp.values()) {
                long seed = dtype.ordinal() * 10L + op.ordinal();
                List<Tensor> refs = new ArrayList<>();
                for (int r = 0; r < size; r++) {
                    refs.add(input(dtype, r, seed, n));
                }
                List<byte[]> outs = runRanks(size, c -> {
                    try (Tensor x = input(dtype, c.rank(), seed, n); Tensor y = Tensor.allocate(dtype, Device.CPU, n)) {
                        y.fillBytes(0xA5);
                        if (c.rank() % 2 == 0) {
                            c.allReduce(x, y, op);
                            return y.toByteArray();
                        }
                        c.allReduce(x, op); // in place
                        return x.toByteArray();
                    }
                });
                for (int r = 0; r < size; r++) {
                    assertArrayEquals(outs.get(0), outs.get(r), dtype + " " + op + ": ranks 0 and " + r + " differ");
                }
                MemorySegment got = MemorySegment.ofArray(outs.get(0));
                for (long i = 0; i < n; i++) {
                    long want = expectedBits(dtype, op, refs, i);
                    long have = bits(dtype, got, i);
                    if (want != have) {
                        throw new AssertionError(dtype + " " + op + " size " + size + " element " + i + ": expected bits "
                                + Long.toHexString(want) + " got " + Long.toHexString(have));
                    }
                }
                refs.forEach(Tensor::close);
            }
        }
    }

    @Test
    void allReduceOfFloatsIsCloseToTheFloat64Sum() {
        int size = 4;
        long n = 10_000;
        List<Tensor> refs = new ArrayList<>();
        for (int r = 0; r < size; r++) {
            refs.add(input(DType.F32, r, 77, n));
        }
        List<float[]> outs = runRanks(size, c -> {
            try (Tensor x = input(DType.F32, c.rank(), 77, n)) {
                c.allReduce(x, ReduceOp.SUM);
                return x.toFloatArray();
            }
        });
        for (int i = 0; i < n; i++) {
            double exact = 0;
            double abs = 0;
            for (Tensor t : refs) {
                double v = widen(DType.F32, t.segment(), i);
                exact += v;
                abs += Math.abs(v);
            }
            // size-1 roundings of partial sums, each at most half an ulp of a value <= sum|x|
            assertEquals(exact, outs.get(0)[i], (size - 1) * Math.ulp((float) abs) / 2 + 1e-30, "element " + i);
        }
        refs.forEach(Tensor::close);
    }

    @ParameterizedTest
    @ValueSource(ints = {1, 2, 3, 5})
    void allGatherReduceScatterAndBroadcast(int size) {
        long rows = 7;
        long cols = 3;
        List<Tensor> ins = new ArrayList<>();
        for (int r = 0; r < size; r++) {
            ins.add(input(DType.F32, r, 5, rows * size, cols));
        }
        runRanks(size, c -> {
            int r = c.rank();
            try (Tensor mine = input(DType.F16, r, 9, rows, cols);
                    Tensor gathered = Tensor.allocate(DType.F16, Device.CPU, rows * size, cols)) {
                gathered.fillBytes(0xFF);
                c.allGather(mine, gathered);
                byte[] g = gathered.toByteArray();
                for (int s = 0; s < size; s++) {
                    try (Tensor theirs = input(DType.F16, s, 9, rows, cols)) {
                        byte[] want = theirs.toByteArray();
                        byte[] part = java.util.Arrays.copyOfRange(g, s * want.length, (s + 1) * want.length);
                        assertArrayEquals(want, part, "allGather slot " + s + " on rank " + r);
                    }
                }
            }
            try (Tensor x = input(DType.F32, r, 5, rows * size, cols);
                    Tensor y = Tensor.allocate(DType.F32, Device.CPU, rows, cols)) {
                y.fillBytes(0xFF);
                c.reduceScatter(x, y, ReduceOp.SUM);
                float[] got = y.toFloatArray();
                for (int i = 0; i < rows * cols; i++) {
                    long want = expectedBits(DType.F32, ReduceOp.SUM, ins, r * rows * cols + i);
                    assertEquals(want, Float.floatToRawIntBits(got[i]), "reduceScatter element " + i + " rank " + r);
                }
            }
            for (int root = 0; root < size; root++) {
                try (Tensor b = input(DType.I64, r, 11, 1001); Tensor want = input(DType.I64, root, 11, 1001)) {
                    c.broadcast(b, root);
                    assertArrayEquals(want.toByteArray(), b.toByteArray(), "broadcast from " + root + " on rank " + r);
                }
            }
            c.barrier();
            return null;
        });
        ins.forEach(Tensor::close);
    }

    @Test
    void sendAndRecvAroundARingInBothDirections() {
        int size = 4;
        runRanks(size, c -> {
            int r = c.rank();
            int next = (r + 1) % size;
            int prev = (r + size - 1) % size;
            for (int round = 0; round < 3; round++) {
                try (Tensor out = input(DType.I32, r * 10 + round, 3, 257); Tensor in = Tensor.allocate(DType.I32,
                        Device.CPU, 257); Tensor want = input(DType.I32, prev * 10 + round, 3, 257)) {
                    // even ranks send first, odd ranks receive first: no deadlock with synchronous sends
                    if (r % 2 == 0) {
                        c.send(out, next);
                        c.recv(in, prev);
                    } else {
                        c.recv(in, prev);
                        c.send(out, next);
                    }
                    assertArrayEquals(want.toByteArray(), in.toByteArray(), "round " + round + " rank " + r);
                }
            }
            return null;
        });
    }

    @Test
    void splitMakesSubgroupsOrderedByKeyAndMeshGroupsFollowTheGrid() {
        DeviceMesh mesh = DeviceMesh.cpu(8).reshape("dp", 2, "tp", 4);
        assertArrayEquals(new int[] {4, 5, 6, 7}, mesh.groupAlong("tp", 6));
        assertArrayEquals(new int[] {2, 6}, mesh.groupAlong("dp", 6));
        assertArrayEquals(new int[] {1, 2}, mesh.coordinates(6));
        List<Communicator> comms = mesh.inProcess(TIMEOUT);
        List<int[]> seen = mesh.run(comms, c -> {
            try (Communicator tp = mesh.subgroup(c, "tp"); Communicator dp = mesh.subgroup(c, "dp");
                    Communicator odd = c.split(c.rank() % 2 == 1 ? 0 : -1, -c.rank());
                    Tensor x = Tensor.ofFloats(new float[] {c.rank()}, 1)) {
                tp.allReduce(x, ReduceOp.SUM);
                if (c.rank() % 2 == 0) {
                    assertNull(odd);
                } else {
                    assertEquals(4, odd.size());
                    assertEquals((7 - c.rank()) / 2, odd.rank(), "key orders ranks: rank 7 has the lowest key");
                }
                return new int[] {tp.rank(), tp.size(), dp.rank(), dp.size(), (int) x.toFloatArray()[0]};
            }
        });
        for (int r = 0; r < 8; r++) {
            int tpSum = r < 4 ? 0 + 1 + 2 + 3 : 4 + 5 + 6 + 7;
            assertArrayEquals(new int[] {r % 4, 4, r / 4, 2, tpSum}, seen.get(r), "rank " + r);
        }
        comms.forEach(Communicator::close);
    }

    @Test
    void oneThreadDrivesEveryRankInsideACollectiveGroup() {
        int size = 4;
        List<Communicator> comms = InProcessCommunicator.create(size, TIMEOUT);
        List<Tensor> xs = new ArrayList<>();
        List<Tensor> gathered = new ArrayList<>();
        for (int r = 0; r < size; r++) {
            xs.add(Tensor.ofFloats(new float[] {r + 1, 10 * (r + 1)}, 2));
            gathered.add(Tensor.allocate(DType.F32, Device.CPU, 2 * size));
        }
        try (CollectiveGroup g = CollectiveGroup.start()) {
            for (Communicator c : comms) {
                c.allGather(xs.get(c.rank()), gathered.get(c.rank()));
            }
            for (Communicator c : comms) {
                c.allReduce(xs.get(c.rank()), ReduceOp.SUM);
            }
        }
        for (int r = 0; r < size; r++) {
            assertArrayEquals(new float[] {10, 100}, xs.get(r).toFloatArray());
            assertArrayEquals(new float[] {1, 10, 2, 20, 3, 30, 4, 40}, gathered.get(r).toFloatArray());
        }
        xs.forEach(Tensor::close);
        gathered.forEach(Tensor::close);
        comms.forEach(Communicator::close);
    }

    // ---- mismatches, faults and bad arguments ----------------------------------------------------

    @Test
    void mismatchedShapesFailOnEveryRankBeforeDataMoves() {
        RankFailureException e = assertThrows(RankFailureException.class, () -> runRanks(3, c -> {
            try (Tensor x = Tensor.allocate(DType.F32, Device.CPU, c.rank() == 1 ? 5 : 4)) {
                x.fillBytes(0);
                c.allReduce(x, ReduceOp.SUM);
            }
            return null;
        }));
        assertEquals(3, e.failures().size(), "every rank fails");
        for (Throwable t : e.failures().values()) {
            CommunicatorException ce = assertInstanceOf(CommunicatorException.class, t);
            assertEquals(CommunicatorException.Kind.MISMATCH, ce.kind());
            assertTrue(ce.getMessage().contains("rank 1 all-reduce F32[5] SUM")
                    && ce.getMessage().contains("rank 0 all-reduce F32[4] SUM"), ce.getMessage());
        }
        RankFailureException roots = assertThrows(RankFailureException.class, () -> runRanks(2, c -> {
            try (Tensor x = Tensor.ofFloats(new float[] {1}, 1)) {
                c.broadcast(x, c.rank()); // each rank names itself as the root
            }
            return null;
        }));
        assertTrue(roots.getMessage().contains("root 0") && roots.getMessage().contains("root 1"), roots.getMessage());
        RankFailureException pair = assertThrows(RankFailureException.class, () -> runRanks(2, c -> {
            try (Tensor x = Tensor.allocate(c.rank() == 0 ? DType.F32 : DType.I32, Device.CPU, 3)) {
                x.fillBytes(0);
                if (c.rank() == 0) {
                    c.send(x, 1);
                } else {
                    c.recv(x, 0);
                }
            }
            return null;
        }));
        assertTrue(pair.getMessage().contains("rank 0 sends send F32[3]") && pair.getMessage().contains("I32[3]"),
                pair.getMessage());
    }

    @Test
    void aStalledRankMakesTheOthersTimeOutNamingItAndLaterCallsFailAtOnce() {
        Duration timeout = Duration.ofMillis(400);
        DeviceMesh mesh = DeviceMesh.cpu(3);
        List<Communicator> comms = mesh.inProcess(timeout);
        AtomicReference<CommunicatorException> late = new AtomicReference<>();
        long start = System.nanoTime();
        RankFailureException e = assertThrows(RankFailureException.class, () -> mesh.run(comms, c -> {
            try (Tensor x = Tensor.ofFloats(new float[] {1, 2}, 2)) {
                if (c.rank() == 2) {
                    Thread.sleep(1500); // stalls past the others' timeout
                    late.set(assertThrows(CommunicatorException.class, () -> c.allReduce(x, ReduceOp.SUM)));
                    return null;
                }
                c.allReduce(x, ReduceOp.SUM);
            }
            return null;
        }));
        double waited = (System.nanoTime() - start) / 1e9;
        assertTrue(waited < 5, "no hang: " + waited + " s");
        for (int r : new int[] {0, 1}) {
            CommunicatorException ce = assertInstanceOf(CommunicatorException.class, e.failures().get(r));
            assertTrue(ce.kind() == CommunicatorException.Kind.TIMEOUT, ce.toString());
            assertTrue(ce.getMessage().contains("rank(s) [2] never arrived"), ce.getMessage());
        }
        assertEquals(CommunicatorException.Kind.ABORTED, late.get().kind());
        assertTrue(late.get().getMessage().contains("timed out"), late.get().getMessage());
        comms.forEach(Communicator::close);
    }

    @Test
    void aRankThatDiesMakesTheOthersFailFastNotAfterTheTimeout() {
        DeviceMesh mesh = DeviceMesh.cpu(4);
        List<Communicator> comms = mesh.inProcess(Duration.ofSeconds(60));
        long start = System.nanoTime();
        RankFailureException e = assertThrows(RankFailureException.class, () -> mesh.run(comms, c -> {
            if (c.rank() == 3) {
                throw new IllegalStateException("simulated crash on rank 3");
            }
            c.barrier();
            return null;
        }));
        assertTrue((System.nanoTime() - start) / 1e9 < 10, "others must not wait out the 60 s timeout");
        assertInstanceOf(IllegalStateException.class, e.getCause(), "the root cause is the crash, not the aborts");
        assertTrue(e.getMessage().startsWith("rank 3 failed"), e.getMessage());
        for (int r = 0; r < 3; r++) {
            CommunicatorException ce = assertInstanceOf(CommunicatorException.class, e.failures().get(r));
            assertEquals(CommunicatorException.Kind.ABORTED, ce.kind());
            assertTrue(ce.getMessage().contains("simulated crash on rank 3"), ce.getMessage());
        }
        comms.forEach(Communicator::close);
    }

    @Test
    void closingARankWhileOthersWaitOnItAbortsThem() throws Exception {
        List<Communicator> comms = InProcessCommunicator.create(2, Duration.ofSeconds(60));
        AtomicReference<Throwable> failure = new AtomicReference<>();
        Thread waiter = Thread.ofPlatform().start(() -> {
            try {
                comms.get(0).barrier();
            } catch (Throwable t) {
                failure.set(t);
            }
        });
        Thread.sleep(200);
        comms.get(1).close();
        comms.get(1).close(); // idempotent
        waiter.join(10_000);
        CommunicatorException ce = assertInstanceOf(CommunicatorException.class, failure.get());
        assertEquals(CommunicatorException.Kind.ABORTED, ce.kind());
        assertTrue(ce.getMessage().contains("rank 1 closed its communicator"), ce.getMessage());
        CommunicatorException after = assertThrows(CommunicatorException.class, () -> comms.get(1).barrier());
        assertEquals(CommunicatorException.Kind.ABORTED, after.kind());
        comms.get(0).close();
    }

    @Test
    void badArgumentsNameTheProblemOnTheCallingRankOnly() {
        List<Communicator> comms = InProcessCommunicator.create(2, TIMEOUT);
        Communicator c = comms.get(0);
        try (Tensor f = Tensor.ofFloats(new float[] {1, 2, 3}, 3); Tensor g = Tensor.allocate(DType.F32, Device.CPU, 4);
                Tensor bytes = Tensor.allocate(DType.I8, Device.CPU, 3);
                Tensor ro = Tensor.wrap(java.lang.foreign.Arena.ofAuto().allocate(12, 64).asReadOnly(), DType.F32, 3)) {
            assertBad("allReduce: send is null", () -> c.allReduce(null, f, ReduceOp.SUM));
            assertBad("recv shape [4] differs from send shape [3]", () -> c.allReduce(f, g, ReduceOp.SUM));
            assertBad("cannot SUM-reduce I8", () -> c.allReduce(bytes, ReduceOp.SUM));
            assertBad("op is null", () -> c.allReduce(f, f, null));
            assertBad("recv is read-only", () -> c.allReduce(f, ro, ReduceOp.SUM));
            assertBad("recv shape [4] must be send shape [3] with dimension 0 multiplied by 2", () -> c.allGather(f, g));
            assertBad("root 2 is out of range [0, 2)", () -> c.broadcast(f, 2));
            assertBad("peer 0 is this rank itself", () -> c.send(f, 0));
            assertBad("peer -1 is out of range", () -> c.recv(f, -1));
            Tensor closed = Tensor.ofFloats(new float[] {1}, 1);
            closed.close();
            assertBad("send is closed", () -> c.allReduce(closed, closed, ReduceOp.MAX));
            // the group is still usable after argument errors: nothing was posted
            runOnBoth(comms, x -> x.barrier());
        }
        assertThrows(IllegalArgumentException.class, () -> InProcessCommunicator.create(0, TIMEOUT));
        assertThrows(IllegalArgumentException.class, () -> InProcessCommunicator.create(2, Duration.ZERO));
        assertThrows(IllegalArgumentException.class, () -> DeviceMesh.cpu(6).reshape("dp", 4, "tp", 2));
        assertThrows(IllegalArgumentException.class, () -> DeviceMesh.cuda(0, 0));
        comms.forEach(Communicator::close);
    }

    private static void assertBad(String fragment, Runnable call) {
        CommunicatorException e = assertThrows(CommunicatorException.class, call::run);
        assertEquals(CommunicatorException.Kind.INVALID_ARGUMENT, e.kind(), e.getMessage());
        assertTrue(e.getMessage().contains(fragment), "expected \"" + fragment + "\" in: " + e.getMessage());
    }

    private static void runOnBoth(List<Communicator> comms, java.util.function.Consumer<Communicator> body) {
        DeviceMesh.cpu(comms.size()).run(comms, c -> {
            body.accept(c);
            return null;
        });
    }

    @Test
    void largeAllReduceSpreadsTheWorkAndStaysExact() {
        long n = 3_000_001;
        List<Tensor> refs = List.of(input(DType.F32, 0, 1, n), input(DType.F32, 1, 1, n));
        List<Boolean> ok = runRanks(2, c -> {
            try (Tensor x = input(DType.F32, c.rank(), 1, n)) {
                c.allReduce(x, ReduceOp.SUM);
                MemorySegment s = x.segment();
                for (long i = 0; i < n; i += 997) {
                    if (Float.floatToRawIntBits(s.get(ValueLayout.JAVA_FLOAT, 4 * i))
                            != (int) expectedBits(DType.F32, ReduceOp.SUM, refs, i)) {
                        return false;
                    }
                }
                return true;
            }
        });
        assertEquals(List.of(true, true), ok);
        refs.forEach(Tensor::close);
    }
}
