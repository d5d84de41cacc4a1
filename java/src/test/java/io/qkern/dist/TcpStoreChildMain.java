package io.qkern.dist;

import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.time.Duration;

/** Rank 1 of TcpStoreTest's two-process test: reads rank 0's key, answers under its own. */
public final class TcpStoreChildMain {
    private TcpStoreChildMain() {
    }

    public static void main(String[] args) {
        InetSocketAddress store = new InetSocketAddress(args[0], Integer.parseInt(args[1]));
        try (TcpStore s = TcpStore.connect(store, Duration.ofSeconds(20))) {
            String parent = new String(s.get("parent"), StandardCharsets.UTF_8);
            s.set("child", ("hello from rank 1 after reading: " + parent).getBytes(StandardCharsets.UTF_8));
        }
    }
}
