package io.qkern.cli;

import io.qkern.Device;
import io.qkern.Tensor;
import java.util.List;
import java.util.Map;

/**
 * A kernel runnable from the command line ({@code qkern run OP IN OUT}): named input tensors
 * from one safetensors file, named outputs to another. Each kernel family registers its ops in
 * {@link Ops}.
 */
interface Op {
    /** A parameter set with {@code --set name=value}; {@code defaultValue} null means required. */
    record Param(String name, String defaultValue, String description) {}

    /** A named tensor with its expected dtype(s) and shape, as help text. */
    record Slot(String name, String description, boolean required) {
        Slot(String name, String description) {
            this(name, description, true);
        }
    }

    String name();

    String summary();

    List<Slot> inputs();

    List<Slot> outputs();

    List<Param> params();

    /** Runs on {@code device}; inputs are already there. Returned tensors are owned by the caller. */
    Map<String, Tensor> run(Map<String, Tensor> inputs, Params params, Device device);
}
