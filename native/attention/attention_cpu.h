// Paged decode attention on the CPU: one table of kernels per SIMD path. The ABI layer
// (attention_api.cpp) validates every page id and length before a kernel runs; kernels trust
// their arguments.
#pragma once
#include <stdint.h>

#include "qkern.h"

namespace qk::attention {

// Where one layer's K and V live. Element (block, token, head, d) of K is at
// k + (block * k_block_stride + token * token_stride + head * head_dim + d) elements.
struct CacheView {
  const void* k;
  const void* v;
  int64_t k_block_stride;  // elements
  int64_t v_block_stride;
  int64_t token_stride;    // num_kv_heads * head_dim
  int32_t dtype;           // QK_F32 / QK_F16 / QK_BF16
  int32_t block_size;
  int32_t head_dim;
};

// The helpers below are compiled into every kernel file, each with its own ISA flags; internal
// linkage keeps the linker from handing one file a copy built for another's instruction set.
namespace {

// Most tokens per softmax tile: a tile gathers rows across pages through per-token offsets, so
// small blocks (8, 16 tokens) cost the same per token as large ones.
constexpr int kMaxDecodeTile = 64;

// Tokens per softmax tile for rows of `row_bytes` (all KV heads of one token): the most, up to
// 64, whose K rows fit in 32 KiB. A tile is walked once per KV head, so its rows are read as
// `tile` interleaved strided streams: 64 rows of 2 KiB read that way ran at ~40% of the speed of
// the same bytes read token by token (measured on Zen 3), while a tile that stays in L1 between
// the KV heads costs nothing extra. Never below 8, the score step's width.
inline int decode_tile_tokens(int64_t row_bytes) {
  int tile = 8;
  while (tile < kMaxDecodeTile && 2 * tile * row_bytes <= 32768) tile *= 2;
  return tile;
}

// Offsets of the rows of tokens [t0, t0 + n) of a page list, times `unit` (1: elements, the
// element size: bytes): K row i at k_rows[i], V row i at v_rows[i]. Walks page and offset
// instead of dividing per token.
inline void tile_rows(const CacheView& c, const int32_t* pages, int64_t t0, int64_t n, int64_t unit, int64_t* k_rows,
                      int64_t* v_rows) {
  int64_t page = t0 / c.block_size, off = t0 % c.block_size;
  for (int64_t i = 0; i < n; i++) {
    k_rows[i] = (pages[page] * c.k_block_stride + off * c.token_stride) * unit;
    v_rows[i] = (pages[page] * c.v_block_stride + off * c.token_stride) * unit;
    if (++off == c.block_size) {
      off = 0;
      page++;
    }
  }
}

// The next tile's rows to pull toward the cache while this one runs: row i spans
// [k_rows[i], k_rows[i] + row_bytes) of K (and of V at v_rows[i]), all KV heads of one token.
// Each KV head's call takes an equal share of the tile's lines (a share by rows would hand a
// whole 10-20 KiB row to one head and none to the next when there are more heads than rows, and
// a burst that size stalls on the cache's miss buffers). A cursor walks the share a few lines
// per step (no division per line: this runs in the hot loop).
struct Prefetch {
  const char* k;
  const char* v;
  const int64_t* k_rows;  // byte offsets
  const int64_t* v_rows;
  int64_t row_bytes;
  int64_t row, line;      // cursor: row and byte offset in it
  int64_t left;           // lines of the share not yet prefetched

  // Share `part` of `parts` of the lines of `rows` rows.
  Prefetch(const char* k, const char* v, const int64_t* k_rows, const int64_t* v_rows, int64_t row_bytes, int64_t rows,
           int part, int parts)
      : k(k), v(v), k_rows(k_rows), v_rows(v_rows), row_bytes(row_bytes) {
    const int64_t row_lines = (row_bytes + 63) / 64, lines = rows * row_lines;
    const int64_t begin = lines * part / parts, end = lines * (part + 1) / parts;
    row = begin / row_lines;
    line = begin % row_lines * 64;
    left = end - begin;
  }
};

// Prefetches the next `lines` cache lines of the share.
inline void prefetch_lines(Prefetch& pf, int64_t lines) {
  for (; lines > 0 && pf.left > 0; lines--, pf.left--) {
    __builtin_prefetch(pf.k + pf.k_rows[pf.row] + pf.line, 0, 3);
    __builtin_prefetch(pf.v + pf.v_rows[pf.row] + pf.line, 0, 3);
    pf.line += 64;
    if (pf.line >= pf.row_bytes) {
      pf.line = 0;
      pf.row++;
    }
  }
}

// Walks the tokens of a page list (full pages, the last holding `last_page_len` tokens) one tile
// at a time and, within a tile, each KV head: body(kvh, k_rows, v_rows, n, pf) gets the element
// offsets of the tile's n rows (a head adds kvh * head_dim) and a prefetcher over that head's
// share of the next tile's lines (the next page is at an unrelated address, which the hardware
// prefetchers cannot guess).
template <class Body>
inline void for_each_tile(const CacheView& c, const int32_t* pages, int64_t num_pages, int64_t last_page_len,
                          int kv_heads, Body&& body) {
  const int64_t es = c.dtype == QK_F32 ? 4 : 2;
  const int64_t total = num_pages ? (num_pages - 1) * c.block_size + last_page_len : 0;
  int64_t k_rows[kMaxDecodeTile], v_rows[kMaxDecodeTile], next_k[kMaxDecodeTile], next_v[kMaxDecodeTile];
  const int64_t tile = decode_tile_tokens(c.token_stride * es);
  for (int64_t t0 = 0; t0 < total; t0 += tile) {
    const int64_t n = total - t0 < tile ? total - t0 : tile;
    tile_rows(c, pages, t0, n, 1, k_rows, v_rows);
    const int64_t next_n = total - t0 - n < tile ? total - t0 - n : tile;
    tile_rows(c, pages, t0 + n, next_n, es, next_k, next_v);
    for (int kvh = 0; kvh < kv_heads; kvh++) {
      Prefetch pf((const char*)c.k, (const char*)c.v, next_k, next_v, c.token_stride * es, next_n, kvh, kv_heads);
      body(kvh, (const int64_t*)k_rows, (const int64_t*)v_rows, n, pf);
    }
  }
}

}  // namespace

// Floats of the per-tile score buffer (scores of one tile of tokens for up to 8 heads).
inline int64_t decode_score_floats(int group, int block_size) {
  const int64_t padded_group = (group + 7) / 8 * 8;
  const int64_t tile = block_size > kMaxDecodeTile ? block_size : kMaxDecodeTile;
  return padded_group * (tile + 8) + 64;
}

// Scratch floats one decode call needs for kv_heads query groups of `group` heads: per KV head
// the output accumulators and running max/sum/rescale factor, the score buffer, and a
// reordered copy of q.
inline int64_t decode_scratch_floats(int kv_heads, int group, int head_dim, int block_size) {
  const int64_t padded_group = (group + 7) / 8 * 8;
  return (int64_t)kv_heads * (padded_group * head_dim + 3 * padded_group) + decode_score_floats(group, block_size) +
         (int64_t)kv_heads * group * head_dim;
}

struct CpuKernels {
  // Softmax attention of one sequence's kv_heads * group query heads (q: [kv_heads][group]
  // [head_dim] float32; query head h uses KV head h / group) over pages[0..num_pages): every
  // page is full except the last, which holds `last_page_len` tokens. Writes the normalized
  // output (same layout as q) and lse (natural log of the sum of exp(scale * q.k)); no pages
  // gives out = 0, lse = -inf. A page is walked block by block for all KV heads (the block is
  // contiguous, so the walk streams through memory), and each KV head's rows are read once for
  // its whole query group.
  void (*decode)(const CacheView& cache, const int32_t* pages, int64_t num_pages, int64_t last_page_len,
                 const float* q, int kv_heads, int group, float scale, float* out, float* lse, float* scratch);
};

const CpuKernels& scalar_kernels();
const CpuKernels& avx2_kernels();
const CpuKernels& avx512_kernels();

// The scalar kernel, which the SIMD files fall back to for head_dim they do not tile.
void decode_scalar(const CacheView& cache, const int32_t* pages, int64_t num_pages, int64_t last_page_len,
                   const float* q, int kv_heads, int group, float scale, float* out, float* lse, float* scratch);

}  // namespace qk::attention
