/**
 * Tensor-parallel linear layers over quantized weights (Megatron-LM's scheme), each rank loading
 * only its slice of the safetensors file.
 *
 * <ul>
 *   <li>{@link io.qkern.dist.tp.ColumnParallelLinear}: W [N, K] split along N; output kept
 *       sharded for a following row-parallel layer or all-gathered (exact).</li>
 *   <li>{@link io.qkern.dist.tp.RowParallelLinear}: W split along K; partial outputs summed by one
 *       all-reduce; the bias added once (by rank 0).</li>
 *   <li>{@link io.qkern.dist.tp.ParallelMlp}: Llama's SwiGLU MLP, gate+up column-parallel, down
 *       row-parallel: one all-reduce per forward and one per backward.</li>
 *   <li>{@link io.qkern.dist.tp.Nf4SliceReader} / {@link io.qkern.dist.tp.ApmmSliceReader}: a
 *       rank's rows or columns of an NF4 (bitsandbytes layout) or packed APMM weight, copying only
 *       those bytes from the file's mapping.</li>
 * </ul>
 *
 * <p>Splits are even by design ({@link io.qkern.dist.tp.TpSplit}): tp must divide the split
 * dimension and each slice must be whole storage units (NF4 blocks; APMM 64-column plane words and
 * scale groups), else an {@link java.lang.IllegalArgumentException} names the tensor, the
 * dimension, tp and the unit.
 *
 * <p>Forward works for both weight kinds; {@code backwardInput} (dx = dy W, what QLoRA sends
 * through a frozen base weight) for NF4. Results equal TP = 1 up to float32 rounding of the
 * reductions: column-parallel outputs bit for bit, row-parallel within gamma(K + tp + 2) *
 * sum |x w| (see the tests in io.qkern.dist.tp).
 */
package io.qkern.dist.tp;
