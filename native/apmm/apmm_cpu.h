// APMM CPU kernels: one table per SIMD path. The ABI layer (apmm_api.cpp) splits work into
// tiles over the worker pool, and turns the unsigned-code products these kernels return into
// exact code products, scales and zero points.
#pragma once
#include <stdint.h>

namespace qk::apmm {

// A tile's integer output: U[(m - m0) * nt * segs + (n - n0) * segs + s] = sum over the
// columns of segment s of u_a[m, k] * u_w[n, k] (unsigned codes), for m in [m0, m1) and
// n in [n0, n0 + nt). Segments hold `seg_bits` columns (0 = the whole padded row: segs = 1);
// segs counts the padded row's segments (kw * 64 / seg_bits).
struct TileOut {
  int32_t* u;
  int64_t segs;
  int64_t seg_bits;
};

struct CpuKernels {
  // Bit-serial: planes U64 [rows, bits, kw] for A (q bits) and W (p bits).
  void (*bitserial)(const uint64_t* a_planes, int q, const uint64_t* w_planes, int p, int64_t kw, int64_t m0,
                    int64_t m1, int64_t n0, int64_t nt, const TileOut& out);
  // Unpacks `bits` planes of one row into kw * 64 bytes: u (signed_shift false) or
  // u - 2^(bits-1) as int8 (signed_shift true).
  void (*unpack_row)(const uint64_t* planes, int bits, int64_t kw, bool signed_shift, uint8_t* out);
  // int8: a_u8 [M rows of kp bytes] (u_a), w_s8 [nt rows of kp bytes] (u_w - 2^(p-1)); writes
  // sum u_a * (u_w - 2^(p-1)) per segment into out (same indexing as above, n relative to the
  // panel). wide: p + q == 16, where vpmaddubsw's int16 pair sums could saturate.
  void (*int8)(const uint8_t* a_u8, const int8_t* w_s8, int64_t kp, int64_t m0, int64_t m1, int64_t nt, bool wide,
               const TileOut& out);
  // Small-M weight streaming (p-bit weights, every row of A per decoded weight row):
  // stream_prepare_a unpacks one activation row's q planes into kw * 64 bytes u_a in the column
  // order `stream` expects (the order the kernel's decoder yields weight codes in, per 32-column
  // block); stream then writes sum u_a * u_w per segment for rows [m0, m1) of a_u8 and weight
  // rows [n0, n0 + nt) (out as above; m1 - m0 <= 4). Only for stream_serves(p, q).
  void (*stream_prepare_a)(const uint64_t* planes, int bits, int64_t kw, uint8_t* out);
  void (*stream)(const uint8_t* a_u8, int q, const uint64_t* w_planes, int p, int64_t kw, int64_t m0, int64_t m1,
                 int64_t n0, int64_t nt, const TileOut& out);
  int32_t bitserial_id, int8_id, stream_id;  // enum qk_apmm_path
};

// The streaming kernels hold u_w in a signed byte and sum two u_a * u_w products in int16
// (vpmaddubsw): both must fit.
constexpr bool stream_serves(int p, int q) {
  return p <= 7 && 2 * ((1 << p) - 1) * ((1 << q) - 1) <= 32767;
}
constexpr int64_t kStreamMaxRows = 4;  // rows of A per stream call (the accumulators stay in registers)

const CpuKernels& scalar_kernels();
const CpuKernels& avx2_kernels();
const CpuKernels& avx512vnni_kernels();

// Scalar building blocks the SIMD files reuse.
void bitserial_scalar(const uint64_t* a_planes, int q, const uint64_t* w_planes, int p, int64_t kw, int64_t m0,
                      int64_t m1, int64_t n0, int64_t nt, const TileOut& out);
void unpack_row_scalar(const uint64_t* planes, int bits, int64_t kw, bool signed_shift, uint8_t* out);
// The AVX2 streaming kernels, also used by the AVX-512 table (no AVX-512 version yet).
void stream_prepare_a_avx2(const uint64_t* planes, int bits, int64_t kw, uint8_t* out);
void stream_avx2(const uint8_t* a_u8, int q, const uint64_t* w_planes, int p, int64_t kw, int64_t m0, int64_t m1,
                 int64_t n0, int64_t nt, const TileOut& out);

}  // namespace qk::apmm
