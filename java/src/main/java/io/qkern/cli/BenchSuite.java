package io.qkern.cli;

/**
 * One family's benchmarks for {@code qkern bench NAME}: quick in-process measurements a user or a
 * CI job can read, each row timed beside the same-run read-bandwidth probe (the JMH benchmarks in
 * the bench module are the careful version). Register new suites in {@link BenchSuites#all()}.
 */
interface BenchSuite {
    /** The name on the command line ({@code nf4}, {@code topk}, ...). */
    String name();

    /** One line for {@code qkern bench --list}. */
    String summary();

    /** Measures every case with {@link BenchContext#seconds} and reports each with {@link BenchContext#emit}. */
    void run(BenchContext ctx) throws Exception;
}
