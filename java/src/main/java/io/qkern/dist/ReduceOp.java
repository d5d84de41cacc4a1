package io.qkern.dist;

/** Element-wise reduction of a collective. Floating SUM adds in rank order 0, 1, ..., size-1. */
public enum ReduceOp {
    SUM, MAX, MIN
}
