package io.qkern.cli;

import static io.qkern.cli.CliTest.expect;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.qkern.io.Json;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeSet;
import org.junit.jupiter.api.Test;

/** {@code qkern bench attention}: the JSON lines carry the common fields, then the suite's own. */
class AttentionBenchTest {
    @Test
    void attentionJsonLines() {
        CliTest.Result r = expect(0, "bench", "attention", "--quick", "--json", "--device", "cpu");
        Set<String> kernels = new TreeSet<>();
        for (String line : r.out().strip().split("\n")) {
            @SuppressWarnings("unchecked")
            Map<String, Object> row = (Map<String, Object>) Json.parse(line);
            assertEquals(BenchCommandTest.FIELDS, row.keySet().stream().limit(BenchCommandTest.FIELDS.size()).toList(),
                    line);
            assertTrue(((Number) row.get("seconds")).doubleValue() > 0, line);
            assertTrue(row.containsKey("layout") && row.containsKey("block_size") && row.containsKey("kv_mib"), line);
            String kernel = (String) row.get("kernel");
            kernels.add(kernel);
            if (kernel.equals("paged_decode")) {
                assertTrue(((Number) row.get("paged_over_dense")).doubleValue() > 0, line);
            }
        }
        assertEquals(new TreeSet<>(List.of("paged_decode", "dense_decode")), kernels, r.out());
        assertTrue(expect(0, "bench", "--list").out().contains("attention "));
    }
}
