package io.qkern.dist;

import java.io.BufferedInputStream;
import java.io.BufferedOutputStream;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.EOFException;
import java.io.IOException;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.net.SocketTimeoutException;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;

/**
 * A small key/value store over TCP for bootstrapping ranks (an NCCL unique id, addresses): rank 0
 * {@linkplain #host hosts} it, every rank (rank 0 included) {@link #set}s and {@link #get}s byte
 * values by string key; {@code get} waits for a key another rank has not set yet, up to a timeout.
 *
 * <p>Errors are clear and bounded in time: a key that does not appear within the timeout gives
 * {@link CommunicatorException.Kind#TIMEOUT} naming the key and the store; a store that cannot be
 * reached (or goes away mid-request) gives {@link CommunicatorException.Kind#BACKEND} naming the
 * address; a bad key or value is an {@link IllegalArgumentException}. Keys are 1 to
 * {@value #MAX_KEY_BYTES} UTF-8 bytes without control characters; values are at most
 * {@value #MAX_VALUE_BYTES} bytes. Values are overwritten by a later {@code set}.
 *
 * <p>Not authenticated and not encrypted: bind it to loopback or a trusted cluster network.
 * Thread-safe; one client connection per instance, requests serialized on it.
 */
public final class TcpStore implements AutoCloseable {
    public static final int MAX_KEY_BYTES = 1024;
    public static final int MAX_VALUE_BYTES = 64 << 20;

    private static final int MAGIC = 0x714b5354; // "qKST"
    private static final int OP_SET = 1, OP_GET = 2;
    private static final int OK = 0, NOT_YET = 1, ERROR = 2;
    /** Extra time a client waits for the server's answer beyond the server-side wait. */
    private static final long ANSWER_SLACK_MS = 5_000;

    private final Server server;          // rank 0 only
    private final InetSocketAddress address;
    private final Duration timeout;
    private final Object clientLock = new Object();
    private Socket socket;                // null on the hosting rank (it uses the map directly)
    private DataInputStream in;
    private DataOutputStream out;
    private volatile boolean closed;

    private TcpStore(Server server, InetSocketAddress address, Duration timeout) {
        this.server = server;
        this.address = address;
        this.timeout = timeout;
    }

    /**
     * Rank 0: serves the store on {@code bind} (port 0 picks a free port: see {@link #address()}).
     * {@code timeout} is the default wait of {@link #get(String)}.
     */
    public static TcpStore host(InetSocketAddress bind, Duration timeout) {
        checkTimeout(timeout);
        try {
            ServerSocket ss = new ServerSocket();
            ss.setReuseAddress(true);
            ss.bind(bind);
            Server server = new Server(ss);
            InetSocketAddress actual = new InetSocketAddress(bind.getAddress(), ss.getLocalPort());
            server.start();
            return new TcpStore(server, actual, timeout);
        } catch (IOException e) {
            throw new CommunicatorException(CommunicatorException.Kind.BACKEND, "TcpStore: cannot listen on " + bind
                    + ": " + e.getMessage(), e);
        }
    }

    /**
     * Other ranks: connects to the store at {@code server}, retrying until {@code timeout} (rank 0 may
     * start later); {@code timeout} is also the default wait of {@link #get(String)}.
     */
    public static TcpStore connect(InetSocketAddress server, Duration timeout) {
        checkTimeout(timeout);
        TcpStore s = new TcpStore(null, server, timeout);
        long deadline = System.nanoTime() + timeout.toNanos();
        IOException last = null;
        while (true) {
            Socket sock = new Socket();
            try {
                long leftMs = Math.max(1, (deadline - System.nanoTime()) / 1_000_000);
                sock.connect(server, (int) Math.min(Integer.MAX_VALUE, leftMs));
                sock.setTcpNoDelay(true);
                s.socket = sock;
                s.in = new DataInputStream(new BufferedInputStream(sock.getInputStream()));
                s.out = new DataOutputStream(new BufferedOutputStream(sock.getOutputStream()));
                return s;
            } catch (IOException e) {
                last = e;
                try {
                    sock.close();
                } catch (IOException ignored) {
                    // nothing was connected
                }
            }
            if (System.nanoTime() - deadline >= 0) {
                throw new CommunicatorException(CommunicatorException.Kind.BACKEND, "TcpStore: cannot reach the store"
                        + " at " + server + " within " + timeout + ": " + last.getMessage(), last);
            }
            try {
                Thread.sleep(50);
            } catch (InterruptedException ie) {
                Thread.currentThread().interrupt();
                throw new CommunicatorException(CommunicatorException.Kind.ABORTED, "TcpStore: interrupted while"
                        + " connecting to " + server, ie);
            }
        }
    }

    /** Where the store listens (the hosting rank) or is reached (the others). */
    public InetSocketAddress address() {
        return address;
    }

    public Duration timeout() {
        return timeout;
    }

    /** Sets (or overwrites) {@code key}; visible to every rank's {@code get} once this returns. */
    public void set(String key, byte[] value) {
        byte[] k = checkKey(key);
        if (value == null) {
            throw new IllegalArgumentException("TcpStore.set: value for key \"" + key + "\" is null");
        }
        if (value.length > MAX_VALUE_BYTES) {
            throw new IllegalArgumentException("TcpStore.set: value for key \"" + key + "\" has " + value.length
                    + " bytes (at most " + MAX_VALUE_BYTES + ")");
        }
        ensureOpen();
        if (server != null) {
            server.put(key, value.clone());
            return;
        }
        request(OP_SET, key, k, value, 0);
    }

    /** The value of {@code key}, waiting up to {@link #timeout()} for some rank to set it. */
    public byte[] get(String key) {
        return get(key, timeout);
    }

    /** The value of {@code key}, waiting up to {@code wait} for some rank to set it. */
    public byte[] get(String key, Duration wait) {
        byte[] k = checkKey(key);
        checkTimeout(wait);
        ensureOpen();
        if (server != null) {
            byte[] v = server.await(key, wait.toMillis());
            if (v == null) {
                throw notSet(key, wait);
            }
            return v.clone();
        }
        return request(OP_GET, key, k, null, wait.toMillis());
    }

    /** Waits until every key in {@code keys} is set (each within the remaining time of {@code wait}). */
    public void waitFor(List<String> keys, Duration wait) {
        checkTimeout(wait);
        long deadline = System.nanoTime() + wait.toNanos();
        for (String key : keys) {
            long left = Math.max(0, deadline - System.nanoTime());
            get(key, Duration.ofNanos(left));
        }
    }

    private byte[] request(int op, String key, byte[] k, byte[] value, long waitMs) {
        synchronized (clientLock) {
            ensureOpen();
            try {
                socket.setSoTimeout((int) Math.min(Integer.MAX_VALUE, waitMs + ANSWER_SLACK_MS));
                out.writeInt(MAGIC);
                out.writeInt(op);
                out.writeInt(k.length);
                out.write(k);
                if (op == OP_SET) {
                    out.writeInt(value.length);
                    out.write(value);
                } else {
                    out.writeLong(waitMs);
                }
                out.flush();
                int status = in.readInt();
                int len = in.readInt();
                if (len < 0 || len > MAX_VALUE_BYTES) {
                    throw new IOException("malformed answer (length " + len + ")");
                }
                byte[] payload = in.readNBytes(len);
                if (payload.length != len) {
                    throw new EOFException("answer cut short");
                }
                return switch (status) {
                    case OK -> payload;
                    case NOT_YET -> throw notSet(key, Duration.ofMillis(waitMs));
                    default -> throw new CommunicatorException(CommunicatorException.Kind.BACKEND, "TcpStore at "
                            + address + " refused " + (op == OP_SET ? "set" : "get") + " \"" + key + "\": "
                            + new String(payload, StandardCharsets.UTF_8));
                };
            } catch (SocketTimeoutException e) {
                closeQuietly();
                throw new CommunicatorException(CommunicatorException.Kind.TIMEOUT, "TcpStore: the store at " + address
                        + " did not answer " + (op == OP_SET ? "set" : "get") + " \"" + key + "\" in time", e);
            } catch (IOException e) {
                closeQuietly();
                throw new CommunicatorException(CommunicatorException.Kind.BACKEND, "TcpStore: lost the connection to"
                        + " the store at " + address + " during " + (op == OP_SET ? "set" : "get") + " \"" + key
                        + "\" (is the hosting rank gone?): " + e, e);
            }
        }
    }

    private CommunicatorException notSet(String key, Duration wait) {
        return new CommunicatorException(CommunicatorException.Kind.TIMEOUT, "TcpStore: key \"" + key
                + "\" was not set within " + wait + " (store at " + address + ")");
    }

    private void ensureOpen() {
        if (closed) {
            throw new CommunicatorException(CommunicatorException.Kind.ABORTED, "TcpStore at " + address
                    + " is closed");
        }
    }

    private static byte[] checkKey(String key) {
        if (key == null || key.isEmpty()) {
            throw new IllegalArgumentException("TcpStore: key is " + (key == null ? "null" : "empty"));
        }
        for (int i = 0; i < key.length(); i++) {
            if (Character.isISOControl(key.charAt(i))) {
                throw new IllegalArgumentException("TcpStore: key \"" + key.replaceAll("\\p{Cntrl}", "?")
                        + "\" contains a control character at index " + i);
            }
        }
        byte[] k = key.getBytes(StandardCharsets.UTF_8);
        if (k.length > MAX_KEY_BYTES) {
            throw new IllegalArgumentException("TcpStore: key of " + k.length + " UTF-8 bytes (at most "
                    + MAX_KEY_BYTES + ")");
        }
        return k;
    }

    private static void checkTimeout(Duration t) {
        if (t == null || t.isNegative() || t.isZero()) {
            throw new IllegalArgumentException("TcpStore: timeout must be positive, got " + t);
        }
    }

    private void closeQuietly() {
        closed = true;
        try {
            if (socket != null) {
                socket.close();
            }
        } catch (IOException ignored) {
            // closing a broken connection
        }
    }

    /** Closes this rank's connection; on the hosting rank also stops serving (waiting clients fail). */
    @Override
    public void close() {
        synchronized (this) {
            closed = true;
            closeQuietly();
            if (server != null) {
                server.close();
            }
        }
    }

    // ---- the hosting side -------------------------------------------------------------------------

    private static final class Server {
        private final ServerSocket listener;
        private final Map<String, byte[]> values = new HashMap<>(); // guarded by itself
        private final Set<Socket> connections = ConcurrentHashMap.newKeySet();
        private volatile boolean stopped;

        Server(ServerSocket listener) {
            this.listener = listener;
        }

        void start() {
            Thread t = new Thread(this::acceptLoop, "qkern-tcpstore-accept-" + listener.getLocalPort());
            t.setDaemon(true);
            t.start();
        }

        void put(String key, byte[] value) {
            synchronized (values) {
                values.put(key, value);
                values.notifyAll();
            }
        }

        /** The value, or null if it is not set within {@code waitMs} (or the store stops). */
        byte[] await(String key, long waitMs) {
            long deadline = System.nanoTime() + waitMs * 1_000_000L;
            synchronized (values) {
                while (true) {
                    byte[] v = values.get(key);
                    if (v != null || stopped) {
                        return v;
                    }
                    long left = (deadline - System.nanoTime()) / 1_000_000L;
                    if (left <= 0) {
                        return null;
                    }
                    try {
                        values.wait(left);
                    } catch (InterruptedException e) {
                        Thread.currentThread().interrupt();
                        return null;
                    }
                }
            }
        }

        private void acceptLoop() {
            while (!stopped) {
                try {
                    Socket s = listener.accept();
                    s.setTcpNoDelay(true);
                    connections.add(s);
                    Thread t = new Thread(() -> serve(s), "qkern-tcpstore-" + s.getRemoteSocketAddress());
                    t.setDaemon(true);
                    t.start();
                } catch (IOException e) {
                    return; // listener closed
                }
            }
        }

        private void serve(Socket s) {
            try (s; DataInputStream in = new DataInputStream(new BufferedInputStream(s.getInputStream()));
                    DataOutputStream out = new DataOutputStream(new BufferedOutputStream(s.getOutputStream()))) {
                while (!stopped) {
                    int magic;
                    try {
                        magic = in.readInt();
                    } catch (EOFException e) {
                        return; // the client closed
                    }
                    if (magic != MAGIC) {
                        answer(out, ERROR, ("not a qkern TcpStore request (magic 0x" + Integer.toHexString(magic)
                                + ")").getBytes(StandardCharsets.UTF_8));
                        return;
                    }
                    int op = in.readInt();
                    int klen = in.readInt();
                    if (klen <= 0 || klen > MAX_KEY_BYTES) {
                        answer(out, ERROR, ("bad key length " + klen).getBytes(StandardCharsets.UTF_8));
                        return;
                    }
                    String key = new String(in.readNBytes(klen), StandardCharsets.UTF_8);
                    if (op == OP_SET) {
                        int vlen = in.readInt();
                        if (vlen < 0 || vlen > MAX_VALUE_BYTES) {
                            answer(out, ERROR, ("bad value length " + vlen).getBytes(StandardCharsets.UTF_8));
                            return;
                        }
                        byte[] v = in.readNBytes(vlen);
                        if (v.length != vlen) {
                            return;
                        }
                        put(key, v);
                        answer(out, OK, new byte[0]);
                    } else if (op == OP_GET) {
                        long waitMs = in.readLong();
                        byte[] v = await(key, Math.max(0, waitMs));
                        if (v == null && stopped) {
                            return; // closing the socket tells the client the store is gone
                        }
                        answer(out, v == null ? NOT_YET : OK, v == null ? new byte[0] : v);
                    } else {
                        answer(out, ERROR, ("unknown operation " + op).getBytes(StandardCharsets.UTF_8));
                        return;
                    }
                }
            } catch (IOException e) {
                // the client went away; nothing to tell it
            } finally {
                connections.remove(s);
            }
        }

        private static void answer(DataOutputStream out, int status, byte[] payload) throws IOException {
            out.writeInt(status);
            out.writeInt(payload.length);
            out.write(payload);
            out.flush();
        }

        void close() {
            stopped = true;
            synchronized (values) {
                values.notifyAll();
            }
            try {
                listener.close();
            } catch (IOException ignored) {
                // already closed
            }
            for (Socket s : connections) {
                try {
                    s.close();
                } catch (IOException ignored) {
                    // already closed
                }
            }
        }
    }
}
