package io.qkern.dist.plan;

import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;

/**
 * The shape of a decoder-only transformer (Llama-style: grouped-query attention and a gated
 * SwiGLU MLP). One layer holds {@code 2 h^2 + 2 h kvDim} attention weights (Q and O are h x h, K and
 * V are h x kvDim with {@code kvDim = kvHeads * h / heads}) and {@code 3 h ffn} MLP weights (gate,
 * up, down); norms and biases are left out.
 *
 * <p>The presets are approximate shapes of well-known model sizes, from their published configs:
 * {@code 7b} (Llama 2 7B: 4096 / 11008 / 32 layers / 32 heads), {@code 13b} (Llama 2 13B: 5120 /
 * 13824 / 40 / 40), {@code 70b} (Llama 2/3 70B: 8192 / 28672 / 80 / 64 heads, 8 KV heads) and
 * {@code 405b} (Llama 3.1 405B: 16384 / 53248 / 126 / 128 heads, 8 KV heads, vocab 128256).
 */
public record ModelShape(String name, int hidden, int ffn, int layers, int heads, int kvHeads, int vocab) {

    public static final ModelShape LLAMA_7B = new ModelShape("7b", 4096, 11008, 32, 32, 32, 32000);
    public static final ModelShape LLAMA_13B = new ModelShape("13b", 5120, 13824, 40, 40, 40, 32000);
    public static final ModelShape LLAMA_70B = new ModelShape("70b", 8192, 28672, 80, 64, 8, 32000);
    public static final ModelShape LLAMA_405B = new ModelShape("405b", 16384, 53248, 126, 128, 8, 128256);

    /** The presets by name. */
    public static final List<ModelShape> PRESETS = List.of(LLAMA_7B, LLAMA_13B, LLAMA_70B, LLAMA_405B);

    public ModelShape {
        positive("hidden", hidden);
        positive("ffn", ffn);
        positive("layers", layers);
        positive("heads", heads);
        positive("kv_heads", kvHeads);
        positive("vocab", vocab);
        if (hidden % heads != 0) {
            throw new IllegalArgumentException("heads (" + heads + ") must divide hidden (" + hidden + ")");
        }
        if (heads % kvHeads != 0) {
            throw new IllegalArgumentException("kv_heads (" + kvHeads + ") must divide heads (" + heads + ")");
        }
        if (name == null || name.isBlank()) {
            name = "custom";
        }
    }

    /**
     * A preset name ({@code 7b}, {@code 13b}, {@code 70b}, {@code 405b}) or a custom shape
     * {@code hidden=H,ffn=F,layers=L[,heads=N][,kv_heads=K][,vocab=V]} (heads default to
     * hidden / 128, kv_heads to heads, vocab to 32000).
     */
    public static ModelShape parse(String spec) {
        if (spec == null || spec.isBlank()) {
            throw new IllegalArgumentException("a model is a preset (7b, 13b, 70b, 405b) or hidden=..,ffn=..,layers=..");
        }
        if (!spec.contains("=")) {
            String n = spec.toLowerCase(Locale.ROOT);
            for (ModelShape m : PRESETS) {
                if (m.name.equals(n)) {
                    return m;
                }
            }
            throw new IllegalArgumentException("unknown model \"" + spec
                    + "\" (presets: 7b, 13b, 70b, 405b; or hidden=..,ffn=..,layers=..[,heads=..,kv_heads=..,vocab=..])");
        }
        Map<String, Integer> v = new LinkedHashMap<>();
        for (String part : spec.split(",")) {
            int eq = part.indexOf('=');
            if (eq <= 0) {
                throw new IllegalArgumentException("model field \"" + part + "\" is not key=value");
            }
            String key = part.substring(0, eq).trim().toLowerCase(Locale.ROOT).replace('-', '_');
            if (!List.of("hidden", "ffn", "layers", "heads", "kv_heads", "vocab").contains(key)) {
                throw new IllegalArgumentException("unknown model field \"" + key
                        + "\" (hidden, ffn, layers, heads, kv_heads, vocab)");
            }
            String value = part.substring(eq + 1).trim();
            try {
                v.put(key, Integer.parseInt(value));
            } catch (NumberFormatException e) {
                throw new IllegalArgumentException("model field " + key + " must be an integer, got \"" + value + "\"");
            }
        }
        for (String required : List.of("hidden", "ffn", "layers")) {
            if (!v.containsKey(required)) {
                throw new IllegalArgumentException("a custom model needs " + required + "= (got " + spec + ")");
            }
        }
        int hidden = v.get("hidden");
        positive("hidden", hidden);
        int heads = v.getOrDefault("heads", Math.max(1, hidden / 128));
        return new ModelShape("custom", hidden, v.get("ffn"), v.get("layers"), heads, v.getOrDefault("kv_heads", heads),
                v.getOrDefault("vocab", 32000));
    }

    /** Width of K and V: kvHeads * headDim. */
    public long kvDim() {
        return (long) kvHeads * (hidden / heads);
    }

    /** Weights of one layer: 2 h^2 + 2 h kvDim + 3 h ffn. */
    public long layerParameters() {
        long h = hidden;
        return 2 * h * h + 2 * h * kvDim() + 3 * h * ffn;
    }

    /** Weights of the whole model: layers plus input embedding and output head (vocab x h each). */
    public long totalParameters() {
        return layers * layerParameters() + 2L * vocab * hidden;
    }

    /**
     * Forward FLOPs per token of one layer: 2 per weight, plus causal attention over a sequence of
     * {@code seq} (Q K^T and P V, each 2 h (seq/2) on average over the sequence's positions).
     */
    public double layerForwardFlopsPerToken(int seq) {
        return 2.0 * layerParameters() + 2.0 * hidden * (double) seq;
    }

    /** E.g. {@code 70b (hidden 8192, ffn 28672, 80 layers, 64 heads, 8 kv heads, vocab 32000)}. */
    public String describe() {
        return String.format(Locale.ROOT, "%s (hidden %d, ffn %d, %d layers, %d heads, %d kv heads, vocab %d)", name,
                hidden, ffn, layers, heads, kvHeads, vocab);
    }

    private static void positive(String what, int value) {
        if (value <= 0) {
            throw new IllegalArgumentException("model " + what + " must be > 0, got " + value);
        }
    }
}
