package io.qkern;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.lang.reflect.Method;
import java.net.URL;
import java.net.URLClassLoader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import javax.tools.JavaCompiler;
import javax.tools.ToolProvider;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The README's Java example compiles against this build and runs. */
class ReadmeExampleTest {
    @TempDir
    Path dir;

    @Test
    void javaApiExampleCompilesAndRuns() throws Exception {
        Path readme = Path.of(System.getProperty("qkern.test.repo", "..")).resolve("README.md");
        String text = Files.readString(readme);
        Matcher m = Pattern.compile("## The Java API\\s+```java\\n(.*?)```", Pattern.DOTALL).matcher(text);
        assertTrue(m.find(), "README.md has a ```java block under '## The Java API'");
        String source = m.group(1);
        long mainLines = source.lines().filter(l -> !l.isBlank() && !l.startsWith("import")).count();
        assertTrue(mainLines <= 14, "the example stays short: " + mainLines + " lines");
        Path file = dir.resolve("Example.java");
        Files.writeString(file, source);
        JavaCompiler javac = ToolProvider.getSystemJavaCompiler();
        ByteArrayOutputStream diagnostics = new ByteArrayOutputStream();
        int rc = javac.run(null, diagnostics, diagnostics, "-cp", System.getProperty("java.class.path"), "-d",
                dir.toString(), file.toString());
        assertEquals(0, rc, "javac: " + diagnostics.toString(StandardCharsets.UTF_8));
        PrintStream saved = System.out;
        ByteArrayOutputStream captured = new ByteArrayOutputStream();
        try (URLClassLoader loader = new URLClassLoader(new URL[] {dir.toUri().toURL()}, getClass().getClassLoader())) {
            Method main = loader.loadClass("Example").getMethod("main", String[].class);
            System.setOut(new PrintStream(captured, true, StandardCharsets.UTF_8));
            main.invoke(null, (Object) new String[0]);
        } finally {
            System.setOut(saved);
        }
        String out = captured.toString(StandardCharsets.UTF_8);
        assertTrue(out.contains(Qkern.cpuPath()) && out.contains("BF16[4096, 4096]"), out);
    }
}
