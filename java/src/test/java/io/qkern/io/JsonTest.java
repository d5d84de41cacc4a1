package io.qkern.io;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

class JsonTest {

    // ---- parsing: values and their Java types ----

    @Test
    void parsesEveryKindOfValue() {
        Object v = Json.parse("""
                 {"s": "text", "i": -42, "d": 2.5, "t": true, "f": false, "n": null,
                  "a": [1, "two", [3]], "o": {"k": {}}}\t\r
                """);
        Map<?, ?> m = assertInstanceOf(LinkedHashMap.class, v);
        assertEquals(List.of("s", "i", "d", "t", "f", "n", "a", "o"), new ArrayList<>(m.keySet()));
        assertEquals("text", m.get("s"));
        assertEquals(-42L, m.get("i"));
        assertEquals(2.5, m.get("d"));
        assertEquals(Boolean.TRUE, m.get("t"));
        assertEquals(Boolean.FALSE, m.get("f"));
        assertSame(Json.NULL, m.get("n"));
        assertEquals("null", Json.NULL.toString());
        assertInstanceOf(ArrayList.class, m.get("a"));
        assertEquals(List.of(1L, "two", List.of(3L)), m.get("a"));
        assertEquals(Map.of("k", Map.of()), m.get("o"));
    }

    @Test
    void keepsInsertionOrderOfKeys() {
        Map<?, ?> m = (Map<?, ?>) Json.parse("{\"z\":1,\"a\":2,\"m\":3,\"b\":4}");
        assertEquals(List.of("z", "a", "m", "b"), new ArrayList<>(m.keySet()));
    }

    @Test
    void acceptsScalarDocuments() {
        assertEquals(7L, Json.parse(" 7 "));
        assertEquals("x", Json.parse("\"x\""));
        assertSame(Json.NULL, Json.parse("null"));
        assertEquals(List.of(), Json.parse("[ ]"));
        assertEquals(Map.of(), Json.parse("{ }"));
    }

    @Test
    void integersThatFitAreLongsOthersAreDoubles() {
        assertEquals(Long.MAX_VALUE, Json.parse("9223372036854775807"));
        assertEquals(Long.MIN_VALUE, Json.parse("-9223372036854775808"));
        assertEquals(9.223372036854775808e18, Json.parse("9223372036854775808"));
        assertEquals(-9.223372036854775809e18, Json.parse("-9223372036854775809"));
        assertEquals(0L, Json.parse("-0"));
        assertEquals(-0.0, Json.parse("-0.0"));
        assertEquals(1.0, Json.parse("1.0"));
        assertEquals(100.0, Json.parse("1e2"));
        assertEquals(100.0, Json.parse("1E+2"));
        assertEquals(0.01, Json.parse("1e-2"));
        assertEquals(-1.5e-7, Json.parse("-1.5e-7"));
        assertEquals(1e300, Json.parse("1" + "0".repeat(300)));
        assertEquals(0.0, Json.parse("1e-400"));
    }

    @ParameterizedTest
    @ValueSource(strings = {"01", "-01", "00", "1.", ".5", "-.5", "+1", "1e", "1e+", "1.e5", "--1", "-", "0x10",
            "NaN", "Infinity", "-Infinity", "nan", "inf", "1e400", "-1e400", "1_000", "١"})
    void rejectsInvalidNumbers(String text) {
        assertThrows(Json.JsonException.class, () -> Json.parse(text));
    }

    @Test
    void rejectsNumbersTooLargeForADouble() {
        Json.JsonException e = assertThrows(Json.JsonException.class, () -> Json.parse("[1, 2e308]"));
        assertTrue(e.getMessage().contains("too large"), e.getMessage());
        assertEquals(4, e.offset());
    }

    // ---- parsing: strings ----

    @Test
    void decodesEscapes() {
        assertEquals("\" \\ / \b \f \n \r \t", Json.parse("\"\\\" \\\\ \\/ \\b \\f \\n \\r \\t\""));
        assertEquals("é☃", Json.parse("\"\\u00e9\\u2603\""));
        assertEquals("é☃", Json.parse("\"\\u00E9\\u2603\""));
        assertEquals("😀", Json.parse("\"\\ud83d\\ude00\""));
        assertEquals("😀 raw é", Json.parse("\"😀 raw é\""));
        assertEquals("\u0000", Json.parse("\"\\u0000\""));
        assertEquals("a\u007fb", Json.parse("\"a\u007fb\""));
    }

    @ParameterizedTest
    @ValueSource(strings = {"\"abc", "\"\\", "\"\\x\"", "\"\\u12\"", "\"\\u12g4\"", "\"\\U0041\"",
            "\"tab\there\"", "\"nl\nhere\"", "\"nul\u0000here\"", "\"\\ud800\"", "\"\\udc00\"",
            "\"\\ud800\\u0041\"", "\"\\ud800x\"", "\"\ud800\"", "\"\udc00\ud800\"", "'single'", "\"\\u٠٠٤١\""})
    void rejectsInvalidStrings(String text) {
        assertThrows(Json.JsonException.class, () -> Json.parse(text));
    }

    // ---- parsing: structure and limits ----

    @ParameterizedTest
    @ValueSource(strings = {"", " ", "[", "]", "{", "}", "[1,]", "[,1]", "[1 2]", "{\"a\":1,}", "{\"a\" 1}",
            "{\"a\":}", "{a:1}", "{1:1}", "{\"a\":1 \"b\":2}", "tru", "nul", "falsey", "True", "[1] [2]", "1 2",
            "\uFEFF{}", "\u00a0{}", "{}\u000b", "[1]]", "//c\n1", "/*c*/1", "[\"a\":1]"})
    void rejectsMalformedDocuments(String text) {
        assertThrows(Json.JsonException.class, () -> Json.parse(text));
    }

    @Test
    void rejectsDuplicateKeysNamingKeyAndOffset() {
        Json.JsonException e = assertThrows(Json.JsonException.class,
                () -> Json.parse("{\"a\": 1, \"b\": {\"a\": 2, \"a\": 3}}"));
        assertTrue(e.getMessage().contains("duplicate key \"a\""), e.getMessage());
        assertEquals(23, e.offset());
        assertTrue(e.getMessage().contains("offset 23"), e.getMessage());
    }

    @Test
    void reportsTheOffsetOfTheProblem() {
        Json.JsonException e = assertThrows(Json.JsonException.class, () -> Json.parse("[1, 2, x]"));
        assertEquals(7, e.offset());
        assertTrue(e.getMessage().contains("'x'") && e.getMessage().contains("offset 7"), e.getMessage());
        e = assertThrows(Json.JsonException.class, () -> Json.parse("{\"k\": [1, 2}"));
        assertEquals(11, e.offset());
        assertTrue(e.getMessage().contains("expected ',' or ']'"), e.getMessage());
        e = assertThrows(Json.JsonException.class, () -> Json.parse("[\"abc"));
        assertTrue(e.getMessage().contains("unterminated string"), e.getMessage());
        e = assertThrows(Json.JsonException.class, () -> Json.parse("{} x"));
        assertEquals(3, e.offset());
    }

    @Test
    void acceptsNestingUpToTheLimit() {
        int depth = Json.MAX_DEPTH;
        Object v = Json.parse("[".repeat(depth) + "]".repeat(depth));
        for (int i = 1; i < depth; i++) {
            v = ((List<?>) v).get(0);
        }
        assertEquals(List.of(), v);
        String objects = "{\"a\":".repeat(depth - 1) + "{}" + "}".repeat(depth - 1);
        assertInstanceOf(Map.class, Json.parse(objects));
    }

    @Test
    void rejectsDeeperNestingWithoutOverflowingTheStack() {
        int depth = Json.MAX_DEPTH + 1;
        Json.JsonException e = assertThrows(Json.JsonException.class,
                () -> Json.parse("[".repeat(depth) + "]".repeat(depth)));
        assertTrue(e.getMessage().contains("nesting depth"), e.getMessage());
        assertEquals(Json.MAX_DEPTH, e.offset());
        assertThrows(Json.JsonException.class, () -> Json.parse("[".repeat(100_000)));
        assertThrows(Json.JsonException.class, () -> Json.parse("{\"a\":".repeat(100_000)));
        assertThrows(Json.JsonException.class, () -> Json.parse("[{\"a\":".repeat(50_000)));
    }

    @Test
    void enforcesTheCallersLengthLimit() {
        assertEquals(List.of(1L), Json.parse("[1]", 3));
        Json.JsonException e = assertThrows(Json.JsonException.class, () -> Json.parse("[1] ", 3));
        assertTrue(e.getMessage().contains("exceeds the limit of 3"), e.getMessage());
    }

    @Test
    void parsedValuesAreMutableStandardCollections() {
        // Documented types: callers may rely on LinkedHashMap/ArrayList semantics.
        @SuppressWarnings("unchecked")
        Map<String, Object> m = (Map<String, Object>) Json.parse("{\"a\":[1]}");
        m.put("b", 2L);
        @SuppressWarnings("unchecked")
        List<Object> a = (List<Object>) m.get("a");
        a.add(3L);
        assertEquals("{\"a\":[1,3],\"b\":2}", Json.writeCompact(m));
    }

    // ---- writing: byte-for-byte Python json.dumps ----

    /** The same document Python built the expected strings from (see each test). */
    private static Map<String, Object> sampleConfig() {
        Map<String, Object> nested = new LinkedHashMap<>();
        nested.put("empty_list", List.of());
        nested.put("empty_obj", Map.of());
        nested.put("deep", List.of(List.of(1, 2L), List.of((short) 3, Map.of("x", -0.0))));
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("architectures", List.of("LlamaForCausalLM"));
        m.put("hidden_size", 4096);
        m.put("rms_norm_eps", 1e-05);
        m.put("rope_theta", 500000.0);
        m.put("tie", false);
        m.put("bos", null);
        m.put("nested", nested);
        m.put("text", "caf\u00e9 \u2603 \uD83D\uDE00 \"q\" \\ / \n\t\r\b\f \u0001 \u007f");
        m.put("nf4_offset", 0.026047490537166595);
        m.put("big", 1.5e16);
        m.put("neg", -123456789012345678L);
        return m;
    }

    @Test
    void writePythonMatchesJsonDumps() {
        // python3: print(json.dumps(obj))
        String expected = "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 4096, \"rms_norm_eps\": 1e-05, "
                + "\"rope_theta\": 500000.0, \"tie\": false, \"bos\": null, \"nested\": {\"empty_list\": [], "
                + "\"empty_obj\": {}, \"deep\": [[1, 2], [3, {\"x\": -0.0}]]}, \"text\": \"caf\\u00e9 \\u2603 "
                + "\\ud83d\\ude00 \\\"q\\\" \\\\ / \\n\\t\\r\\b\\f \\u0001 \\u007f\", \"nf4_offset\": "
                + "0.026047490537166595, \"big\": 1.5e+16, \"neg\": -123456789012345678}";
        assertEquals(expected, Json.writePython(sampleConfig()));
    }

    @Test
    void writePrettyMatchesJsonDumpsIndent2() {
        // python3: print(json.dumps(obj, indent=2))
        String expected = """
                {
                  "architectures": [
                    "LlamaForCausalLM"
                  ],
                  "hidden_size": 4096,
                  "rms_norm_eps": 1e-05,
                  "rope_theta": 500000.0,
                  "tie": false,
                  "bos": null,
                  "nested": {
                    "empty_list": [],
                    "empty_obj": {},
                    "deep": [
                      [
                        1,
                        2
                      ],
                      [
                        3,
                        {
                          "x": -0.0
                        }
                      ]
                    ]
                  },
                  "text": "caf\\u00e9 \\u2603 \\ud83d\\ude00 \\"q\\" \\\\ / \\n\\t\\r\\b\\f \\u0001 \\u007f",
                  "nf4_offset": 0.026047490537166595,
                  "big": 1.5e+16,
                  "neg": -123456789012345678
                }""";
        assertEquals(expected, Json.writePretty(sampleConfig()));
        Map<String, Object> small = new LinkedHashMap<>();
        small.put("a", 1);
        small.put("b", List.of(1, 2));
        assertEquals("{\n  \"a\": 1,\n  \"b\": [\n    1,\n    2\n  ]\n}", Json.writePretty(small));
        assertEquals("[]", Json.writePretty(List.of()));
        assertEquals("{}", Json.writePretty(Map.of()));
        assertEquals("\"x\"", Json.writePretty("x"));
        assertEquals("[\n  []\n]", Json.writePretty(List.of(List.of())));
    }

    @Test
    void writeCompactKeepsNonAsciiAndAddsNoSpaces() {
        // python3: print(json.dumps(obj, separators=(",", ":"), ensure_ascii=False))
        String expected = "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":4096,\"rms_norm_eps\":1e-05,"
                + "\"rope_theta\":500000.0,\"tie\":false,\"bos\":null,\"nested\":{\"empty_list\":[],"
                + "\"empty_obj\":{},\"deep\":[[1,2],[3,{\"x\":-0.0}]]},\"text\":\"caf\u00e9 \u2603 \uD83D\uDE00 "
                + "\\\"q\\\" \\\\ / \\n\\t\\r\\b\\f \\u0001 \u007f\",\"nf4_offset\":0.026047490537166595,"
                + "\"big\":1.5e+16,\"neg\":-123456789012345678}";
        assertEquals(expected, Json.writeCompact(sampleConfig()));
    }

    @Test
    void writersRoundTripThroughTheParser() {
        Map<String, Object> m = sampleConfig();
        for (String text : List.of(Json.writePython(m), Json.writePretty(m), Json.writeCompact(m))) {
            Map<?, ?> back = (Map<?, ?>) Json.parse(text);
            assertEquals(m.get("text"), back.get("text"));
            assertEquals(m.get("nf4_offset"), back.get("nf4_offset"));
            assertEquals(-123456789012345678L, back.get("neg"));
            assertSame(Json.NULL, back.get("bos"));
            assertEquals(Json.writePython(m), Json.writePython(back));
        }
    }

    @Test
    void writesFloatsWidenedToDouble() {
        // torch float32 values reach Python as doubles: repr(float(torch.tensor(0.1)))
        assertEquals("0.10000000149011612", Json.writePython(0.1f));
        assertEquals("[1, 2, 3, 4]", Json.writePython(List.of((byte) 1, (short) 2, 3, 4L)));
    }

    @Test
    void writersRejectWhatJsonCannotExpress() {
        assertThrows(IllegalArgumentException.class, () -> Json.writePython(Double.NaN));
        assertThrows(IllegalArgumentException.class, () -> Json.writePretty(List.of(Double.POSITIVE_INFINITY)));
        assertThrows(IllegalArgumentException.class, () -> Json.writeCompact(Float.NEGATIVE_INFINITY));
        assertThrows(IllegalArgumentException.class, () -> Json.writePython(Map.of(1, "x")));
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> Json.writePython(new Object()));
        assertTrue(e.getMessage().contains("java.lang.Object"), e.getMessage());
        assertThrows(IllegalArgumentException.class, () -> Json.writePython(new long[] {1}));
        // Compact output is for UTF-8 files: a lone surrogate has no encoding.
        assertThrows(IllegalArgumentException.class, () -> Json.writeCompact("a\ud800"));
        assertThrows(IllegalArgumentException.class, () -> Json.writeCompact("\ude00\ud83d"));
        // Python escapes lone surrogates when ensure_ascii is on: json.dumps("a\ud800")
        assertEquals("\"a\\ud800\"", Json.writePython("a\ud800"));
    }

    // ---- pythonRepr ----

    @Test
    void pythonReprOfNonFiniteValues() {
        assertEquals("nan", Json.pythonRepr(Double.NaN));
        assertEquals("inf", Json.pythonRepr(Double.POSITIVE_INFINITY));
        assertEquals("-inf", Json.pythonRepr(Double.NEGATIVE_INFINITY));
    }

    @Test
    void pythonReprSwitchesToScientificNotationAtTheDocumentedExponents() {
        assertEquals("0.0001", Json.pythonRepr(1e-4));
        assertEquals("1e-05", Json.pythonRepr(1e-5));
        assertEquals("1000000000000000.0", Json.pythonRepr(1e15));
        assertEquals("9999999999999998.0", Json.pythonRepr(9999999999999998.0));
        assertEquals("1e+16", Json.pythonRepr(1e16));
        assertEquals("-1.5e+16", Json.pythonRepr(-1.5e16));
        assertEquals("1e+100", Json.pythonRepr(1e100));
        assertEquals("1.2345e-100", Json.pythonRepr(1.2345e-100));
    }

    @Test
    void pythonReprPrefersTheNearestSingleDigit() {
        // Java's Double.toString gives 4.9E-324 here; Python gives the shortest, 5e-324.
        assertEquals("5e-324", Json.pythonRepr(Double.MIN_VALUE));
        assertEquals("1e-323", Json.pythonRepr(2 * Double.MIN_VALUE));
        assertEquals("2e+23", Json.pythonRepr(2e23));
    }

    /** {@code bits repr}: repr(x) computed by CPython 3.11 for the double with those bits. */
    private static final String PYTHON_REPRS = """
            0x0000000000000000 0.0
            0x8000000000000000 -0.0
            0x3ff0000000000000 1.0
            0xbff0000000000000 -1.0
            0x4000000000000000 2.0
            0x4059000000000000 100.0
            0x3fb999999999999a 0.1
            0x3fc999999999999a 0.2
            0x3fd3333333333334 0.30000000000000004
            0x3fd5555555555555 0.3333333333333333
            0x3fe5555555555555 0.6666666666666666
            0x3f1a36e2eb1c432d 0.0001
            0x3ee4f8b588e368f1 1e-05
            0x3f202e4b6ce5dc68 0.00012345
            0x3ee9e3abe16fc70d 1.2345e-05
            0x430c6bf526340000 1000000000000000.0
            0x4341c37937e08000 1e+16
            0x4341c37937e07fff 9999999999999998.0
            0x434aa535d3d0c000 1.5e+16
            0x437b69b4ba630f35 1.2345678901234568e+17
            0x4480f0cf064dd592 1e+22
            0x44b52d02c7e14af6 1e+23
            0x44c52d02c7e14af6 2e+23
            0x54b249ad2594c37d 1e+100
            0x2b2bff2ee48e0530 1e-100
            0x7fefffffffffffff 1.7976931348623157e+308
            0x0010000000000000 2.2250738585072014e-308
            0x000fffffffffffff 2.225073858507201e-308
            0x0000000000000001 5e-324
            0x0000000000000002 1e-323
            0x0000000000000064 4.94e-322
            0x400921fb54442d18 3.141592653589793
            0x4005bf0a8b145769 2.718281828459045
            0x3f9aac3180000000 0.026047490537166595
            0x411e848000000000 500000.0
            0x40c3880000000000 10000.0
            0x3eb0c6f7a0b5ed8d 1e-06
            0x3f50624dd2f1a9fc 0.001
            0x405edd2f1a9fbe77 123.456
            0xc08edd3c0ca600b0 -987.654321
            0x4340000000000000 9007199254740992.0
            0x4340000000000000 9007199254740992.0
            0x4330000000000000 4503599627370496.0
            0x3fe0000000000000 0.5
            0x3fd0000000000000 0.25
            0x3fc0000000000000 0.125
            0x3ff0000000000001 1.0000000000000002
            0x3fefffffffffffff 0.9999999999999999
            0x40effc0000000000 65504.0
            0x3f10000000000000 6.103515625e-05
            0x3e70000000000000 5.960464477539063e-08
            0x47efffffe0000000 3.4028234663852886e+38
            0x3810000000000000 1.1754943508222875e-38
            0x36a0000000000000 1.401298464324817e-45
            0x3eb0000000000000 9.5367431640625e-07
            0x43118b54f22aeb03 1234567890123456.8
            0x4345ee2a2eb5a5c4 1.2345678901234568e+16
            0x3fe9999999999999 0.7999999999999999
            0x444b1ae4d6e2ef50 1e+21
            0x3e7ad7f29abcaf48 1e-07
            0x3e080d43de9cc603 7e-10
            0x3f0a36e2eb1c432d 5e-05
            0x3f33a92a30553261 0.0003
            0x41b1de784a000000 299792458.0
            0x44dfe185ca57c517 6.02214076e+23
            0x3c07a4da290c1653 1.602176634e-19
            0x3fb99999a0000000 0.10000000149011612
            0x3fc99999a0000000 0.20000000298023224
            0x3fd5555560000000 0.3333333432674408
            0x400921fa00000000 3.141590118408203
            0x3ee4f8b580000000 9.999999747378752e-06
            0x3f9aac3180000000 0.026047490537166595
            0x40effc0000000000 65504.0
            0x39b4484c00000000 1.0000000031710769e-30
            0xf2a74de452e6b438 -1.989032661366619e+244
            0x6513270e269e0d37 7.761117632285041e+178
            0x0c5c7fd0a6a3a450 3.980498358697587e-249
            0xd23f0824128b2f33 -1.5432835417340557e+88
            0x1818e811892f902b 1.3647584518757569e-192
            0x9531985d5d9dc9f8 -1.3701135617873088e-206
            0xe8e25d940ed90475 -1.7160537630466207e+197
            0x36f675cc81e74ef5 6.294675241195386e-44
            0x1600a35a099950d8 1.0613447212142254e-202
            0x6b0d549b6f03675a 4.708325160387546e+207
            0x3d9c172411e20b8f 6.387016158513563e-12
            0x8d116ece1738f7d9 -9.973130378568733e-246
            0x0f21ddb66cad4a26 8.779753225680271e-236
            0x90c192cfd3ac94af -5.795503248498993e-228
            0xf28c105d1fb17c23 -5.988180159386011e+243
            0xa170b33839263059 -1.306052388527796e-147
            0x953f48f1a09f76b5 -2.436117699484841e-206
            0x0fd630f1f29d0da9 2.233386999150174e-232
            0x95e60af593bd04cf -3.51527970626667e-203
            0x0cb1e29c658cda14 1.5987381841032883e-247
            0x3898d190f9ebdacc 4.6678633181812096e-36
            0x8e81973e0becd7b0 -8.441872792105456e-239
            0x2217beaddbc496cb 1.9015657400796622e-144
            0x6b4cb2424a23d596 7.370437700706684e+208
            0x8a6a63ec24ede6a4 -1.7163996725272777e-258
            0x922766581e27a1c0 -3.2367190832119987e-221
            0x8f6d05584ef8aa38 -2.2818334634712625e-234
            0xae97ba94d0eda82f -3.0536383926309363e-84
            0x1a61dbe22e44158b 1.3449551894627777e-181
            0x923a736994e3bf91 -7.317495976062606e-221
            0x301850c5a38fd547 5.249822308814304e-77
            0x18f135d25f557203 1.5450754142984396e-188
            0xb64ce4228c38fb29 -3.953625698224792e-47
            0x907a70c31012f037 -2.72491267476498e-229
            0x9e7769b10f4205b4 -6.505141861548772e-162
            0x7f15052434b9b5df 1.441484839555994e+304
            0x881ed162ae2eb154 -1.4583679262758548e-269
            0xc6f877186d76b07e -7.939416668807721e+33
            0x7731af10506bf2ef 1.4255183989699612e+266
            0xec66a78795e761d1 -1.525315701232403e+214
            0x5c90a9587403e430 7.750545741548908e+137
            0x3f98e2774cbd87ad 0.024301399287089676
            0x2e05319acb5c7427 5.326960081783017e-87
            0xc7a2ea20b2f14c94 -1.2570882301712172e+37
            0x14f4733f3e7d1bfb 9.952684009002448e-208
            0x4cdd2055930d6eaf 1.8721667527122837e+62
            0x7ebff20686734721 3.422978398947072e+302
            0x57ee05cde00902c7 3.6967297937384553e+115
            0x72e6cc3ababced20 3.113284956169447e+245
            0x9be4bcfc49b64a08 -2.6202582260546103e-174
            0x12bd4acefaecbd38 2.0745096302730225e-218
            0x830e07bc1e398f10 -5.877500503097409e-294
            0x2a3af4d46b0a18e8 2.938345597354166e-105
            0x5790f82ec1d3fcff 6.529598674765832e+113
            0xeeeacbe226e87555 -1.9837344250050814e+226
            0x6bf46c697d2caf82 1.0743030475716402e+212
            0xf646e1f40a097c97 -5.629271400715247e+261
            0x13deef86ab1031d0 5.743310614918485e-213
            0x8ede0d7ac3baea9e -4.61515470702556e-237
            0xca02135e92b1d3f2 -3.302201168194502e+48
            0xd17f9acae01f5057 -3.8373366379117136e+84
            0x571242425051c1cc 2.7444240984593666e+111
            0x59a54a7bb1fee08f 7.037254769664525e+123
            0x7f26144b98289fcd 3.0282415270685036e+304
            0xcc011cdd9474031b -1.3427313830183207e+58
            0x119a72d174c9df6a 7.145365052251808e-224
            0x17f5e837d70820fe 3.0010119427191346e-193
            0x451abd81f1d69ed6 8.08174890787967e+24
            0xb2715945795e8229 -1.029599445714058e-65
            0x10a3d6b2aa05e11a 1.6356324386913733e-228
            0xbb2d420f0f88080b -1.210084267904234e-23
            0x4f426dcbb394fb36 6.512205859834416e+73
            0x93f448b3a5aa3c81 -1.5063173670565552e-212
            0xae658f33fe3b890b -3.468068334360956e-85
            0x72158370d269a9a5 3.5862982565236525e+241
            0xb774eb5248db40af -1.500880737539812e-41
            0xe315128862c33a4f -1.9881605394901064e+169
            0x58d5563dab2cd31e 8.608929980762736e+119
            0xf0ce583505c6af07 -2.412056419517317e+235
            0x5affb2297631a992 2.1970596639628e+130
            0x9c6539382b0537e6 -6.864829614150003e-172
            0x7e62aa0a1df9fd78 6.249646571111859e+300
            0x37dc76fb0f17a300 1.3070380624806793e-39
            0x49952399c4aaeac1 3.0170681842882087e+46
            0xbd0561e6211c70cf -9.495701001087435e-15
            0x65dc9f503f63af83 4.750750204750985e+182
            0xeab477d26415479c -1.0267710304426359e+206
            0x7f1b103cdf1582b0 1.8559166032057722e+304
            0x2a96fb1a14a0f9e7 1.6032007377980954e-103
            0x66d2287672fdf202 1.9751801151887592e+187
            0x4720771f8ca81811 4.274642804177215e+34
            0x230d977ee2257159 7.765387138513795e-140
            0x6e36aab0d1bc52d9 8.193439767873551e+222
            0x8cdb305fdd2e1609 -9.721565446084252e-247
            0xb4d66a3a47469a4d -3.6566096214330605e-54
            0xfc891b4a6a50df4d -7.829495745681799e+291
            0xaec6f0245bd86d40 -2.361499160522349e-83
            0x616499c9e25a7605 1.448139668433268e+161
            0x3b1287fff52ddf5d 3.8321725482165366e-24
            0x153e7c2a26a2c0bd 2.373829056313949e-206
            0x26bb7dbd2d1c9af0 4.1586747791282524e-122
            0xa8948c893b618676 -3.337733639824717e-113
            0x0316909e3bbbe9ea 8.832790543982714e-294
            0xd4c28c2e7c26847f -2.0284108606212458e+100
            0x2eae05cf96d0cc5f 7.7271785554382585e-84
            0x482c9cbc43435cc5 4.868121678598285e+39
            0x254b0c4e010c4759 4.877621251706118e-129
            0x88daf4016b4013ef -5.224362650831876e-266
            0x9c1caaf75e8766ed -2.8977267740353203e-173
            0x519088f590fbbd11 8.030506098092244e+84
            0x20203626f3fe39c0 6.045556425707975e-154
            0xdbf4a8b2b0c4312d -9.38484012349791e+134
            0xf341e07a83f73f16 -1.5624204901097633e+247
            0xa7abe1c29e1a8ef4 -1.3820816268679183e-117
            0xbd628881ad1b72db -5.267460409693142e-13
            0x74e69a5d0dd27a65 1.3257208647146701e+255
            0xdef88334e647cb8f -3.1343387564175544e+149
            0xf3aed0b6c7ac1491 -1.7236642596087033e+249
            0xae3a2b7fdfe01893 -5.26215508230537e-86
            0x8f2c6ec8cc4169a3 -1.3972441246414233e-235
            """;

    @Test
    void pythonReprMatchesCPython() {
        List<String> mismatches = new ArrayList<>();
        String[] lines = PYTHON_REPRS.strip().split("\n");
        for (String line : lines) {
            String[] parts = line.strip().split(" ");
            double v = Double.longBitsToDouble(Long.parseUnsignedLong(parts[0].substring(2), 16));
            String actual = Json.pythonRepr(v);
            if (!actual.equals(parts[1])) {
                mismatches.add(parts[0] + ": expected " + parts[1] + " but got " + actual);
            }
        }
        assertTrue(lines.length > 150);
        assertEquals(List.of(), mismatches);
    }

    @Test
    void pythonReprRoundTripsAndIsNoLongerThanJava() {
        java.util.Random random = new java.util.Random(42);
        for (int i = 0; i < 20_000; i++) {
            double v = Double.longBitsToDouble(random.nextLong());
            if (!Double.isFinite(v)) {
                continue;
            }
            String repr = Json.pythonRepr(v);
            assertEquals(Double.doubleToRawLongBits(v), Double.doubleToRawLongBits(Double.parseDouble(repr)), repr);
            assertEquals(v, Json.parse(Json.writePython(v)), repr);
            assertTrue(significantDigits(repr) <= significantDigits(Double.toString(v)), repr);
        }
    }

    private static int significantDigits(String s) {
        String mantissa = s.toLowerCase().split("e")[0].replace("-", "").replace(".", "");
        return mantissa.replaceAll("^0+", "").replaceAll("0+$", "").length();
    }

    @Test
    void abbreviateBoundsLongStringsInMessages() {
        String shortName = Json.abbreviate("a\"b\n");
        assertEquals("\"a\\\"b\\n\"", shortName);
        String longName = Json.abbreviate("x".repeat(10_000));
        assertTrue(longName.length() < 300, longName);
        assertTrue(longName.endsWith("(10000 chars)"), longName);
        assertFalse(Arrays.asList(longName.split("")).contains("\n"));
    }
}
