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

/** {@code qkern bench}: the JSON lines a CI job reads, the table, the suite list, bad usage. */
class BenchCommandTest {
    static final List<String> FIELDS = List.of("kernel", "shape", "dtype", "backend", "seconds", "gbps",
            "pct_of_probe", "probe_gbps");

    @Test
    void nf4JsonLinesCarryTheDocumentedFields() {
        CliTest.Result r = expect(0, "bench", "nf4", "--quick", "--json", "--device", "cpu");
        Set<String> kernels = new TreeSet<>();
        for (String line : r.out().strip().split("\n")) {
            @SuppressWarnings("unchecked")
            Map<String, Object> row = (Map<String, Object>) Json.parse(line);
            assertEquals(FIELDS, row.keySet().stream().limit(FIELDS.size()).toList(), line);
            double seconds = ((Number) row.get("seconds")).doubleValue();
            double probe = ((Number) row.get("probe_gbps")).doubleValue();
            assertTrue(seconds > 0 && probe > 0, line);
            double gbps = ((Number) row.get("gbps")).doubleValue();
            assertEquals(100 * gbps / probe, ((Number) row.get("pct_of_probe")).doubleValue(), 0.01 + 1e-3 * gbps, line);
            kernels.add((String) row.get("kernel"));
        }
        // quick mode: M = 1 (fused GEMV) and M = 16 (tiled kernel), each beside the dense F32 matmul
        assertEquals(new TreeSet<>(List.of("nf4_dequantize", "nf4_gemv", "dense_f32_gemv", "nf4_gemm", "dense_f32_gemm",
                "nf4_input_grad")), kernels,
                r.out());
    }

    @Test
    void topkReportsTheSelectionBesideItsBaselines() {
        CliTest.Result r = expect(0, "bench", "topk", "--quick", "--json");
        Set<String> kernels = new TreeSet<>();
        for (String line : r.out().strip().split("\n")) {
            @SuppressWarnings("unchecked")
            Map<String, Object> row = (Map<String, Object>) Json.parse(line);
            assertEquals(FIELDS, row.keySet().stream().limit(FIELDS.size()).toList(), line);
            kernels.add((String) row.get("kernel"));
        }
        assertEquals(new TreeSet<>(List.of("topk_exact", "nth_element_baseline", "full_sort_baseline", "dgc_step",
                "momentum_pass_baseline")), kernels, r.out());
    }

    @Test
    void distReportsEveryCollectiveWithBusBandwidthBesideMemcpy() {
        CliTest.Result r = expect(0, "bench", "dist", "--quick", "--json");
        Set<String> kernels = new TreeSet<>();
        for (String line : r.out().strip().split("\n")) {
            @SuppressWarnings("unchecked")
            Map<String, Object> row = (Map<String, Object>) Json.parse(line);
            assertEquals(FIELDS, row.keySet().stream().limit(FIELDS.size()).toList(), line);
            kernels.add((String) row.get("kernel"));
            if (row.get("kernel").equals("tp_mlp_forward_nf4")) {
                assertTrue(row.containsKey("scaling_efficiency") && row.containsKey("tp"), line);
            } else if (!row.get("kernel").equals("memcpy_baseline")) {
                assertTrue(row.containsKey("busbw_gbps") && row.containsKey("x_memcpy") && row.get("ranks") != null,
                        line);
            }
        }
        assertEquals(new TreeSet<>(List.of("all_reduce_sum", "all_gather", "reduce_scatter_sum", "broadcast",
                "memcpy_baseline", "tp_mlp_forward_nf4")), kernels, r.out());
    }

    @Test
    void tableAndListAndUnknownSuite() {
        CliTest.Result table = expect(0, "bench", "nf4", "--quick");
        assertTrue(table.out().startsWith("kernel"), table.out());
        assertTrue(table.out().contains("nf4_gemv"), table.out());
        assertTrue(expect(0, "bench", "--list").out().contains("nf4 "));
        assertTrue(expect(2, "bench", "nope").all().contains("unknown benchmark suite \"nope\""));
    }
}
