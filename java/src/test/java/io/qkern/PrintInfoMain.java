package io.qkern;

/** Run by {@link QkernInfoTest} in a child JVM: prints {@code Qkern.info().format()} and exits 0. */
public final class PrintInfoMain {
    private PrintInfoMain() {}

    public static void main(String[] args) {
        Qkern.Info info = Qkern.info();
        System.out.print(info.format());
        System.out.println("nativeLoaded=" + info.nativeLoaded());
        System.out.println("libraryPath=" + info.libraryPath());
        System.out.flush();
        System.exit(0);
    }
}
