package io.qkern.dist.tp;

import io.qkern.DType;
import io.qkern.Device;
import io.qkern.Tensor;
import io.qkern.nf4.Nf4Matmul;
import io.qkern.nf4.Nf4Tensor;

/** One rank's slice of a linear layer's weight and the kernels over it. Outputs are float32. */
interface LocalLinear extends AutoCloseable {

    /** Rows of the local weight (output features of the local product). */
    long outFeatures();

    /** Columns of the local weight (input features of the local product). */
    long inFeatures();

    Device device();

    /** y[M, out] = x[M, in] W^T (+ the local bias, if any), float32. */
    Tensor forward(Tensor x);

    /** dx[M, in] = dy[M, out] W, float32. */
    Tensor backwardInput(Tensor dy);

    /** Bytes of weight storage held by this rank. */
    long storageBytes();

    String describe();

    @Override
    void close();

    /** An NF4 weight slice (float32 absmax) and an optional float32 bias on its device; owns both. */
    record Nf4(Nf4Tensor weight, Tensor bias) implements LocalLinear {
        @Override
        public long outFeatures() {
            return weight.shape()[0];
        }

        @Override
        public long inFeatures() {
            return weight.shape()[1];
        }

        @Override
        public Device device() {
            return weight.device();
        }

        @Override
        public Tensor forward(Tensor x) {
            return Nf4Matmul.forward(x, weight, weight.absmax(), bias, DType.F32);
        }

        @Override
        public Tensor backwardInput(Tensor dy) {
            return Nf4Matmul.inputGrad(dy, weight, weight.absmax(), DType.F32);
        }

        @Override
        public long storageBytes() {
            return weight.storageBytes() + (bias == null ? 0 : bias.byteSize());
        }

        @Override
        public String describe() {
            return "NF4 " + outFeatures() + " x " + inFeatures() + " blocksize " + weight.blocksize()
                    + (bias == null ? "" : " + bias");
        }

        @Override
        public void close() {
            weight.close();
            if (bias != null) {
                bias.close();
            }
        }
    }
}
