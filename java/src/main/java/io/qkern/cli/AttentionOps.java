package io.qkern.cli;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Tensor;
import io.qkern.attention.PagedAttention;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/** The paged-attention ops of {@code qkern run}. */
final class AttentionOps {
    private AttentionOps() {}

    static final class PagedDecode implements Op {
        @Override
        public String name() {
            return "attention.paged_decode";
        }

        @Override
        public String summary() {
            return "decode attention over a paged KV cache (GQA/MQA), with the log-sum-exp";
        }

        @Override
        public List<Slot> inputs() {
            return List.of(new Slot("q", "F32/F16/BF16 [B, Hq, D]"),
                    new Slot("k_cache", "F32/F16/BF16 [num_blocks, block_size, Hkv, D]"),
                    new Slot("v_cache", "like k_cache"),
                    new Slot("block_tables", "I32 [B, max_blocks]: the blocks of each sequence in order"),
                    new Slot("seq_lens", "I32 [B]: tokens per sequence"));
        }

        @Override
        public List<Slot> outputs() {
            return List.of(new Slot("out", "F32 [B, Hq, D]"), new Slot("lse", "F32 [B, Hq], natural log"));
        }

        @Override
        public List<Param> params() {
            return List.of(new Param("scale", "auto", "softmax scale; auto = 1/sqrt(D)"),
                    new Param("partition_blocks", "0", "blocks per split-KV partition; 0 = automatic"));
        }

        @Override
        public Map<String, Tensor> run(Map<String, Tensor> in, Params p, Device device) {
            Tensor q = in.get("q");
            long[] qs = q.shape();
            if (qs.length != 3) {
                throw new IllegalArgumentException(name() + ": q must be [B, Hq, D], got " + Arrays.toString(qs));
            }
            String scaleText = p.string("scale");
            float scale = scaleText.equals("auto") ? (float) (1 / Math.sqrt(qs[2])) : (float) p.number("scale");
            int partition = (int) Ops.checkedInt(p.integer("partition_blocks"));
            Tensor out = Tensor.allocate(DType.F32, device, qs);
            Tensor lse = null;
            try {
                lse = Tensor.allocate(DType.F32, device, qs[0], qs[1]);
                PagedAttention.decodeInto(q, in.get("k_cache"), in.get("v_cache"), in.get("block_tables"),
                        in.get("seq_lens"), scale, partition, out, lse);
            } catch (RuntimeException e) {
                out.close();
                if (lse != null) {
                    lse.close();
                }
                throw e;
            }
            Map<String, Tensor> result = new LinkedHashMap<>();
            result.put("out", out);
            result.put("lse", lse);
            return result;
        }
    }

    static final class Merge implements Op {
        @Override
        public String name() {
            return "attention.merge";
        }

        @Override
        public String summary() {
            return "merge two partial attention results (out, lse) over disjoint key sets";
        }

        @Override
        public List<Slot> inputs() {
            return List.of(new Slot("out_a", "F32 [..., D]"), new Slot("lse_a", "F32 [...] (natural log; -inf = empty)"),
                    new Slot("out_b", "F32, like out_a"), new Slot("lse_b", "F32, like lse_a"));
        }

        @Override
        public List<Slot> outputs() {
            return List.of(new Slot("out", "F32, like out_a"), new Slot("lse", "F32, like lse_a"));
        }

        @Override
        public List<Param> params() {
            return List.of();
        }

        @Override
        public Map<String, Tensor> run(Map<String, Tensor> in, Params p, Device device) {
            PagedAttention.Result r = PagedAttention.merge(in.get("out_a"), in.get("lse_a"), in.get("out_b"),
                    in.get("lse_b"));
            Map<String, Tensor> result = new LinkedHashMap<>();
            result.put("out", r.out());
            result.put("lse", r.lse());
            return result;
        }
    }
}
