// APMM scalar kernels: plain C++ AND + popcount and byte dot products. They run on any CPU,
// serve the ragged cases of the SIMD files, and are the paths the tests compare with.
#include <string.h>

#include "apmm/apmm_cpu.h"
#include "qkern.h"

namespace qk::apmm {

namespace {

inline int popcount64(uint64_t x) { return __builtin_popcountll(x); }

}  // namespace

void bitserial_scalar(const uint64_t* a_planes, int q, const uint64_t* w_planes, int p, int64_t kw, int64_t m0,
                      int64_t m1, int64_t n0, int64_t nt, const TileOut& out) {
  const int64_t segs = out.segs;
  for (int64_t m = m0; m < m1; m++) {
    const uint64_t* a = a_planes + m * q * kw;
    for (int64_t j = 0; j < nt; j++) {
      const uint64_t* w = w_planes + (n0 + j) * p * kw;
      int32_t* u = out.u + ((m - m0) * nt + j) * segs;
      for (int64_t s = 0; s < segs; s++) u[s] = 0;
      for (int64_t word = 0; word < kw; word++) {
        // (u_a . u_w) over this word = sum_ij 2^(i+j) popc(A_j & W_i)
        uint32_t lo = 0, hi = 0;  // the low and high 32 columns, for 32-column segments
        for (int i = 0; i < p; i++) {
          const uint64_t wi = w[i * kw + word];
          for (int jj = 0; jj < q; jj++) {
            const uint64_t x = wi & a[jj * kw + word];
            lo += (uint32_t)popcount64(x & 0xffffffffu) << (i + jj);
            hi += (uint32_t)popcount64(x >> 32) << (i + jj);
          }
        }
        if (out.seg_bits == 0)
          u[0] += (int32_t)(lo + hi);
        else if (out.seg_bits == 32) {
          u[2 * word] += (int32_t)lo;
          u[2 * word + 1] += (int32_t)hi;
        } else {
          u[word * 64 / out.seg_bits] += (int32_t)(lo + hi);
        }
      }
    }
  }
}

void unpack_row_scalar(const uint64_t* planes, int bits, int64_t kw, bool signed_shift, uint8_t* out) {
  const uint8_t shift = signed_shift ? (uint8_t)(1u << (bits - 1)) : 0;
  for (int64_t k = 0; k < kw * 64; k++) {
    uint32_t u = 0;
    for (int i = 0; i < bits; i++) u |= (uint32_t)((planes[i * kw + k / 64] >> (k % 64)) & 1u) << i;
    out[k] = (uint8_t)(u - shift);  // int8 two's complement of u - 2^(bits-1) when shifted
  }
}

namespace {

void int8_scalar(const uint8_t* a_u8, const int8_t* w_s8, int64_t kp, int64_t m0, int64_t m1, int64_t nt, bool,
                 const TileOut& out) {
  const int64_t segs = out.segs, seg_len = out.seg_bits == 0 ? kp : out.seg_bits;
  for (int64_t m = m0; m < m1; m++) {
    const uint8_t* a = a_u8 + m * kp;
    for (int64_t j = 0; j < nt; j++) {
      const int8_t* w = w_s8 + j * kp;
      int32_t* u = out.u + ((m - m0) * nt + j) * segs;
      for (int64_t s = 0; s < segs; s++) {
        int32_t acc = 0;
        for (int64_t k = s * seg_len; k < (s + 1) * seg_len; k++) acc += (int32_t)a[k] * (int32_t)w[k];
        u[s] = acc;
      }
    }
  }
}

void stream_prepare_a_scalar(const uint64_t* planes, int bits, int64_t kw, uint8_t* out) {
  unpack_row_scalar(planes, bits, kw, false, out);  // natural column order
}

// The reference of the streaming path: one weight row's codes decoded once, then every row of A.
void stream_scalar(const uint8_t* a_u8, int, const uint64_t* w_planes, int p, int64_t kw, int64_t m0, int64_t m1,
                   int64_t n0, int64_t nt, const TileOut& out) {
  const int64_t kp = kw * 64, segs = out.segs, seg_len = out.seg_bits == 0 ? kp : out.seg_bits;
  uint8_t codes[64];
  for (int64_t j = 0; j < nt; j++) {
    const uint64_t* w = w_planes + (n0 + j) * p * kw;
    for (int64_t m = m0; m < m1; m++)
      for (int64_t s = 0; s < segs; s++) out.u[((m - m0) * nt + j) * segs + s] = 0;
    for (int64_t word = 0; word < kw; word++) {
      for (int c = 0; c < 64; c++) {
        uint32_t u = 0;
        for (int i = 0; i < p; i++) u |= (uint32_t)((w[i * kw + word] >> c) & 1u) << i;
        codes[c] = (uint8_t)u;
      }
      for (int64_t m = m0; m < m1; m++) {
        const uint8_t* a = a_u8 + m * kp + word * 64;
        int32_t* u = out.u + ((m - m0) * nt + j) * segs;
        for (int c = 0; c < 64; c++) u[(word * 64 + c) / seg_len] += (int32_t)a[c] * (int32_t)codes[c];
      }
    }
  }
}

const CpuKernels kScalar = {bitserial_scalar,         unpack_row_scalar,           int8_scalar,
                            stream_prepare_a_scalar,  stream_scalar,               QK_APMM_RAN_SCALAR_BITSERIAL,
                            QK_APMM_RAN_SCALAR_INT8,  QK_APMM_RAN_SCALAR_STREAM};

}  // namespace

const CpuKernels& scalar_kernels() { return kScalar; }

}  // namespace qk::apmm
