package io.qkern;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.qkern.internal.NativeLib;
import java.io.IOException;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.Test;

/** qk_malloc's host allocations: small ones 64-byte aligned, large ones on 2 MiB (huge) pages. */
class HostMemoryTest {
    private final NativeLib lib = NativeLib.get();
    private static final int CPU = Device.Kind.CPU.code();

    @Test
    void smallHostAllocationsAre64ByteAligned() {
        long a = lib.malloc(CPU, 0, 1000);
        try {
            assertEquals(0, a % 64, "address " + Long.toHexString(a));
            MemorySegment s = MemorySegment.ofAddress(a).reinterpret(1000);
            s.fill((byte) 7);
            assertEquals(7, s.get(ValueLayout.JAVA_BYTE, 999));
        } finally {
            lib.free(CPU, 0, a);
        }
    }

    @Test
    void largeHostAllocationsTakeHugePagesWhereTheKernelOffersThem() throws IOException {
        long bytes = 16L << 20;
        long a = lib.malloc(CPU, 0, bytes);
        try {
            assertEquals(0, a % (2L << 20), "a large host buffer is 2 MiB aligned, got 0x" + Long.toHexString(a));
            MemorySegment s = MemorySegment.ofAddress(a).reinterpret(bytes);
            s.fill((byte) 1);  // first touch: the pages are faulted in now
            assertEquals(1, s.get(ValueLayout.JAVA_BYTE, bytes - 1));
            Path thp = Path.of("/sys/kernel/mm/transparent_hugepage/enabled");
            Path smaps = Path.of("/proc/self/smaps");
            if (!Files.isReadable(thp) || !Files.isReadable(smaps) || Files.readString(thp).contains("[never]")) {
                return;  // not Linux, or transparent huge pages switched off: the advice has no effect to check
            }
            long huge = anonHugeKib(Files.readAllLines(smaps), a);
            assertTrue(huge >= 2048, "expected the buffer at 0x" + Long.toHexString(a) + " to hold huge pages (THP "
                    + Files.readString(thp).trim() + "), AnonHugePages " + huge + " kB");
        } finally {
            lib.free(CPU, 0, a);
        }
    }

    /** AnonHugePages (kB) of the mapping that contains {@code address}, from /proc/self/smaps. */
    static long anonHugeKib(List<String> smaps, long address) {
        boolean inside = false;
        for (String line : smaps) {
            int dash = line.indexOf('-');
            int space = line.indexOf(' ');
            if (dash > 0 && space > dash && line.substring(0, dash).matches("[0-9a-f]+")) {
                long start = Long.parseUnsignedLong(line.substring(0, dash), 16);
                long end = Long.parseUnsignedLong(line.substring(dash + 1, space), 16);
                inside = Long.compareUnsigned(address, start) >= 0 && Long.compareUnsigned(address, end) < 0;
            } else if (inside && line.startsWith("AnonHugePages:")) {
                return Long.parseLong(line.replaceAll("[^0-9]", ""));
            }
        }
        return 0;
    }
}
