package io.qkern;

import java.util.ArrayList;
import java.util.List;

/** The CPU kernel paths this machine can run ("scalar" always; "avx2", "avx512" if supported): every family's tests run on each. */
public final class CpuPaths {
    private CpuPaths() {}

    public static List<String> available() {
        List<String> paths = new ArrayList<>();
        String before = Qkern.cpuPath();
        for (String p : List.of("scalar", "avx2", "avx512")) {
            try {
                Qkern.setCpuPath(p);
                paths.add(p);
            } catch (QkernException e) {
                // this CPU lacks the path: it is reported by `qkern info`, not tested here
            }
        }
        Qkern.setCpuPath(before);
        return paths;
    }
}
