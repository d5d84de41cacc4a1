package io.qkern.cli;

import java.util.Locale;
import java.util.Map;

/** The {@code --set} values of one op, defaults applied, with typed getters that name bad values. */
final class Params {
    private final String op;
    private final Map<String, String> values;

    Params(String op, Map<String, String> values) {
        this.op = op;
        this.values = values;
    }

    String string(String name) {
        String v = values.get(name);
        if (v == null) {
            throw new IllegalArgumentException(op + ": parameter " + name + " is required (--set " + name + "=...)");
        }
        return v;
    }

    long integer(String name) {
        String v = string(name);
        try {
            return Long.parseLong(v.trim());
        } catch (NumberFormatException e) {
            throw new IllegalArgumentException(op + ": parameter " + name + "=" + v + " is not an integer");
        }
    }

    double number(String name) {
        String v = string(name);
        try {
            return Double.parseDouble(v.trim());
        } catch (NumberFormatException e) {
            throw new IllegalArgumentException(op + ": parameter " + name + "=" + v + " is not a number");
        }
    }

    boolean bool(String name) {
        String v = string(name).trim().toLowerCase(Locale.ROOT);
        return switch (v) {
            case "true", "1", "yes" -> true;
            case "false", "0", "no" -> false;
            default -> throw new IllegalArgumentException(op + ": parameter " + name + "=" + v + " is not true/false");
        };
    }

    /** A shape written as "4096,11008" or "[4096, 11008]". */
    long[] shape(String name) {
        String v = string(name).trim().replace("[", "").replace("]", "").replace("x", ",");
        if (v.isEmpty()) {
            return new long[0];
        }
        String[] parts = v.split(",", -1);  // -1: keep trailing empty parts, so "8x" or "8,128," is refused
        long[] s = new long[parts.length];
        for (int i = 0; i < parts.length; i++) {
            try {
                s[i] = Long.parseLong(parts[i].trim());
            } catch (NumberFormatException e) {
                throw new IllegalArgumentException(op + ": parameter " + name + "=" + values.get(name)
                        + " is not a shape like 4096,11008");
            }
            if (s[i] < 0) {
                throw new IllegalArgumentException(op + ": parameter " + name + " has a negative dimension");
            }
        }
        return s;
    }
}
