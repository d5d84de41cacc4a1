package io.qkern.dist.tp;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.qkern.Device;
import io.qkern.Tensor;
import io.qkern.io.SafetensorsFile;
import io.qkern.io.SafetensorsFormatException;
import io.qkern.io.TensorInfo;
import io.qkern.nf4.Nf4;
import io.qkern.nf4.Nf4Format;
import io.qkern.nf4.Nf4Tensor;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.Arrays;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The NF4 slice loader against slices built independently: quantizing the dense slice of W on its
 * own gives the same codes and scales as slicing the quantized whole (blocks never straddle a
 * slice edge), and a double-quantized absmax decoded per slice equals the native decode of the
 * whole absmax. It reads only its range: it counts exactly the slice's bytes, and a file whose
 * other bytes are overwritten with garbage gives the same slice.
 */
class Nf4SliceReaderTest {
    @TempDir
    Path dir;

    @Test
    void rowAndColumnShardsEqualTheIndependentlyQuantizedSlices() throws Exception {
        SplittableRandom rnd = new SplittableRandom(81);
        // [40, 512] bs 64: K a multiple of the blocksize; [24, 48] bs 32: K is not (blocks straddle rows)
        check(40, 512, 64, rnd, new int[] {1, 2, 4, 8}, new int[] {1, 2, 4, 8});
        check(24, 48, 32, rnd, new int[] {1, 2}, new int[] {1});
        // N*K = 700 = 10 blocks of 64 and a short one
        check(7, 100, 64, rnd, new int[] {1}, new int[] {1});
    }

    private void check(int n, int k, int bs, SplittableRandom rnd, int[] rowTps, int[] colTps) throws Exception {
        for (boolean dq : new boolean[] {false, true}) {
            float[] w = TpTestData.values(n * k, rnd);
            Path file = dir.resolve("w-" + n + "-" + k + "-" + dq + ".safetensors");
            TpTestData.write(file, (wr, keep) -> TpTestData.addNf4(wr, "l.weight", w, n, k, bs, dq, keep));
            try (SafetensorsFile f = SafetensorsFile.open(file);
                    Nf4Tensor whole = Nf4Tensor.read(f, "l.weight", Device.CPU);
                    Tensor wholeAbsmax = Nf4.absmaxOf(whole)) {
                float[] absmax = wholeAbsmax.toFloatArray();
                for (int tp : rowTps) {
                    for (int r = 0; r < tp; r++) {
                        int r0 = r * n / tp, r1 = (r + 1) * n / tp;
                        try (Nf4SliceReader.Slice s = Nf4SliceReader.readRowShard(f, "l.weight", new TpSplit(tp, r),
                                Device.CPU)) {
                            String what = "rows " + r0 + ".." + r1 + " of [" + n + ", " + k + "] bs " + bs + " dq " + dq;
                            expectSlice(w, n, k, bs, r0, r1, 0, k, absmax, s.weight(), what);
                            assertEquals(expectedBytes(f, r0, r1, 0, k, n, k, bs, dq), s.bytesRead(), what);
                        }
                    }
                }
                for (int tp : colTps) {
                    for (int r = 0; r < tp; r++) {
                        int c0 = r * k / tp, c1 = (r + 1) * k / tp;
                        try (Nf4SliceReader.Slice s = Nf4SliceReader.readColumnShard(f, "l.weight",
                                new TpSplit(tp, r), Device.CPU)) {
                            String what = "columns " + c0 + ".." + c1 + " of [" + n + ", " + k + "] bs " + bs
                                    + " dq " + dq;
                            expectSlice(w, n, k, bs, 0, n, c0, c1, absmax, s.weight(), what);
                            assertEquals(expectedBytes(f, 0, n, c0, c1, n, k, bs, dq), s.bytesRead(), what);
                        }
                    }
                }
            }
        }
    }

    /** The slice's codes equal an independent NF4 quantization of the dense slice; its absmax the whole's entries. */
    private static void expectSlice(float[] w, int n, int k, int bs, int r0, int r1, int c0, int c1, float[] absmax,
            Nf4Tensor got, String what) {
        assertArrayEquals(new long[] {r1 - r0, c1 - c0}, got.shape(), what);
        assertFalse(got.isDoubleQuantized(), what);
        float[] dense = TpTestData.slice(w, k, r0, r1, c0, c1);
        try (Tensor d = Tensor.ofFloats(dense, r1 - r0, c1 - c0);
                Nf4Tensor q = Nf4.quantize(d, new Nf4.Options(bs, false))) {
            assertArrayEquals(q.packed().toByteArray(), got.packed().toByteArray(), what + ": codes");
        }
        // the whole tensor's absmax entries of the slice's blocks, in slice order (bit for bit)
        int cols = c1 - c0;
        float[] expected;
        if (c0 == 0 && c1 == k) {
            int b0 = r0 * k / bs, b1 = (int) Nf4SliceReader.ceilDiv((long) r1 * k, bs);
            expected = Arrays.copyOfRange(absmax, b0, b1);
        } else {
            expected = new float[(r1 - r0) * cols / bs];
            for (int r = r0; r < r1; r++) {
                System.arraycopy(absmax, (r * k + c0) / bs, expected, (r - r0) * cols / bs, cols / bs);
            }
        }
        float[] a = got.absmax().toFloatArray();
        assertEquals(expected.length, a.length, what);
        for (int i = 0; i < a.length; i++) {
            assertEquals(Float.floatToRawIntBits(expected[i]), Float.floatToRawIntBits(a[i]), what + ": absmax[" + i
                    + "] " + a[i] + " vs " + expected[i]);
        }
    }

    /** Bytes of tensor data a slice must read: its codes and scales plus the fixed-size companions. */
    private static long expectedBytes(SafetensorsFile f, int r0, int r1, int c0, int c1, int n, int k, int bs,
            boolean dq) {
        long elems = (long) (r1 - r0) * (c1 - c0);
        long blocks = Nf4SliceReader.ceilDiv(elems, bs);
        long fixed = f.info("l.weight" + Nf4Tensor.QUANT_STATE).byteSize() + 16 * 4;
        if (!dq) {
            return fixed + Nf4SliceReader.ceilDiv(elems, 2) + 4 * blocks;
        }
        long firstBlock = ((long) r0 * k + c0) / bs;
        long lastBlock = (c0 == 0 && c1 == k) ? Nf4SliceReader.ceilDiv((long) r1 * k, bs) - 1
                : ((long) (r1 - 1) * k + c1) / bs - 1;
        long nested = lastBlock / Nf4Format.NESTED_BLOCKSIZE - firstBlock / Nf4Format.NESTED_BLOCKSIZE + 1;
        return fixed + Nf4SliceReader.ceilDiv(elems, 2) + blocks + 4 * nested + 256 * 4;
    }

    @Test
    void aShardLoadsFromAFileWhoseOtherRanksBytesAreGarbage() throws Exception {
        int n = 32, k = 256, bs = 64, tp = 4;
        SplittableRandom rnd = new SplittableRandom(82);
        float[] w = TpTestData.values(n * k, rnd);
        Path file = dir.resolve("poison.safetensors");
        TpTestData.write(file, (wr, keep) -> TpTestData.addNf4(wr, "p.weight", w, n, k, bs, false, keep));
        byte[][] rowCodes = new byte[tp][], colCodes = new byte[tp][];
        float[][] rowAbsmax = new float[tp][], colAbsmax = new float[tp][];
        try (SafetensorsFile f = SafetensorsFile.open(file)) {
            for (int r = 0; r < tp; r++) {
                try (var s = Nf4SliceReader.readRowShard(f, "p.weight", new TpSplit(tp, r), Device.CPU);
                        var c = Nf4SliceReader.readColumnShard(f, "p.weight", new TpSplit(tp, r), Device.CPU)) {
                    rowCodes[r] = s.weight().packed().toByteArray();
                    rowAbsmax[r] = s.weight().absmax().toFloatArray();
                    colCodes[r] = c.weight().packed().toByteArray();
                    colAbsmax[r] = c.weight().absmax().toFloatArray();
                }
            }
        }
        int rank = 2;
        // rows: keep only rank 2's byte range of the codes and of the absmax, 0xFF (NaN scales) elsewhere
        long rowBytes = (long) n / tp * k / 2, rowBlocks = (long) n / tp * k / bs;
        poisonOutside(file, "p.weight", new long[][] {{rank * rowBytes, (rank + 1) * rowBytes}});
        poisonOutside(file, "p.weight" + Nf4Tensor.ABSMAX, new long[][] {{rank * rowBlocks * 4, (rank + 1) * rowBlocks * 4}});
        try (SafetensorsFile f = SafetensorsFile.open(file)) {
            assertThrows(SafetensorsFormatException.class, () -> Nf4Tensor.read(f, "p.weight", Device.CPU),
                    "the poison must make a whole-tensor read fail");
            try (var s = Nf4SliceReader.readRowShard(f, "p.weight", new TpSplit(tp, rank), Device.CPU)) {
                assertArrayEquals(rowCodes[rank], s.weight().packed().toByteArray());
                assertArrayEquals(rowAbsmax[rank], s.weight().absmax().toFloatArray());
            }
            assertThrows(SafetensorsFormatException.class,
                    () -> Nf4SliceReader.readRowShard(f, "p.weight", new TpSplit(tp, rank - 1), Device.CPU));
        }

        // columns: rebuild the file, keep only rank 2's column range of every row
        TpTestData.write(file, (wr, keep) -> TpTestData.addNf4(wr, "p.weight", w, n, k, bs, false, keep));
        long[][] codeRanges = new long[n][], absRanges = new long[n][];
        int cw = k / tp;
        for (int row = 0; row < n; row++) {
            long e0 = (long) row * k + rank * cw;
            codeRanges[row] = new long[] {e0 / 2, (e0 + cw) / 2};
            absRanges[row] = new long[] {e0 / bs * 4, (e0 + cw) / bs * 4};
        }
        poisonOutside(file, "p.weight", codeRanges);
        poisonOutside(file, "p.weight" + Nf4Tensor.ABSMAX, absRanges);
        try (SafetensorsFile f = SafetensorsFile.open(file)) {
            try (var c = Nf4SliceReader.readColumnShard(f, "p.weight", new TpSplit(tp, rank), Device.CPU)) {
                assertArrayEquals(colCodes[rank], c.weight().packed().toByteArray());
                assertArrayEquals(colAbsmax[rank], c.weight().absmax().toFloatArray());
            }
            assertThrows(SafetensorsFormatException.class,
                    () -> Nf4SliceReader.readColumnShard(f, "p.weight", new TpSplit(tp, rank + 1), Device.CPU));
        }
    }

    /** Overwrites every byte of tensor {@code name}'s data outside the given [begin, end) ranges with 0xFF. */
    private static void poisonOutside(Path file, String name, long[][] keep) throws Exception {
        long dataStart;
        TensorInfo info;
        try (SafetensorsFile f = SafetensorsFile.open(file)) {
            info = f.info(name);
        }
        try (FileChannel ch = FileChannel.open(file, StandardOpenOption.READ, StandardOpenOption.WRITE)) {
            ByteBuffer len = ByteBuffer.allocate(8).order(ByteOrder.LITTLE_ENDIAN);
            ch.read(len, 0);
            dataStart = 8 + len.getLong(0);
            byte[] bytes = new byte[(int) info.byteSize()];
            Arrays.fill(bytes, (byte) 0xFF);
            ByteBuffer orig = ByteBuffer.allocate(bytes.length);
            ch.read(orig, dataStart + info.begin());
            for (long[] range : keep) {
                for (long i = range[0]; i < range[1]; i++) {
                    bytes[(int) i] = orig.get((int) i);
                }
            }
            ch.write(ByteBuffer.wrap(bytes), dataStart + info.begin());
        }
    }

    @Test
    void splitsThatDoNotFallOnBlocksOrDoNotDivideAreRefusedByName() throws Exception {
        SplittableRandom rnd = new SplittableRandom(83);
        Path file = dir.resolve("odd.safetensors");
        float[] a = TpTestData.values(24 * 48, rnd), b = TpTestData.values(12 * 192, rnd);
        TpTestData.write(file, (wr, keep) -> {
            TpTestData.addNf4(wr, "a.weight", a, 24, 48, 32, false, keep);   // K not a multiple of the blocksize
            TpTestData.addNf4(wr, "b.weight", b, 12, 192, 64, true, keep);
        });
        try (SafetensorsFile f = SafetensorsFile.open(file)) {
            // 24 rows over 5 ranks: does not divide
            expectRefusal(() -> Nf4SliceReader.readRowShard(f, "a.weight", new TpSplit(5, 0), Device.CPU),
                    "a.weight", "N (out_features) = 24", "tp = 5");
            // 24 / 8 = 3 rows x 48 = 144 elements: not whole blocks of 32
            expectRefusal(() -> Nf4SliceReader.readRowShard(f, "a.weight", new TpSplit(8, 1), Device.CPU),
                    "a.weight", "N (out_features) = 24", "tp = 8", "blocksize 32");
            // K = 48 is not a multiple of 32: no column split is whole blocks
            expectRefusal(() -> Nf4SliceReader.readColumnShard(f, "a.weight", new TpSplit(2, 0), Device.CPU),
                    "a.weight", "K (in_features) = 48", "tp = 2", "blocksize 32");
            // K = 192 over 4 ranks: 48 columns, not whole blocks of 64
            expectRefusal(() -> Nf4SliceReader.readColumnShard(f, "b.weight", new TpSplit(4, 3), Device.CPU),
                    "b.weight", "K (in_features) = 192", "tp = 4", "blocksize 64");
            // K = 192 over 5 ranks: does not divide
            expectRefusal(() -> Nf4SliceReader.readColumnShard(f, "b.weight", new TpSplit(5, 3), Device.CPU),
                    "b.weight", "K (in_features) = 192", "tp = 5");
            // but 192 over 3 ranks is 64 columns each: fine
            try (var s = Nf4SliceReader.readColumnShard(f, "b.weight", new TpSplit(3, 2), Device.CPU)) {
                assertArrayEquals(new long[] {12, 64}, s.weight().shape());
            }
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> Nf4SliceReader.readRowShard(f, "missing.weight", new TpSplit(2, 0), Device.CPU));
            assertTrue(e.getMessage().contains("missing.weight"), e.getMessage());
        }
    }

    private static void expectRefusal(org.junit.jupiter.api.function.Executable call, String... words) {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, call);
        for (String word : words) {
            assertTrue(e.getMessage().contains(word), "\"" + e.getMessage() + "\" should name " + word);
        }
    }
}
