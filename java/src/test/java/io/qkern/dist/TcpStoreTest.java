package io.qkern.dist;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;

class TcpStoreTest {
    private static final InetSocketAddress LOOPBACK = new InetSocketAddress(InetAddress.getLoopbackAddress(), 0);

    @Test
    void ranksOnThreadsExchangeValuesAndWaitForLateKeys() throws Exception {
        int ranks = 4;
        try (TcpStore host = TcpStore.host(LOOPBACK, Duration.ofSeconds(10))) {
            ExecutorService pool = Executors.newFixedThreadPool(ranks - 1);
            try {
                List<Future<List<byte[]>>> results = new ArrayList<>();
                for (int r = 1; r < ranks; r++) {
                    int rank = r;
                    results.add(pool.submit(() -> {
                        try (TcpStore s = TcpStore.connect(host.address(), Duration.ofSeconds(10))) {
                            s.set("rank/" + rank, payload(rank));
                            List<byte[]> seen = new ArrayList<>();
                            for (int other = 0; other < ranks; other++) {
                                seen.add(s.get("rank/" + other));
                            }
                            return seen;
                        }
                    }));
                }
                Thread.sleep(200); // the others are now waiting for rank 0's key
                host.set("rank/0", payload(0));
                for (int other = 0; other < ranks; other++) {
                    assertArrayEquals(payload(other), host.get("rank/" + other));
                }
                for (Future<List<byte[]>> f : results) {
                    List<byte[]> seen = f.get(20, TimeUnit.SECONDS);
                    for (int other = 0; other < ranks; other++) {
                        assertArrayEquals(payload(other), seen.get(other));
                    }
                }
            } finally {
                pool.shutdownNow();
            }
        }
    }

    private static byte[] payload(int rank) {
        byte[] b = new byte[1000 + rank * 37];
        new Random(rank).nextBytes(b);
        return b;
    }

    @Test
    void setOverwritesAndEmptyValuesRoundTrip() {
        try (TcpStore host = TcpStore.host(LOOPBACK, Duration.ofSeconds(5));
                TcpStore c = TcpStore.connect(host.address(), Duration.ofSeconds(5))) {
            c.set("k", new byte[] {1});
            c.set("k", new byte[] {2, 3});
            assertArrayEquals(new byte[] {2, 3}, host.get("k"));
            host.set("empty", new byte[0]);
            assertArrayEquals(new byte[0], c.get("empty"));
            c.set("ключ/ü", "x".getBytes(StandardCharsets.UTF_8));
            assertArrayEquals("x".getBytes(StandardCharsets.UTF_8), host.get("ключ/ü"));
        }
    }

    @Test
    void aKeyNobodySetsTimesOutNamingTheKey() {
        try (TcpStore host = TcpStore.host(LOOPBACK, Duration.ofSeconds(5));
                TcpStore c = TcpStore.connect(host.address(), Duration.ofSeconds(5))) {
            long t0 = System.nanoTime();
            CommunicatorException e = assertThrows(CommunicatorException.class,
                    () -> c.get("never", Duration.ofMillis(300)));
            long ms = (System.nanoTime() - t0) / 1_000_000;
            assertEquals(CommunicatorException.Kind.TIMEOUT, e.kind());
            assertTrue(e.getMessage().contains("\"never\"") && e.getMessage().contains("PT0.3S"), e.getMessage());
            assertTrue(ms >= 290 && ms < 4_000, "took " + ms + " ms");
            // the connection stays usable after a timeout answered by the store
            c.set("after", new byte[] {9});
            assertArrayEquals(new byte[] {9}, c.get("after"));
            e = assertThrows(CommunicatorException.class, () -> host.get("never", Duration.ofMillis(100)));
            assertEquals(CommunicatorException.Kind.TIMEOUT, e.kind());
            TcpStore waiter = c;
            e = assertThrows(CommunicatorException.class,
                    () -> waiter.waitFor(List.of("after", "never"), Duration.ofMillis(200)));
            assertEquals(CommunicatorException.Kind.TIMEOUT, e.kind());
        }
    }

    @Test
    void badKeysValuesAndTimeoutsAreRejectedByName() {
        try (TcpStore host = TcpStore.host(LOOPBACK, Duration.ofSeconds(5))) {
            assertThrows(IllegalArgumentException.class, () -> host.set(null, new byte[1]));
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> host.set("", new byte[1]));
            assertTrue(e.getMessage().contains("empty"), e.getMessage());
            e = assertThrows(IllegalArgumentException.class, () -> host.get("a\nb"));
            assertTrue(e.getMessage().contains("control character at index 1"), e.getMessage());
            e = assertThrows(IllegalArgumentException.class, () -> host.set("k".repeat(1025), new byte[1]));
            assertTrue(e.getMessage().contains("1025"), e.getMessage());
            e = assertThrows(IllegalArgumentException.class, () -> host.set("k", null));
            assertTrue(e.getMessage().contains("null"), e.getMessage());
            e = assertThrows(IllegalArgumentException.class, () -> host.get("k", Duration.ZERO));
            assertTrue(e.getMessage().contains("timeout"), e.getMessage());
        }
    }

    @Test
    void aStoreThatIsNotThereIsReportedWithinTheTimeout() throws Exception {
        int port;
        try (ServerSocket probe = new ServerSocket(0, 1, InetAddress.getLoopbackAddress())) {
            port = probe.getLocalPort(); // free once closed: nobody listens there
        }
        InetSocketAddress nowhere = new InetSocketAddress(InetAddress.getLoopbackAddress(), port);
        long t0 = System.nanoTime();
        CommunicatorException e = assertThrows(CommunicatorException.class,
                () -> TcpStore.connect(nowhere, Duration.ofMillis(400)));
        long ms = (System.nanoTime() - t0) / 1_000_000;
        assertEquals(CommunicatorException.Kind.BACKEND, e.kind());
        assertTrue(e.getMessage().contains("cannot reach the store") && e.getMessage().contains(String.valueOf(port)),
                e.getMessage());
        assertTrue(ms < 5_000, "took " + ms + " ms");
    }

    @Test
    void aHostThatGoesAwayFailsWaitingClientsClearly() throws Exception {
        TcpStore host = TcpStore.host(LOOPBACK, Duration.ofSeconds(30));
        try (TcpStore c = TcpStore.connect(host.address(), Duration.ofSeconds(5))) {
            ExecutorService pool = Executors.newSingleThreadExecutor();
            try {
                Future<CommunicatorException> waiting = pool.submit(() -> assertThrows(CommunicatorException.class,
                        () -> c.get("never", Duration.ofSeconds(30))));
                Thread.sleep(200);
                host.close();
                CommunicatorException e = waiting.get(10, TimeUnit.SECONDS);
                assertEquals(CommunicatorException.Kind.BACKEND, e.kind());
                assertTrue(e.getMessage().contains("lost the connection") && e.getMessage().contains("\"never\""),
                        e.getMessage());
            } finally {
                pool.shutdownNow();
            }
            CommunicatorException e = assertThrows(CommunicatorException.class, () -> c.set("k", new byte[1]));
            assertEquals(CommunicatorException.Kind.ABORTED, e.kind());
        }
        host.close(); // idempotent
        CommunicatorException e = assertThrows(CommunicatorException.class, () -> host.get("k"));
        assertEquals(CommunicatorException.Kind.ABORTED, e.kind());
    }

    /** Two JVMs on loopback: this one hosts, the child connects, and each reads what the other set. */
    @Test
    void twoProcessesRendezvousOnLoopback() throws Exception {
        try (TcpStore host = TcpStore.host(LOOPBACK, Duration.ofSeconds(30))) {
            List<String> cmd = List.of(Path.of(System.getProperty("java.home"), "bin", "java").toString(),
                    "-cp", System.getProperty("java.class.path"), TcpStoreChildMain.class.getName(),
                    host.address().getHostString(), String.valueOf(host.address().getPort()));
            Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
            try {
                host.set("parent", "hello from rank 0".getBytes(StandardCharsets.UTF_8));
                byte[] fromChild = host.get("child", Duration.ofSeconds(30));
                assertEquals("hello from rank 1 after reading: hello from rank 0",
                        new String(fromChild, StandardCharsets.UTF_8));
                assertTrue(p.waitFor(30, TimeUnit.SECONDS), "child did not finish");
                String out = new String(p.getInputStream().readAllBytes());
                assertEquals(0, p.exitValue(), out);
            } finally {
                p.destroyForcibly();
            }
        }
    }
}
