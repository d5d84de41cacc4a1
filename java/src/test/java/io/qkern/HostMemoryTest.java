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

/** qk_malloc's host allocations: small ones 64-byte aligned, large ones 2 MiB aligned and advised onto huge pages. */
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
    void largeHostAllocationsAreAdvisedOntoHugePages() throws IOException {
        long bytes = 16L << 20;
        long a = lib.malloc(CPU, 0, bytes);
        try {
            assertEquals(0, a % (2L << 20), "a large host buffer is 2 MiB aligned, got 0x" + Long.toHexString(a));
            MemorySegment s = MemorySegment.ofAddress(a).reinterpret(bytes);
            s.fill((byte) 1);
            assertEquals(1, s.get(ValueLayout.JAVA_BYTE, bytes - 1));
            Path thp = Path.of("/sys/kernel/mm/transparent_hugepage/enabled");
            Path smaps = Path.of("/proc/self/smaps");
            if (!Files.isReadable(thp) || !Files.isReadable(smaps) || Files.readString(thp).contains("[never]")) {
                return;  // not Linux, or transparent huge pages switched off: the advice has no effect to check
            }
            // What qk_malloc controls is the advice (VmFlags "hg"). Whether the kernel then backs the
            // range with 2 MiB pages depends on its defrag setting and on free contiguous memory, so a
            // CI machine may legitimately hand out 4 KiB pages; AnonHugePages is only reported.
            Mapping m = mappingOf(Files.readAllLines(smaps), a);
            assertTrue(m.flags().contains("hg"), "expected MADV_HUGEPAGE on the buffer at 0x" + Long.toHexString(a)
                    + ", VmFlags [" + String.join(" ", m.flags()) + "], AnonHugePages " + m.anonHugeKib() + " kB");
        } finally {
            lib.free(CPU, 0, a);
        }
    }

    @Test
    void smapsParserFindsTheMappingHoldingAnAddress() {
        List<String> smaps = List.of(
                "7f0000000000-7f0000200000 rw-p 00000000 00:00 0",
                "AnonHugePages:         0 kB",
                "VmFlags: rd wr mr mw me ac sd",
                "7f0000400000-7f0001400000 rw-p 00000000 00:00 0",
                "AnonHugePages:     14336 kB",
                "VmFlags: rd wr mr mw me ac sd hg");
        assertEquals(new Mapping(14336, List.of("rd", "wr", "mr", "mw", "me", "ac", "sd", "hg")),
                mappingOf(smaps, 0x7f0000500000L));
        assertEquals(new Mapping(0, List.of("rd", "wr", "mr", "mw", "me", "ac", "sd")),
                mappingOf(smaps, 0x7f00001fffffL));
        assertEquals(new Mapping(0, List.of()), mappingOf(smaps, 0x7f0000200000L));
    }

    /** The smaps fields this test reads for one mapping. */
    record Mapping(long anonHugeKib, List<String> flags) {}

    /** AnonHugePages (kB) and VmFlags of the mapping that contains {@code address}, from /proc/self/smaps. */
    static Mapping mappingOf(List<String> smaps, long address) {
        boolean inside = false;
        long huge = 0;
        for (String line : smaps) {
            int dash = line.indexOf('-');
            int space = line.indexOf(' ');
            if (dash > 0 && space > dash && line.substring(0, dash).matches("[0-9a-f]+")) {
                long start = Long.parseUnsignedLong(line.substring(0, dash), 16);
                long end = Long.parseUnsignedLong(line.substring(dash + 1, space), 16);
                inside = Long.compareUnsigned(address, start) >= 0 && Long.compareUnsigned(address, end) < 0;
            } else if (inside && line.startsWith("AnonHugePages:")) {
                huge = Long.parseLong(line.replaceAll("[^0-9]", ""));
            } else if (inside && line.startsWith("VmFlags:")) {
                return new Mapping(huge, List.of(line.substring("VmFlags:".length()).trim().split("\\s+")));
            }
        }
        return new Mapping(0, List.of());
    }
}
