// The shared fp16/bf16 conversions (native/common/qk_hd.h) against exact references:
// every binary16 value widens exactly, and f32 -> f16/bf16 rounds to nearest even.
#include <immintrin.h>
#include <math.h>

#include "check.h"
#include "common/qk_hd.h"

// Reference rounding through double: the nearest representable value, ties to even.
static uint16_t ref_f16(float f) {
  if (isnan(f)) return 0;  // not compared
  {
    double x = fabs((double)f);
    uint16_t sign = signbit(f) ? 0x8000 : 0;
    if (x >= 65520.0) return sign | 0x7c00;
    // candidates: enumerate by scaling to the binade's unit
    int e;
    frexp(x, &e);  // x = m * 2^e, m in [0.5, 1)
    int exp16 = e - 1;  // x in [2^exp16, 2^(exp16+1))
    double unit = exp16 < -14 ? ldexp(1.0, -24) : ldexp(1.0, exp16 - 10);
    double q = x / unit, fl = floor(q), rem = q - fl;
    double k = fl;
    if (rem > 0.5 || (rem == 0.5 && fmod(fl, 2.0) == 1.0)) k = fl + 1;
    double v = k * unit;
    if (x == 0) return sign;
    // encode v as binary16
    if (v < ldexp(1.0, -14)) return sign | (uint16_t)(v / ldexp(1.0, -24));
    int ve;
    double vm = frexp(v, &ve);
    int biased = ve - 1 + 15;
    if (biased >= 31) return sign | 0x7c00;
    uint16_t man = (uint16_t)((vm * 2.0 - 1.0) * 1024.0);
    return sign | (uint16_t)(biased << 10) | man;
  }
}

static uint16_t ref_bf16(float f) {
  double x = (double)f;
  uint32_t u = qk::f32_bits(f);
  uint32_t lo = u & 0xffff0000u, hi = lo + 0x10000u;
  // the candidate above the largest finite bf16 is 2^128 for rounding purposes (IEEE overflow)
  double vhi = (hi & 0x7fffffffu) == 0x7f800000u ? copysign(ldexp(1.0, 128), x) : (double)qk::bits_f32(hi);
  double dlo = fabs(x - (double)qk::bits_f32(lo)), dhi = fabs(vhi - x);
  if ((u & 0x7f800000u) == 0x7f800000u) return (uint16_t)(u >> 16);  // Inf stays
  if (dlo < dhi) return (uint16_t)(lo >> 16);
  if (dhi < dlo) return (uint16_t)(hi >> 16);
  return ((lo >> 16) & 1) ? (uint16_t)(hi >> 16) : (uint16_t)(lo >> 16);
}

int main() {
  // every binary16 -> f32 -> binary16 round trips; the value matches the definition
  for (uint32_t h = 0; h < 65536; h++) {
    float f = qk::f16_to_f32((uint16_t)h);
    uint32_t e = (h >> 10) & 31, m = h & 1023;
    if (e == 31) {
      CHECK(m ? isnan(f) : isinf(f), "h=%04x", h);
      continue;
    }
    double expect = e == 0 ? ldexp((double)m, -24) : ldexp(1.0 + m / 1024.0, (int)e - 15);
    if (h & 0x8000) expect = -expect;
    CHECK((double)f == expect && signbit(f) == !!(h & 0x8000), "h=%04x f=%g expect=%g", h, f, expect);
    CHECK(qk::f32_to_f16(f) == h, "round trip h=%04x", h);
  }
  // f32 -> f16 and f32 -> bf16 over a dense sweep of float bit patterns (every 97th, plus
  // every 7th around the f16 subnormal/overflow boundaries)
  uint64_t checked = 0;
  for (uint64_t u = 0; u < 0x100000000ull; u += (u > 0x33000000u && u < 0x38900000u) ? 7 : 97) {
    float f = qk::bits_f32((uint32_t)u);
    if (isnan(f)) continue;
    CHECK(qk::f32_to_f16(f) == ref_f16(f), "f16 u=%08llx got %04x want %04x", (unsigned long long)u,
          qk::f32_to_f16(f), ref_f16(f));
    CHECK(qk::f32_to_bf16(f) == ref_bf16(f), "bf16 u=%08llx got %04x want %04x", (unsigned long long)u,
          qk::f32_to_bf16(f), ref_bf16(f));
    checked++;
  }
  CHECK(checked > 50000000, "sweep too small: %llu", (unsigned long long)checked);
  // NaN stays NaN
  CHECK((qk::f32_to_bf16(nanf("")) & 0x7fff) > 0x7f80, "bf16 NaN");
  CHECK((qk::f32_to_f16(nanf("")) & 0x7fff) > 0x7c00, "f16 NaN");
  TEST_MAIN_END();
}
