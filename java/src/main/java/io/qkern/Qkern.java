package io.qkern;

import io.qkern.internal.NativeLib;
import java.util.ArrayList;
import java.util.List;

/**
 * Entry point: what the library found on this machine, and global settings.
 * {@link #info()} works even when the native library cannot load: it then reports why.
 */
public final class Qkern {
    private Qkern() {}

    /** One device the library can run kernels on. */
    public record DeviceInfo(Device device, String name) {}

    /** What {@code qkern info} prints. */
    public record Info(
            String javaVersion,
            boolean nativeLoaded,
            String loadFailure,
            String libraryPath,
            String libraryOrigin,
            String libraryVersion,
            int abiVersion,
            String cpuPath,
            String cpuFeatures,
            int cpuThreads,
            boolean cudaAvailable,
            String cudaStatus,
            List<DeviceInfo> devices) {

        /** A human-readable multi-line report. */
        public String format() {
            StringBuilder sb = new StringBuilder();
            sb.append("qkern ").append(libraryVersion == null ? "(native library not loaded)" : libraryVersion)
                    .append('\n');
            sb.append("java        ").append(javaVersion).append('\n');
            if (!nativeLoaded) {
                sb.append("native      UNAVAILABLE: ").append(loadFailure).append('\n');
                return sb.toString();
            }
            sb.append("library     ").append(libraryPath).append(" (").append(libraryOrigin).append(")\n");
            sb.append("abi         ").append(abiVersion).append('\n');
            sb.append("cpu path    ").append(cpuPath).append(" (").append(cpuThreads).append(" threads)\n");
            sb.append("cpu         ").append(cpuFeatures.isEmpty() ? "no SIMD extensions found" : cpuFeatures)
                    .append('\n');
            sb.append("cuda        ").append(cudaAvailable ? "available: " : "unavailable: ").append(cudaStatus)
                    .append('\n');
            for (DeviceInfo d : devices) {
                sb.append("device      ").append(d.device()).append("  ").append(d.name()).append('\n');
            }
            return sb.toString();
        }
    }

    /** Describes the library, the CPU path it chose, CUDA's state and the devices. */
    public static Info info() {
        String java = Runtime.version().toString();
        String failure = NativeLib.loadFailure();
        if (failure != null) {
            return new Info(java, false, failure, null, null, null, -1, null, null, 0, false, null, List.of());
        }
        NativeLib lib = NativeLib.get();
        List<DeviceInfo> devices = new ArrayList<>();
        devices.add(new DeviceInfo(Device.CPU, lib.deviceName(Device.Kind.CPU.code(), 0)));
        boolean cuda = lib.backendAvailable(Device.Kind.CUDA.code());
        if (cuda) {
            int n = lib.deviceCount(Device.Kind.CUDA.code());
            for (int i = 0; i < n; i++) {
                devices.add(new DeviceInfo(Device.cuda(i), lib.deviceName(Device.Kind.CUDA.code(), i)));
            }
        }
        return new Info(java, true, null, lib.path().toString(), lib.origin(), lib.versionString(),
                lib.abiVersion(), lib.cpuPath(), lib.cpuFeatures(), lib.cpuThreads(), cuda,
                lib.backendStatus(Device.Kind.CUDA.code()), List.copyOf(devices));
    }

    /** True when CUDA kernels can run here. */
    public static boolean cudaAvailable() {
        return NativeLib.loadFailure() == null && NativeLib.get().backendAvailable(Device.Kind.CUDA.code());
    }

    /** The best available device: cuda:0 when CUDA is usable, else the CPU. */
    public static Device defaultDevice() {
        return cudaAvailable() ? Device.cuda(0) : Device.CPU;
    }

    /** The CPU SIMD path in use: "avx512", "avx2" or "scalar". */
    public static String cpuPath() {
        return NativeLib.get().cpuPath();
    }

    /** Pins the CPU path ("scalar", "avx2", "avx512" or "auto"); throws if this CPU lacks it. */
    public static void setCpuPath(String path) {
        if (path == null) {
            throw new IllegalArgumentException("cpu path is null (expected scalar, avx2, avx512 or auto)");
        }
        NativeLib.get().cpuSetPath(path);
    }

    /** Worker threads for CPU kernels. */
    public static int cpuThreads() {
        return NativeLib.get().cpuThreads();
    }

    /** Sets the CPU worker threads; 0 = one per hardware thread. */
    public static void setCpuThreads(int threads) {
        if (threads < 0) {
            throw new IllegalArgumentException("threads must be >= 0, got " + threads);
        }
        NativeLib.get().cpuSetThreads(threads);
    }

    /**
     * Measures memory-read bandwidth in GB/s (1e9 bytes/s) over {@code buffer} — the best of
     * several read patterns on all CPU threads, or a device read kernel for a CUDA tensor.
     */
    public static Bandwidth probeReadBandwidth(Tensor buffer, int repetitions) {
        String[] pattern = new String[1];
        try (Tensor.Lease l = buffer.acquire(); java.lang.foreign.Arena arena = java.lang.foreign.Arena.ofConfined()) {
            double gbps = NativeLib.get().probeReadBandwidth(buffer.descriptor(arena), repetitions, pattern);
            return new Bandwidth(gbps, pattern[0]);
        }
    }

    /**
     * Measures the CPU's float32 peak in GFLOP/s (1e9 flops/s, an FMA counting 2): independent
     * FMA chains of the CPU path's widest vectors on every worker thread, best of
     * {@code repetitions} passes. The yardstick for compute-bound kernels, as
     * {@link #probeReadBandwidth} is for memory-bound ones.
     */
    public static double probeFmaPeak(int repetitions) {
        return NativeLib.get().probeFmaPeak(repetitions);
    }

    /** A bandwidth probe result. */
    public record Bandwidth(double gbps, String pattern) {}
}
