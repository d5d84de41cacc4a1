package io.qkern.cli;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * Parsed command-line arguments: positionals, {@code --flag}, {@code --option value} and
 * repeated {@code --set key=value}. Unknown options are usage errors.
 */
final class Args {
    final List<String> positional = new ArrayList<>();
    final Map<String, String> options = new LinkedHashMap<>();
    final Map<String, String> sets = new LinkedHashMap<>();

    static Args parse(List<String> argv, Set<String> flags, Set<String> valued) throws UsageException {
        Args a = new Args();
        for (int i = 0; i < argv.size(); i++) {
            String s = argv.get(i);
            if (s.equals("--set")) {
                if (i + 1 >= argv.size() || argv.get(i + 1).indexOf('=') <= 0) {
                    throw new UsageException("--set takes key=value" + (i + 1 < argv.size()
                            ? ", got \"" + argv.get(i + 1) + "\"" : ""));
                }
                while (i + 1 < argv.size() && !argv.get(i + 1).startsWith("--") && argv.get(i + 1).indexOf('=') > 0) {
                    String kv = argv.get(++i);
                    int eq = kv.indexOf('=');
                    a.sets.put(kv.substring(0, eq), kv.substring(eq + 1));
                }
            } else if (s.startsWith("--")) {
                String name = s;
                String value = null;
                int eq = s.indexOf('=');
                if (eq > 0) {
                    name = s.substring(0, eq);
                    value = s.substring(eq + 1);
                }
                if (flags.contains(name) && value == null) {
                    a.options.put(name, "true");
                } else if (valued.contains(name)) {
                    if (value == null) {
                        if (i + 1 >= argv.size()) {
                            throw new UsageException(name + " needs a value");
                        }
                        value = argv.get(++i);
                    }
                    a.options.put(name, value);
                } else {
                    throw new UsageException("unknown option " + name);
                }
            } else {
                a.positional.add(s);
            }
        }
        return a;
    }

    boolean flag(String name) {
        return options.containsKey(name);
    }

    String option(String name, String fallback) {
        return options.getOrDefault(name, fallback);
    }

    void expectPositional(int count, String usage) throws UsageException {
        if (positional.size() != count) {
            throw new UsageException("expected " + count + " argument(s), got " + positional.size() + "\nusage: " + usage);
        }
    }
}
