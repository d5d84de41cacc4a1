package io.qkern.cli;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Tensor;
import io.qkern.topk.Dgc;
import io.qkern.topk.TopK;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;

/** The top-k / DGC ops of {@code qkern run}. */
final class TopkOps {
    private TopkOps() {}

    static final class Select implements Op {
        @Override
        public String name() {
            return "topk";
        }

        @Override
        public String summary() {
            return "exact top-k (radix select): k largest |x| (or x), ties to the lower index";
        }

        @Override
        public List<Slot> inputs() {
            return List.of(new Slot("x", "F32, any shape (flattened row-major)"));
        }

        @Override
        public List<Slot> outputs() {
            return List.of(new Slot("indices", "I64 [k], by descending key (ties: lower index first)"),
                    new Slot("values", "F32 [k], x at those indices"));
        }

        @Override
        public List<Param> params() {
            return List.of(new Param("k", null, "how many, 0..n"),
                    new Param("order", "magnitude", "magnitude, largest or smallest"));
        }

        @Override
        public Map<String, Tensor> run(Map<String, Tensor> in, Params p, Device device) {
            Tensor x = in.get("x");
            TopK.Order order = switch (p.string("order").trim().toLowerCase(Locale.ROOT)) {
                case "magnitude" -> TopK.Order.MAGNITUDE;
                case "largest" -> TopK.Order.LARGEST;
                case "smallest" -> TopK.Order.SMALLEST;
                default -> throw new IllegalArgumentException("topk: order=" + p.string("order")
                        + " is not magnitude, largest or smallest");
            };
            TopK.Result r = TopK.select("x", x, p.integer("k"), order, true);
            Map<String, Tensor> out = new LinkedHashMap<>();
            out.put("indices", r.indices());
            out.put("values", r.values());
            return out;
        }
    }

    static final class DgcStep implements Op {
        @Override
        public String name() {
            return "dgc.step";
        }

        @Override
        public String summary() {
            return "one Deep Gradient Compression step: momentum correction, accumulation, top-k, masking";
        }

        @Override
        public List<Slot> inputs() {
            return List.of(new Slot("grad", "F32, any shape"), new Slot("u", "F32, grad's shape (momentum)"),
                    new Slot("v", "F32, grad's shape (accumulated residual)"));
        }

        @Override
        public List<Slot> outputs() {
            return List.of(new Slot("indices", "I32 [k], ascending flat indices of the sent elements"),
                    new Slot("values", "F32 [k], the sent values"), new Slot("u", "F32, updated and masked"),
                    new Slot("v", "F32, updated; sent elements zeroed"));
        }

        @Override
        public List<Param> params() {
            return List.of(new Param("ratio", null, "density: k = ceil(n * ratio), in (0, 1]"),
                    new Param("momentum", "0.9", "momentum m"),
                    new Param("nesterov", "false", "Nesterov momentum correction"),
                    new Param("clip_norm", "0", "local gradient clipping by L2 norm (0 = off)"));
        }

        @Override
        public Map<String, Tensor> run(Map<String, Tensor> in, Params p, Device device) {
            Tensor grad = in.get("grad");
            long n = grad.numel();
            long k = TopK.kFor(n, p.number("ratio"));
            Dgc.Options o = Dgc.Options.DEFAULT.withMomentum((float) p.number("momentum"), p.bool("nesterov"))
                    .withClipNorm((float) p.number("clip_norm"));
            Map<String, Tensor> out = new LinkedHashMap<>();
            try {
                // the inputs belong to the caller: step on copies
                Tensor u = put(out, "u", in.get("u").copyTo(device));
                Tensor v = put(out, "v", in.get("v").copyTo(device));
                Tensor idx = put(out, "indices", Tensor.allocate(DType.I32, device, k));
                Tensor val = put(out, "values", Tensor.allocate(DType.F32, device, k));
                Dgc.step("grad", grad, u, v, o, idx, val);
                Map<String, Tensor> ordered = new LinkedHashMap<>();
                for (String name : List.of("indices", "values", "u", "v")) {
                    ordered.put(name, out.get(name));
                }
                return ordered;
            } catch (RuntimeException e) {
                out.values().forEach(Tensor::close);
                throw e;
            }
        }

        private static Tensor put(Map<String, Tensor> out, String name, Tensor t) {
            out.put(name, t);
            return t;
        }
    }
}
