package io.qkern;

import java.util.Locale;

/** Where a tensor lives: the host CPU or CUDA device {@code index}. */
public record Device(Kind kind, int index) {
    /** Values are {@code enum qk_device_kind} in include/qkern.h. */
    public enum Kind {
        CPU(0), CUDA(1);

        private final int code;

        Kind(int code) {
            this.code = code;
        }

        public int code() {
            return code;
        }
    }

    public static final Device CPU = new Device(Kind.CPU, 0);

    public Device {
        if (kind == null) {
            throw new IllegalArgumentException("device kind is null");
        }
        if (index < 0 || (kind == Kind.CPU && index != 0)) {
            throw new IllegalArgumentException("invalid device index " + index + " for " + kind);
        }
    }

    public static Device cuda(int index) {
        return new Device(Kind.CUDA, index);
    }

    public boolean isCpu() {
        return kind == Kind.CPU;
    }

    /** Parses "cpu", "cuda" (= cuda:0) or "cuda:N". */
    public static Device parse(String text) {
        if (text == null) {
            throw new IllegalArgumentException("device is null (expected cpu, cuda or cuda:N)");
        }
        String t = text.trim().toLowerCase(Locale.ROOT);
        if (t.equals("cpu")) {
            return CPU;
        }
        if (t.equals("cuda") || t.equals("gpu")) {
            return cuda(0);
        }
        if (t.startsWith("cuda:")) {
            try {
                return cuda(Integer.parseInt(t.substring(5)));
            } catch (NumberFormatException e) {
                // fall through to the error below
            }
        }
        throw new IllegalArgumentException("unknown device \"" + text + "\" (expected cpu, cuda or cuda:N)");
    }

    @Override
    public String toString() {
        return kind == Kind.CPU ? "cpu" : "cuda:" + index;
    }
}
