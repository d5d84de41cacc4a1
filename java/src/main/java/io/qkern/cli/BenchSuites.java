package io.qkern.cli;

import java.util.List;

/** Every suite {@code qkern bench} knows, one per kernel family. */
final class BenchSuites {
    private BenchSuites() {}

    static List<BenchSuite> all() {
        return List.of(new Nf4Bench(), new ApmmBench(), new TopkBench(), new AttentionBench(), new DistBench());
    }

    static BenchSuite find(String name) throws UsageException {
        for (BenchSuite s : all()) {
            if (s.name().equals(name)) {
                return s;
            }
        }
        throw new UsageException("unknown benchmark suite \"" + name + "\"; `qkern bench --list` shows them");
    }
}
