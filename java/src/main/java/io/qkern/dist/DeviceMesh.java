package io.qkern.dist;

import io.qkern.Device;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;

/**
 * The devices of a job and their ranks, optionally arranged as a grid with named dimensions
 * (Megatron-style {@code dp x tp}: rank = row-major index, the last dimension varies fastest, so a
 * tensor-parallel group is a run of consecutive ranks).
 *
 * <p>CPU meshes hold "virtual devices": every rank is {@link Device#CPU} and ranks are threads. CUDA
 * meshes hold one GPU per rank. {@link #run} drives a body on one platform thread per rank — never
 * virtual threads, because CUDA's current device is per OS thread.
 */
public final class DeviceMesh {

    /** A rank's body: gets its communicator, returns a value (or throws). */
    @FunctionalInterface
    public interface RankBody<T> {
        T run(Communicator comm) throws Exception;
    }

    private final List<Device> devices;
    private final Map<String, Integer> dims;

    private DeviceMesh(List<Device> devices, Map<String, Integer> dims) {
        this.devices = List.copyOf(devices);
        this.dims = Collections.unmodifiableMap(new LinkedHashMap<>(dims));
    }

    /** {@code ranks} CPU virtual devices, one dimension named "world". */
    public static DeviceMesh cpu(int ranks) {
        if (ranks < 1) {
            throw new IllegalArgumentException("a mesh needs at least 1 rank, got " + ranks);
        }
        return new DeviceMesh(Collections.nCopies(ranks, Device.CPU), Map.of("world", ranks));
    }

    /** One rank per CUDA device index, in the given order; duplicates are refused. */
    public static DeviceMesh cuda(int... deviceIndices) {
        if (deviceIndices.length == 0) {
            throw new IllegalArgumentException("a mesh needs at least 1 device");
        }
        List<Device> d = new ArrayList<>();
        for (int i : deviceIndices) {
            Device dev = Device.cuda(i);
            if (d.contains(dev)) {
                throw new IllegalArgumentException("device " + dev + " appears twice in the mesh "
                        + Arrays.toString(deviceIndices) + " (one rank per GPU)");
            }
            d.add(dev);
        }
        return new DeviceMesh(d, Map.of("world", d.size()));
    }

    /**
     * The same ranks as a grid: alternating names and sizes, e.g. {@code reshape("dp", 2, "tp", 4)};
     * the sizes' product must equal {@link #size()}.
     */
    public DeviceMesh reshape(Object... namesAndSizes) {
        if (namesAndSizes.length == 0 || namesAndSizes.length % 2 != 0) {
            throw new IllegalArgumentException("reshape takes name, size pairs, e.g. (\"dp\", 2, \"tp\", 4)");
        }
        Map<String, Integer> d = new LinkedHashMap<>();
        long product = 1;
        for (int i = 0; i < namesAndSizes.length; i += 2) {
            if (!(namesAndSizes[i] instanceof String name) || !(namesAndSizes[i + 1] instanceof Integer n)) {
                throw new IllegalArgumentException("reshape takes name (String), size (int) pairs; got "
                        + namesAndSizes[i] + ", " + namesAndSizes[i + 1]);
            }
            if (n < 1) {
                throw new IllegalArgumentException("mesh dimension " + name + " must be >= 1, got " + n);
            }
            if (d.put(name, n) != null) {
                throw new IllegalArgumentException("mesh dimension " + name + " given twice");
            }
            product *= n;
        }
        if (product != devices.size()) {
            throw new IllegalArgumentException("mesh dimensions " + d + " hold " + product + " ranks but the mesh has "
                    + devices.size());
        }
        return new DeviceMesh(devices, d);
    }

    public int size() {
        return devices.size();
    }

    public Device device(int rank) {
        Objects.checkIndex(rank, devices.size());
        return devices.get(rank);
    }

    public List<Device> devices() {
        return devices;
    }

    /** Dimension name -> size, in order (the last varies fastest). */
    public Map<String, Integer> dims() {
        return dims;
    }

    /** The rank's coordinate along each dimension. */
    public int[] coordinates(int rank) {
        Objects.checkIndex(rank, devices.size());
        int[] c = new int[dims.size()];
        int rest = rank;
        List<Integer> sizes = new ArrayList<>(dims.values());
        for (int i = sizes.size() - 1; i >= 0; i--) {
            c[i] = rest % sizes.get(i);
            rest /= sizes.get(i);
        }
        return c;
    }

    /** The ranks that differ from {@code rank} only along {@code dim}, in order (rank's group along dim). */
    public int[] groupAlong(String dim, int rank) {
        List<String> names = new ArrayList<>(dims.keySet());
        int axis = names.indexOf(dim);
        if (axis < 0) {
            throw new IllegalArgumentException("mesh has no dimension \"" + dim + "\" (it has " + names + ")");
        }
        int stride = 1;
        List<Integer> sizes = new ArrayList<>(dims.values());
        for (int i = axis + 1; i < sizes.size(); i++) {
            stride *= sizes.get(i);
        }
        int n = sizes.get(axis);
        int base = rank - coordinates(rank)[axis] * stride;
        int[] g = new int[n];
        for (int i = 0; i < n; i++) {
            g[i] = base + i * stride;
        }
        return g;
    }

    /**
     * The communicator of {@code comm}'s rank's group along {@code dim} (a collective call on
     * {@code comm}: every rank must call it).
     */
    public Communicator subgroup(Communicator comm, String dim) {
        requireMatches(comm);
        int[] group = groupAlong(dim, comm.rank());
        // color: the smallest rank of the group identifies it; key: position in it
        int position = Arrays.binarySearch(group, comm.rank());
        return comm.split(group[0], position);
    }

    /** In-process communicators for every rank of this CPU mesh. */
    public List<Communicator> inProcess(Duration timeout) {
        for (Device d : devices) {
            if (!d.isCpu()) {
                throw new IllegalArgumentException("in-process communicators are for CPU meshes; this mesh has " + d);
            }
        }
        return InProcessCommunicator.create(devices.size(), timeout);
    }

    /**
     * Runs {@code body} once per rank, each on its own platform thread named "qkern-rank-R", with
     * communicator {@code comms.get(R)}, and returns the results in rank order. When a rank throws,
     * its communicator is aborted so the other ranks fail fast instead of waiting out their timeout;
     * then {@link RankFailureException} reports every rank's failure.
     */
    public <T> List<T> run(List<Communicator> comms, RankBody<T> body) {
        if (comms.size() != devices.size()) {
            throw new IllegalArgumentException("the mesh has " + devices.size() + " ranks but " + comms.size()
                    + " communicators were given");
        }
        comms.forEach(this::requireMatches);
        List<T> results = new ArrayList<>(Collections.nCopies(comms.size(), null));
        Map<Integer, Throwable> failures = new java.util.concurrent.ConcurrentHashMap<>();
        List<Thread> threads = new ArrayList<>();
        for (Communicator c : comms) {
            int r = c.rank();
            threads.add(Thread.ofPlatform().name("qkern-rank-" + r).start(() -> {
                try {
                    T value = body.run(c);
                    synchronized (results) {
                        results.set(r, value);
                    }
                } catch (Throwable e) {
                    failures.put(r, e);
                    try {
                        c.abort("rank " + r + " failed: " + e);
                    } catch (RuntimeException abortFailure) {
                        e.addSuppressed(abortFailure);
                    }
                }
            }));
        }
        boolean interrupted = false;
        for (Thread t : threads) {
            while (true) {
                try {
                    t.join();
                    break;
                } catch (InterruptedException e) {
                    interrupted = true;
                }
            }
        }
        if (interrupted) {
            Thread.currentThread().interrupt();
        }
        if (!failures.isEmpty()) {
            int root = failures.entrySet().stream()
                    .filter(e -> !(e.getValue() instanceof CommunicatorException ce
                            && ce.kind() == CommunicatorException.Kind.ABORTED))
                    .map(Map.Entry::getKey).min(Integer::compare)
                    .orElse(failures.keySet().stream().min(Integer::compare).orElseThrow());
            throw new RankFailureException(failures, root);
        }
        synchronized (results) {
            return new ArrayList<>(results);
        }
    }

    private void requireMatches(Communicator c) {
        if (c.size() != devices.size()) {
            throw new IllegalArgumentException("communicator has " + c.size() + " ranks but the mesh has "
                    + devices.size());
        }
        if (!c.device().equals(devices.get(c.rank()))) {
            throw new IllegalArgumentException("communicator rank " + c.rank() + " is on " + c.device()
                    + " but the mesh puts that rank on " + devices.get(c.rank()));
        }
    }

    @Override
    public String toString() {
        return "DeviceMesh" + dims + " " + devices;
    }
}
