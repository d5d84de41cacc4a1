package io.qkern.attention;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Tensor;
import java.util.Arrays;
import java.util.List;
import java.util.SplittableRandom;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

/** The KV pool with the block manager: copy-on-write and a bit-exact swap out / swap in round trip. */
class KvPoolSwapTest {
    @ParameterizedTest
    @EnumSource(value = DType.class, names = {"F32", "F16", "BF16"})
    void swapRoundTripIsBitExactAndCopyOnWriteKeepsTheParent(DType dtype) {
        SplittableRandom rng = new SplittableRandom(42 + dtype.ordinal());
        int bs = 16;
        int hkv = 2;
        int d = 8;
        int layers = 2;
        PagedKvCache.Spec spec = new PagedKvCache.Spec(layers, 12, bs, hkv, d, dtype);
        PagedKvCache.Spec hostSpec = new PagedKvCache.Spec(layers, 8, bs, hkv, d, dtype);
        BlockManager m = new BlockManager(12, 8, bs, 0);
        try (PagedKvCache dev = PagedKvCache.allocate(Device.CPU, spec);
                PagedKvCache host = PagedKvCache.allocate(Device.CPU, hostSpec)) {
            dev.fillBytes(0xFF);
            int len = 3 * bs + 5;
            m.admit(1, rng.ints(len, 0, 100).toArray());
            int[] table = m.blockTable(1);
            for (int layer = 0; layer < layers; layer++) {
                writeSeq(dev, layer, table, len, rng);
            }
            byte[][] before = snapshot(dev, table, spec);
            // fork, then the parent appends: its shared partial last block is copied first
            m.fork(1, 2);
            BlockManager.Slot s = m.append(1, 5);
            assertEquals(table[3], s.copyFirst().src());
            dev.copyBlocks(List.of(s.copyFirst()));
            for (int layer = 0; layer < layers; layer++) {
                try (Tensor k = Tensor.ofFloats(new float[hkv * d], 1, hkv, d);
                        Tensor v = Tensor.ofFloats(new float[hkv * d], 1, hkv, d)) {
                    dev.write(layer, k, v, new long[] {s.slot()});
                }
            }
            assertArrayEquals(before[3], snapshot(dev, m.blockTable(2), spec)[3], "the child's block changed");
            // swap the child out, scribble over the device pool, swap it back into other blocks
            List<BlockManager.BlockCopy> out = m.swapOut(2);
            PagedKvCache.swapBlocks(dev, host, out);
            m.free(1);
            dev.fillBytes(0x5A);
            List<BlockManager.BlockCopy> in = m.swapIn(2);
            PagedKvCache.swapBlocks(host, dev, in);
            byte[][] after = snapshot(dev, m.blockTable(2), spec);
            for (int i = 0; i < table.length; i++) {
                assertArrayEquals(before[i], after[i], "block " + i + " after the round trip");
            }
            io.qkern.QkernException e = assertThrows(io.qkern.QkernException.class, () -> PagedKvCache.swapBlocks(dev,
                    host, List.of(new BlockManager.BlockCopy(0, 8))));
            org.junit.jupiter.api.Assertions.assertTrue(e.getMessage().contains("destination block 8"), e.getMessage());
        }
    }

    private static void writeSeq(PagedKvCache c, int layer, int[] table, int len, SplittableRandom rng) {
        PagedKvCache.Spec s = c.spec();
        long[] slots = new long[len];
        for (int t = 0; t < len; t++) {
            slots[t] = (long) table[t / s.blockSize()] * s.blockSize() + t % s.blockSize();
        }
        int row = s.numKvHeads() * s.headDim();
        try (Tensor k = Tensor.ofFloats(AttentionFixtures.gaussian(rng, len * row), len, s.numKvHeads(), s.headDim());
                Tensor v = Tensor.ofFloats(AttentionFixtures.gaussian(rng, len * row), len, s.numKvHeads(), s.headDim())) {
            c.write(layer, k, v, slots);
        }
    }

    /** Per block of the table: K and V bytes of every layer, concatenated. */
    private static byte[][] snapshot(PagedKvCache c, int[] table, PagedKvCache.Spec s) {
        int bb = (int) s.blockBytes();
        byte[][] out = new byte[table.length][];
        for (int i = 0; i < table.length; i++) {
            byte[] all = new byte[2 * s.numLayers() * bb];
            for (int layer = 0; layer < s.numLayers(); layer++) {
                byte[] k = c.key(layer).toByteArray();
                byte[] v = c.value(layer).toByteArray();
                System.arraycopy(k, table[i] * bb, all, 2 * layer * bb, bb);
                System.arraycopy(v, table[i] * bb, all, (2 * layer + 1) * bb, bb);
            }
            out[i] = all;
        }
        return Arrays.copyOf(out, out.length);
    }
}
