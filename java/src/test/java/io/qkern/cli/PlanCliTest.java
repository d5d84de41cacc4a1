package io.qkern.cli;

import static io.qkern.cli.CliTest.expect;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.qkern.dist.plan.Fabric;
import io.qkern.dist.plan.GpuSpec;
import io.qkern.dist.plan.LayerPlan;
import io.qkern.dist.plan.Link;
import io.qkern.dist.plan.ModelShape;
import io.qkern.io.Json;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import org.junit.jupiter.api.Test;

/** {@code qkern plan}: the table, the JSON lines, the calibration report and bad arguments. */
class PlanCliTest {

    @Test
    void tablePrintsOneRowPerMeshWithTheModelsNumbers() {
        CliTest.Result r = expect(0, "plan", "--model", "70b", "--gpus", "8,64,512,1024", "--tp", "8");
        LayerPlan plan = new LayerPlan(ModelShape.LLAMA_70B, GpuSpec.H100_SXM, new Fabric(Link.NVLINK, Link.INFINIBAND, 8),
                8, 16384, 4096, LayerPlan.Weights.BF16, LayerPlan.Step.TRAINING, 0);
        assertTrue(r.out().contains("compute ms") && r.out().contains("efficiency"), r.out());
        for (int gpus : new int[] {8, 64, 512, 1024}) {
            LayerPlan.Prediction p = plan.predict(gpus);
            String row = String.format(Locale.ROOT, "%6d %4d %5d %5d %12.3f %12.3f %12.3f %12.3f %9.1f%%", gpus, 8,
                    gpus / 8, gpus / 8, p.computeSeconds() * 1e3, p.tpComm().seconds() * 1e3, p.dpComm().seconds() * 1e3,
                    p.totalSeconds() * 1e3, p.efficiency() * 100);
            assertTrue(r.out().contains(row), "missing row\n" + row + "\nin\n" + r.out());
        }
    }

    @Test
    void readmeExampleIsWhatTheCommandPrints() throws java.io.IOException {
        String readme = java.nio.file.Files.readString(java.nio.file.Path.of(System.getProperty("qkern.test.repo", ".."))
                .resolve("README.md"));
        java.util.regex.Matcher m = java.util.regex.Pattern.compile("```\\n\\$ qkern (plan [^\\n]*)\\n(.*?)```",
                java.util.regex.Pattern.DOTALL).matcher(readme);
        assertTrue(m.find(), "README.md shows a qkern plan example");
        CliTest.Result r = expect(0, (Object[]) m.group(1).split(" "));
        assertEquals(m.group(2).strip(), r.out().strip(), "the README's qkern plan example differs from the output");
    }

    @Test
    void jsonIsOneObjectPerMeshWithEveryField() {
        CliTest.Result r = expect(0, "plan", "--model", "hidden=4096,ffn=11008,layers=32", "--gpus", "8,16", "--tp", "4",
                "--gpu", "a100", "--intra", "pcie", "--inter", "ethernet", "--tokens", "2048", "--weights", "nf4", "--dgc",
                "0.01", "--json");
        List<String> lines = r.out().lines().toList();
        assertEquals(2, lines.size(), r.out());
        LayerPlan plan = new LayerPlan(ModelShape.parse("hidden=4096,ffn=11008,layers=32"), GpuSpec.A100_SXM,
                new Fabric(Link.PCIE, Link.ETHERNET, 8), 4, 2048, 4096, LayerPlan.Weights.NF4, LayerPlan.Step.TRAINING,
                0.01);
        int[] gpus = {8, 16};
        for (int i = 0; i < 2; i++) {
            @SuppressWarnings("unchecked")
            Map<String, Object> o = (Map<String, Object>) Json.parse(lines.get(i));
            for (String f : List.of("model", "gpus", "tp", "dp", "nodes", "gpu", "intra", "inter", "gpus_per_node", "step",
                    "tokens", "seq", "weights", "dgc_ratio", "compute_s", "tp_comm_s", "dp_comm_s", "total_s",
                    "single_gpu_s", "ideal_s", "efficiency", "tp_algorithm", "dp_algorithm")) {
                assertTrue(o.containsKey(f), f + " in " + lines.get(i));
            }
            LayerPlan.Prediction p = plan.predict(gpus[i]);
            assertEquals((long) gpus[i], ((Number) o.get("gpus")).longValue());
            assertEquals(gpus[i] / 4, ((Number) o.get("dp")).intValue());
            assertEquals("a100", o.get("gpu"));
            assertEquals("pcie", o.get("intra"));
            assertEquals("ethernet", o.get("inter"));
            assertEquals("nf4", o.get("weights"));
            assertEquals(p.totalSeconds(), ((Number) o.get("total_s")).doubleValue());
            assertEquals(p.efficiency(), ((Number) o.get("efficiency")).doubleValue());
            assertEquals(p.dpComm().algorithm(), o.get("dp_algorithm"));
        }
    }

    @Test
    void calibrateReportsMeasuredAgainstPredictedAndBothPlans() {
        CliTest.Result r = expect(0, "plan", "--calibrate", "--quick", "--json", "--gpus", "8");
        List<Map<String, Object>> rows = r.out().lines().map(l -> {
            @SuppressWarnings("unchecked")
            Map<String, Object> o = (Map<String, Object>) Json.parse(l);
            return o;
        }).toList();
        long collectives = rows.stream().filter(o -> "collective".equals(o.get("calibration"))).count();
        assertEquals(10, collectives, r.out()); // 5 quick sizes x (all-reduce, all-gather)
        for (Map<String, Object> o : rows) {
            if ("collective".equals(o.get("calibration")) || "kernel".equals(o.get("calibration"))) {
                double m = ((Number) o.get("measured_s")).doubleValue();
                double p = ((Number) o.get("predicted_s")).doubleValue();
                assertEquals(100 * (p - m) / m, ((Number) o.get("error_pct")).doubleValue(), 1e-9);
            }
        }
        assertEquals(1, rows.stream().filter(o -> "link".equals(o.get("calibration"))).count());
        assertEquals(3, rows.stream().filter(o -> "kernel".equals(o.get("calibration"))).count());
        // The plan with the defaults, then the one with this machine's measured compute and link.
        List<Map<String, Object>> plans = rows.stream().filter(o -> o.containsKey("efficiency")).toList();
        assertEquals(2, plans.size(), r.out());
        assertEquals("h100", plans.get(0).get("gpu"));
        assertEquals("measured", plans.get(1).get("gpu"));
        assertEquals("measured", plans.get(1).get("intra"));
        assertEquals("7b", plans.get(1).get("model"));
        assertTrue(r.err().contains("not a result"), r.err());
    }

    @Test
    void badArgumentsAreUsageErrorsNamingTheValue() {
        bad("tp (16) must divide gpus (8)", "--model", "7b", "--gpus", "8", "--tp", "16");
        bad("gpus (12) must be a multiple of gpus per node (8)", "--model", "7b", "--gpus", "12", "--tp", "4");
        bad("unknown model \"8b\"", "--model", "8b");
        bad("unknown link \"token-ring\"", "--model", "7b", "--inter", "token-ring");
        bad("unknown gpu \"v100\"", "--model", "7b", "--gpu", "v100");
        bad("--tokens must be >= 1, got 0", "--model", "7b", "--tokens", "0");
        bad("--tp must be >= 1, got -2", "--model", "7b", "--tp", "-2");
        bad("--gpus takes a comma-separated list of GPU counts, got \"8,x\"", "--model", "7b", "--gpus", "8,x");
        bad("--gpus counts must be >= 1, got 0", "--model", "7b", "--gpus", "0,8");
        bad("--dgc must be a ratio in (0, 1], got 2", "--model", "7b", "--dgc", "2");
        bad("unknown weight format \"int3\"", "--model", "7b", "--weights", "int3");
        bad("plan needs --model", "--gpus", "8");
        bad("tp 3 must divide hidden (4096)", "--model", "7b", "--tp", "3", "--gpus", "3");
        bad("unknown option --pipeline", "--model", "7b", "--pipeline", "4");
    }

    private static void bad(String message, String... args) {
        String[] argv = new String[args.length + 1];
        argv[0] = "plan";
        System.arraycopy(args, 0, argv, 1, args.length);
        CliTest.Result r = expect(2, (Object[]) argv);
        assertTrue(r.err().contains(message), "expected \"" + message + "\" in\n" + r.err());
    }
}
