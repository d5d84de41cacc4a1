/**
 * Adapters for Java GPU code that already uses JCuda or LWJGL: their memory as qkern tensors and
 * back, without copying. The libraries are optional dependencies of qkern: a class here loads
 * only when called, so users of neither never need them on the class path.
 *
 * <p>Limits, plainly: JCuda's newest release (12.6.0) targets CUDA 12.6 through JNI, so its
 * natives need a CUDA 12.x driver stack of their own beside qkern's statically linked runtime.
 * LWJGL removed its CUDA bindings in 3.4.0; device addresses from LWJGL therefore mean LWJGL 3.3.x
 * ({@code org.lwjgl.cuda.CU}), whose device pointers are plain {@code long} values. The device
 * adapters have never run on a GPU (the development machines have none); their address
 * conversions are tested without one.
 */
package io.qkern.interop;
