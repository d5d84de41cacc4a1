package io.qkern.io;

import java.math.BigDecimal;
import java.math.MathContext;
import java.math.RoundingMode;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * A small, strict JSON (RFC 8259) parser and writer with no dependencies.
 *
 * <h2>Parsing</h2>
 * {@link #parse(String, int)} maps JSON values to Java as follows:
 * <ul>
 *   <li>object: {@code LinkedHashMap<String, Object>}, keys in document order; a duplicate key is an error;</li>
 *   <li>array: {@code ArrayList<Object>};</li>
 *   <li>string: {@link String};</li>
 *   <li>number: {@link Long} when it has no fraction or exponent and fits in 64 bits, otherwise
 *       {@link Double}; a number too large for a double (such as {@code 1e400}) is an error, and the
 *       non-standard literals {@code NaN} and {@code Infinity} are rejected;</li>
 *   <li>{@code true}/{@code false}: {@link Boolean};</li>
 *   <li>{@code null}: the sentinel {@link #NULL}, never Java {@code null}, so that {@code map.get(key) == null}
 *       always means "absent".</li>
 * </ul>
 * Stricter than RFC 8259 requires, the parser also rejects strings holding an unpaired UTF-16 surrogate
 * (escaped or not), since such strings cannot be encoded as UTF-8 (RFC 7493, I-JSON, forbids them too).
 * Nesting is limited to {@value #MAX_DEPTH} levels, so hostile input cannot exhaust the stack. Every
 * parse error is a {@link JsonException} naming the problem and its character offset.
 *
 * <h2>Writing</h2>
 * {@link #writePython(Object)} and {@link #writePretty(Object)} reproduce Python's {@code json.dumps(obj)} and
 * {@code json.dumps(obj, indent=2)} byte for byte; {@link #writeCompact(Object)} reproduces
 * {@code json.dumps(obj, separators=(",", ":"), ensure_ascii=False)}, which for strings and integers is also
 * what serde_json (used by the Rust safetensors crate) emits. The writers accept {@link Map} with
 * {@link String} keys (written in the map's iteration order), {@link List}, {@link String}, {@link Boolean},
 * {@link Byte}/{@link Short}/{@link Integer}/{@link Long}, {@link Float}/{@link Double} (written like Python's
 * {@code repr(float)}; a float is widened to double first), and {@code null} or {@link #NULL}. Anything else,
 * and non-finite numbers (which JSON cannot express), throw {@link IllegalArgumentException}.
 */
public final class Json {

    /** The deepest nesting of arrays and objects {@link #parse} accepts. */
    public static final int MAX_DEPTH = 64;

    /** The value of the JSON literal {@code null}. */
    public static final Object NULL = NullValue.NULL;

    private enum NullValue {
        NULL;

        @Override
        public String toString() {
            return "null";
        }
    }

    /** A malformed JSON text; the message names the problem and the character offset where it was found. */
    public static final class JsonException extends IllegalArgumentException {
        private static final long serialVersionUID = 1L;

        private final int offset;

        JsonException(String problem, int offset) {
            super(problem + " at character offset " + offset);
            this.offset = offset;
        }

        /** The offset, in UTF-16 chars from the start of the text, where the problem was detected. */
        public int offset() {
            return offset;
        }
    }

    private Json() {
    }

    /**
     * Parses a complete JSON text (one value, optionally surrounded by whitespace).
     *
     * @param text      the JSON text
     * @param maxLength the longest text, in chars, the caller is willing to parse
     * @return the value, mapped to Java as described in the class documentation
     * @throws JsonException if the text is longer than {@code maxLength} or is not valid JSON
     */
    public static Object parse(String text, int maxLength) {
        if (text.length() > maxLength) {
            throw new JsonException("JSON text of " + text.length() + " chars exceeds the limit of " + maxLength,
                    maxLength);
        }
        return new Parser(text).parseDocument();
    }

    /** Parses a complete JSON text with no length limit beyond {@link String}'s own. */
    public static Object parse(String text) {
        return parse(text, Integer.MAX_VALUE);
    }

    /** Like Python's {@code json.dumps(value)}: separators {@code ", "} and {@code ": "}, non-ASCII escaped. */
    public static String writePython(Object value) {
        StringBuilder out = new StringBuilder();
        new Writer(out, ", ", ": ", -1, true).write(value, 0);
        return out.toString();
    }

    /** Like Python's {@code json.dumps(value, indent=2)}: one item per line, non-ASCII escaped. */
    public static String writePretty(Object value) {
        StringBuilder out = new StringBuilder();
        new Writer(out, ",", ": ", 2, true).write(value, 0);
        return out.toString();
    }

    /**
     * The most compact form, with non-ASCII characters left as they are: like Python's
     * {@code json.dumps(value, separators=(",", ":"), ensure_ascii=False)}.
     *
     * @throws IllegalArgumentException also if a string holds an unpaired surrogate, which UTF-8 cannot encode
     */
    public static String writeCompact(Object value) {
        StringBuilder out = new StringBuilder();
        new Writer(out, ",", ":", -1, false).write(value, 0);
        return out.toString();
    }

    /**
     * Formats a double exactly like Python's {@code repr(float)}: the shortest digits that read back as the same
     * double, in scientific notation ({@code 1e-05}, {@code 1.5e+16}) exactly when the decimal exponent is below
     * -4 or at least 16, otherwise positional with at least one fractional digit ({@code 2.0}, {@code 0.0001}).
     * Non-finite values give {@code nan}, {@code inf} and {@code -inf}.
     */
    public static String pythonRepr(double v) {
        if (Double.isNaN(v)) {
            return "nan";
        }
        if (Double.isInfinite(v)) {
            return v > 0 ? "inf" : "-inf";
        }
        String sign = (Double.doubleToRawLongBits(v) < 0) ? "-" : "";
        if (v == 0) {
            return sign + "0.0";
        }
        BigDecimal shortest = shortestDecimal(Math.abs(v));
        String digits = shortest.unscaledValue().toString();
        // value = 0.DIGITS * 10^pointPos
        int pointPos = digits.length() - shortest.scale();
        int exponent = pointPos - 1;
        StringBuilder sb = new StringBuilder(sign);
        if (exponent < -4 || exponent >= 16) {
            sb.append(digits.charAt(0));
            if (digits.length() > 1) {
                sb.append('.').append(digits, 1, digits.length());
            }
            sb.append('e').append(exponent < 0 ? '-' : '+');
            int absExp = Math.abs(exponent);
            if (absExp < 10) {
                sb.append('0');
            }
            sb.append(absExp);
        } else if (pointPos <= 0) {
            sb.append("0.").append("0".repeat(-pointPos)).append(digits);
        } else if (pointPos < digits.length()) {
            sb.append(digits, 0, pointPos).append('.').append(digits, pointPos, digits.length());
        } else {
            sb.append(digits).append("0".repeat(pointPos - digits.length())).append(".0");
        }
        return sb.toString();
    }

    /**
     * The shortest decimal that rounds to {@code v} (positive, finite), the one nearest {@code v} if several
     * are equally short: what Python's repr chooses. Java's {@link Double#toString(double)} already gives the
     * shortest when two or more digits are needed, but where a single digit would do it may pick a nearer
     * two-digit decimal instead (it writes {@code 4.9E-324} where Python writes {@code 5e-324}), so a one-digit
     * candidate is tried whenever Java's answer has at most two digits.
     */
    private static BigDecimal shortestDecimal(double v) {
        BigDecimal java = new BigDecimal(Double.toString(v)).stripTrailingZeros();
        if (java.precision() <= 2) {
            // Rounding the exact binary value gives the nearest one-digit decimal.
            BigDecimal oneDigit = new BigDecimal(v).round(new MathContext(1, RoundingMode.HALF_EVEN));
            if (oneDigit.doubleValue() == v) {
                return oneDigit.stripTrailingZeros();
            }
        }
        return java;
    }

    /** Recursive-descent parser over a String; recursion depth is bounded by {@link #MAX_DEPTH}. */
    private static final class Parser {
        private final String s;
        private int pos;
        private int depth;

        Parser(String s) {
            this.s = s;
        }

        Object parseDocument() {
            skipWhitespace();
            Object value = parseValue();
            skipWhitespace();
            if (pos < s.length()) {
                throw error("unexpected " + describe(pos) + " after the JSON value");
            }
            return value;
        }

        private Object parseValue() {
            if (pos >= s.length()) {
                throw error("unexpected end of input, expected a value");
            }
            char c = s.charAt(pos);
            return switch (c) {
                case '{' -> parseObject();
                case '[' -> parseArray();
                case '"' -> parseString();
                case 't' -> literal("true", Boolean.TRUE);
                case 'f' -> literal("false", Boolean.FALSE);
                case 'n' -> literal("null", NULL);
                default -> {
                    if (c == '-' || (c >= '0' && c <= '9')) {
                        yield parseNumber();
                    }
                    throw error("unexpected " + describe(pos) + ", expected a value");
                }
            };
        }

        private Map<String, Object> parseObject() {
            enter();
            pos++; // '{'
            LinkedHashMap<String, Object> map = new LinkedHashMap<>();
            skipWhitespace();
            if (peek() == '}') {
                pos++;
                depth--;
                return map;
            }
            while (true) {
                skipWhitespace();
                if (peek() != '"') {
                    throw error("expected a string key but found " + describe(pos));
                }
                int keyStart = pos;
                String key = parseString();
                if (map.containsKey(key)) {
                    pos = keyStart;
                    throw error("duplicate key " + abbreviate(key));
                }
                skipWhitespace();
                expect(':');
                skipWhitespace();
                map.put(key, parseValue());
                skipWhitespace();
                char c = peek();
                pos++;
                if (c == '}') {
                    depth--;
                    return map;
                }
                if (c != ',') {
                    pos--;
                    throw error("expected ',' or '}' but found " + describe(pos));
                }
            }
        }

        private List<Object> parseArray() {
            enter();
            pos++; // '['
            ArrayList<Object> list = new ArrayList<>();
            skipWhitespace();
            if (peek() == ']') {
                pos++;
                depth--;
                return list;
            }
            while (true) {
                skipWhitespace();
                list.add(parseValue());
                skipWhitespace();
                char c = peek();
                pos++;
                if (c == ']') {
                    depth--;
                    return list;
                }
                if (c != ',') {
                    pos--;
                    throw error("expected ',' or ']' but found " + describe(pos));
                }
            }
        }

        private void enter() {
            if (++depth > MAX_DEPTH) {
                throw error("nesting depth exceeds the limit of " + MAX_DEPTH);
            }
        }

        private String parseString() {
            int start = ++pos; // skip the opening quote
            // Fast path: no escapes, the common case.
            while (pos < s.length()) {
                char c = s.charAt(pos);
                if (c == '"') {
                    String result = s.substring(start, pos);
                    pos++;
                    return result;
                }
                if (c == '\\' || c < 0x20 || Character.isSurrogate(c)) {
                    break;
                }
                pos++;
            }
            StringBuilder sb = new StringBuilder().append(s, start, pos);
            while (true) {
                if (pos >= s.length()) {
                    throw error("unterminated string starting at offset " + (start - 1));
                }
                char c = s.charAt(pos);
                if (c == '"') {
                    pos++;
                    return sb.toString();
                } else if (c == '\\') {
                    pos++;
                    appendEscape(sb);
                } else if (c < 0x20) {
                    throw error("unescaped control character " + describe(pos) + " in string");
                } else if (Character.isHighSurrogate(c) && pos + 1 < s.length()
                        && Character.isLowSurrogate(s.charAt(pos + 1))) {
                    sb.append(c).append(s.charAt(pos + 1));
                    pos += 2;
                } else if (Character.isSurrogate(c)) {
                    throw error("unpaired surrogate " + describe(pos) + " in string");
                } else {
                    sb.append(c);
                    pos++;
                }
            }
        }

        /** Appends the escape sequence after a backslash; {@code pos} is at the char after the backslash. */
        private void appendEscape(StringBuilder sb) {
            if (pos >= s.length()) {
                throw error("unterminated escape sequence");
            }
            char c = s.charAt(pos++);
            switch (c) {
                case '"' -> sb.append('"');
                case '\\' -> sb.append('\\');
                case '/' -> sb.append('/');
                case 'b' -> sb.append('\b');
                case 'f' -> sb.append('\f');
                case 'n' -> sb.append('\n');
                case 'r' -> sb.append('\r');
                case 't' -> sb.append('\t');
                case 'u' -> {
                    int escapeStart = pos - 2;
                    char unit = hex4();
                    if (Character.isHighSurrogate(unit) && s.startsWith("\\u", pos)) {
                        pos += 2;
                        char low = hex4();
                        if (!Character.isLowSurrogate(low)) {
                            pos = escapeStart;
                            throw error("unpaired surrogate escape");
                        }
                        sb.append(unit).append(low);
                    } else if (Character.isSurrogate(unit)) {
                        pos = escapeStart;
                        throw error("unpaired surrogate escape");
                    } else {
                        sb.append(unit);
                    }
                }
                default -> {
                    pos--;
                    throw error("invalid escape sequence \\" + describeChar(c));
                }
            }
        }

        private char hex4() {
            if (pos + 4 > s.length()) {
                throw error("truncated \\u escape");
            }
            int value = 0;
            for (int i = 0; i < 4; i++) {
                int digit = Character.digit(s.charAt(pos), 16);
                // Character.digit also accepts non-ASCII digits; JSON allows only [0-9a-fA-F].
                if (digit < 0 || s.charAt(pos) > 'f') {
                    throw error("invalid hex digit " + describe(pos) + " in \\u escape");
                }
                value = (value << 4) | digit;
                pos++;
            }
            return (char) value;
        }

        /** number = [ "-" ] ( "0" / [1-9] *DIGIT ) [ "." 1*DIGIT ] [ ( "e" / "E" ) [ "+" / "-" ] 1*DIGIT ]. */
        private Object parseNumber() {
            int start = pos;
            if (peek() == '-') {
                pos++;
            }
            if (peek() == '0') {
                pos++;
                if (isDigit(peek())) {
                    throw error("leading zeros are not allowed in numbers");
                }
            } else if (isDigit(peek())) {
                skipDigits();
            } else {
                throw error("expected a digit but found " + describe(pos));
            }
            boolean integral = true;
            if (peek() == '.') {
                integral = false;
                pos++;
                if (!isDigit(peek())) {
                    throw error("expected a digit after the decimal point but found " + describe(pos));
                }
                skipDigits();
            }
            if (peek() == 'e' || peek() == 'E') {
                integral = false;
                pos++;
                if (peek() == '+' || peek() == '-') {
                    pos++;
                }
                if (!isDigit(peek())) {
                    throw error("expected a digit in the exponent but found " + describe(pos));
                }
                skipDigits();
            }
            String literal = s.substring(start, pos);
            if (integral) {
                try {
                    return Long.parseLong(literal);
                } catch (NumberFormatException tooLarge) {
                    // Falls through: an integer beyond 64 bits becomes a double, as in most JSON readers.
                }
            }
            double d = Double.parseDouble(literal);
            if (Double.isInfinite(d)) {
                pos = start;
                throw error("number " + abbreviate(literal) + " is too large for a double");
            }
            return d;
        }

        private void skipDigits() {
            while (isDigit(peek())) {
                pos++;
            }
        }

        private static boolean isDigit(char c) {
            return c >= '0' && c <= '9';
        }

        private Object literal(String word, Object value) {
            if (!s.startsWith(word, pos)) {
                throw error("unexpected " + describe(pos) + ", expected a value");
            }
            pos += word.length();
            return value;
        }

        private void expect(char c) {
            if (peek() != c) {
                throw error("expected '" + c + "' but found " + describe(pos));
            }
            pos++;
        }

        /** The char at {@code pos}, or NUL at the end (NUL can never be valid where it is checked). */
        private char peek() {
            return pos < s.length() ? s.charAt(pos) : '\0';
        }

        private void skipWhitespace() {
            while (pos < s.length()) {
                char c = s.charAt(pos);
                if (c != ' ' && c != '\t' && c != '\n' && c != '\r') {
                    return;
                }
                pos++;
            }
        }

        private String describe(int at) {
            return at >= s.length() ? "end of input" : describeChar(s.charAt(at));
        }

        private static String describeChar(char c) {
            return (c >= 0x20 && c < 0x7f) ? "'" + c + "'" : String.format("U+%04X", (int) c);
        }

        private JsonException error(String problem) {
            return new JsonException(problem, pos);
        }
    }

    /** Keeps error messages bounded when they quote input of arbitrary size. */
    static String abbreviate(String s) {
        String quoted = quoteEscaped(s.length() > 200 ? s.substring(0, 200) : s);
        return s.length() > 200 ? quoted + "... (" + s.length() + " chars)" : quoted;
    }

    private static String quoteEscaped(String s) {
        StringBuilder sb = new StringBuilder();
        new Writer(sb, ",", ":", -1, true).writeString(s);
        return sb.toString();
    }

    /** Serializes Java values as described in the class documentation. */
    private static final class Writer {
        private static final char[] HEX = "0123456789abcdef".toCharArray();

        private final StringBuilder out;
        private final String itemSeparator;
        private final String keySeparator;
        private final int indent; // -1: everything on one line
        private final boolean ensureAscii;

        Writer(StringBuilder out, String itemSeparator, String keySeparator, int indent, boolean ensureAscii) {
            this.out = out;
            this.itemSeparator = itemSeparator;
            this.keySeparator = keySeparator;
            this.indent = indent;
            this.ensureAscii = ensureAscii;
        }

        void write(Object value, int level) {
            switch (value) {
                case null -> out.append("null");
                case NullValue _ -> out.append("null");
                case String s -> writeString(s);
                case Boolean b -> out.append(b);
                case Long l -> out.append(l);
                case Integer i -> out.append(i);
                case Short sh -> out.append(sh);
                case Byte by -> out.append(by);
                case Double d -> writeDouble(d);
                case Float f -> writeDouble(f);
                case Map<?, ?> map -> writeMap(map, level);
                case List<?> list -> writeList(list, level);
                default -> throw new IllegalArgumentException(
                        "cannot write a " + value.getClass().getName() + " as JSON");
            }
        }

        private void writeDouble(double d) {
            if (!Double.isFinite(d)) {
                throw new IllegalArgumentException("JSON cannot represent the number " + d);
            }
            out.append(pythonRepr(d));
        }

        private void writeMap(Map<?, ?> map, int level) {
            if (map.isEmpty()) {
                out.append("{}");
                return;
            }
            out.append('{');
            boolean first = true;
            for (Map.Entry<?, ?> e : map.entrySet()) {
                if (!(e.getKey() instanceof String key)) {
                    throw new IllegalArgumentException("JSON object keys must be strings, got " + e.getKey());
                }
                separate(first, level + 1);
                first = false;
                writeString(key);
                out.append(keySeparator);
                write(e.getValue(), level + 1);
            }
            newline(level);
            out.append('}');
        }

        private void writeList(List<?> list, int level) {
            if (list.isEmpty()) {
                out.append("[]");
                return;
            }
            out.append('[');
            boolean first = true;
            for (Object item : list) {
                separate(first, level + 1);
                first = false;
                write(item, level + 1);
            }
            newline(level);
            out.append(']');
        }

        private void separate(boolean first, int level) {
            if (!first) {
                out.append(itemSeparator);
            }
            newline(level);
        }

        private void newline(int level) {
            if (indent >= 0) {
                out.append('\n').append(" ".repeat(indent * level));
            }
        }

        void writeString(String s) {
            out.append('"');
            for (int i = 0; i < s.length(); i++) {
                char c = s.charAt(i);
                switch (c) {
                    case '"' -> out.append("\\\"");
                    case '\\' -> out.append("\\\\");
                    case '\n' -> out.append("\\n");
                    case '\r' -> out.append("\\r");
                    case '\t' -> out.append("\\t");
                    case '\b' -> out.append("\\b");
                    case '\f' -> out.append("\\f");
                    default -> {
                        if (c < 0x20 || (ensureAscii && c > 0x7e)) {
                            // Python escapes DEL and everything non-ASCII per UTF-16 unit, in lowercase hex.
                            appendUnicodeEscape(c);
                        } else if (Character.isSurrogate(c)) {
                            if (!Character.isHighSurrogate(c) || i + 1 >= s.length()
                                    || !Character.isLowSurrogate(s.charAt(i + 1))) {
                                throw new IllegalArgumentException("string contains an unpaired surrogate at index "
                                        + i + ", which UTF-8 cannot encode");
                            }
                            out.append(c).append(s.charAt(++i));
                        } else {
                            out.append(c);
                        }
                    }
                }
            }
            out.append('"');
        }

        private void appendUnicodeEscape(char c) {
            out.append("\\u").append(HEX[c >> 12]).append(HEX[(c >> 8) & 0xf]).append(HEX[(c >> 4) & 0xf])
                    .append(HEX[c & 0xf]);
        }
    }
}
