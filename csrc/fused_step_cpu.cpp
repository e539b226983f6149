// CPU kernels of the fused sampler step (sample, score, score backward, Philox normals).
//
// One pass over memory per call. Work is split into (row, chunk) tasks run by ATen's
// OpenMP pool (at::parallel_for: it respects torch.set_num_threads and shares torch's
// OpenMP runtime); each task walks its chunk in L1-sized blocks: inputs are widened to
// float32 scratch, the element loops are plain arithmetic the compiler vectorises, and the
// per-row sums are reduced in float per block, in double per chunk, then over chunks in a
// fixed order, so results do not depend on the thread count.
//
// The loops are compiled three times (AVX-512, AVX2, baseline x86-64) and one is picked
// at load time from the CPU's features: a build on one machine runs everywhere, and the
// baseline alone would leave the Philox multiplies 4x narrower.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <cstring>
#include <vector>

#include "fused_step_args.h"
#include "step_coefficients.h"

namespace precise_fast {
namespace {

// 512 elements: six float32 scratch blocks (12 KiB) stay in L1 next to the streams.
constexpr int64_t kBlock = 512;
// Elements per parallel task: large enough to amortise scheduling, small enough that a
// 16 x 131072 batch makes 128 tasks for an even split.
constexpr int64_t kChunk = 16384;

#define PF_CPU_INLINE inline __attribute__((always_inline))

// ----------------------------------------------------------------------------- conversions

// The widened block: the stream itself for float32, else the scratch it was converted into.
PF_CPU_INLINE const float* load_block(const void* base, Elem elem, int64_t offset, int64_t n, float* scratch) {
  if (elem == Elem::F32) return static_cast<const float*>(base) + offset;
  if (elem == Elem::BF16) {
    const uint16_t* p = static_cast<const uint16_t*>(base) + offset;
    for (int64_t i = 0; i < n; ++i) scratch[i] = bits_to_float(static_cast<uint32_t>(p[i]) << 16);
  } else {
    const _Float16* p = static_cast<const _Float16*>(base) + offset;
    for (int64_t i = 0; i < n; ++i) scratch[i] = static_cast<float>(p[i]);
  }
  return scratch;
}

// float32 -> bfloat16, round to nearest even, NaN kept quiet (the rule of torch's .to()).
PF_CPU_INLINE uint16_t bf16_round(float f) {
  const uint32_t b = float_to_bits(f);
  const uint32_t rounded = (b + 0x7FFFu + ((b >> 16) & 1u)) >> 16;
  const bool is_nan = (b & 0x7FFFFFFFu) > 0x7F800000u;
  return static_cast<uint16_t>(is_nan ? ((b >> 16) | 0x40u) : rounded);
}

// Stores vals in elem's type and replaces each by its rounded value, which the log-prob
// then uses (the contract: the log-prob of the sample as stored).
PF_CPU_INLINE void store_block_rounded(void* base, Elem elem, int64_t offset, int64_t n, float* vals) {
  if (elem == Elem::F32) {
    float* p = static_cast<float*>(base) + offset;
    for (int64_t i = 0; i < n; ++i) p[i] = vals[i];
  } else if (elem == Elem::BF16) {
    uint16_t* p = static_cast<uint16_t*>(base) + offset;
    for (int64_t i = 0; i < n; ++i) {
      const uint16_t h = bf16_round(vals[i]);
      p[i] = h;
      vals[i] = bits_to_float(static_cast<uint32_t>(h) << 16);
    }
  } else {
    _Float16* p = static_cast<_Float16*>(base) + offset;
    for (int64_t i = 0; i < n; ++i) {
      const _Float16 h = static_cast<_Float16>(vals[i]);
      p[i] = h;
      vals[i] = static_cast<float>(h);
    }
  }
}

PF_CPU_INLINE void store_block(void* base, Elem elem, int64_t offset, int64_t n, const float* vals) {
  if (elem == Elem::F32) {
    float* p = static_cast<float*>(base) + offset;
    for (int64_t i = 0; i < n; ++i) p[i] = vals[i];
  } else if (elem == Elem::BF16) {
    uint16_t* p = static_cast<uint16_t*>(base) + offset;
    for (int64_t i = 0; i < n; ++i) p[i] = bf16_round(vals[i]);
  } else {
    _Float16* p = static_cast<_Float16*>(base) + offset;
    for (int64_t i = 0; i < n; ++i) p[i] = static_cast<_Float16>(vals[i]);
  }
}

// ----------------------------------------------------------------------------- block sums

// Sum over i in [0, n) of diff(i)^2 in an order the source fixes: element i adds into lane
// i % kSumLanes, then the lanes are added in index order. Every per-block sum of the kernel
// goes through here. `#pragma omp simd reduction` left the order to the compiler, and in the
// AVX2 variant GCC 12 ordered the sample loop and the fused bf16 score loop differently:
// re-scoring a stored sample moved its log-prob by an ulp (tests/kernels/backend_checks.py,
// failing on an AVX2-only host). With the order fixed, every loop and every ISA variant
// (16 lanes: one AVX-512 or two AVX2 registers) gives the same sum.
constexpr int kSumLanes = 16;

template <class Diff>
PF_CPU_INLINE float block_sq_sum(int64_t n, Diff diff) {
  float lane[kSumLanes] = {};
  int64_t i = 0;
  for (; i + kSumLanes <= n; i += kSumLanes) {
    // One vector lane per element: vectorising this loop keeps each lane's own order.
#pragma omp simd
    for (int l = 0; l < kSumLanes; ++l) {
      const float d = diff(i + l);
      lane[l] += d * d;
    }
  }
  for (int l = 0; i < n; ++i, ++l) {  // the tail: i % kSumLanes == l
    const float d = diff(i);
    lane[l] += d * d;
  }
  float sum = 0.0f;
  for (int l = 0; l < kSumLanes; ++l) sum += lane[l];
  return sum;
}

// ----------------------------------------------------------------------------- noise

enum Isa : int { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

#if defined(__x86_64__)
// GCC 12 warns that the intrinsics' internal _mm512_undefined_* values "may be used
// uninitialized" (GCC bug 105593, fixed in 13): a false positive in its own header.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// (hi, lo) 32-bit halves of the 16 products m * c. GCC vectorises the portable uint64
// form as 8 x 64-bit lanes; this keeps 16 x 32-bit lanes (vpmuludq on even and odd lanes):
// 2M normals on one Zen 4 core (philox_normal op, best of 30) 3.4 -> 2.2 ms, the sample
// step 5.7 -> 3.0 ms.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi2"), always_inline)) inline void
mulhilo_avx512(__m512i m, __m512i c, __m512i* hi, __m512i* lo) {
  const __m512i even = _mm512_mul_epu32(c, m);
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(c, 32), m);
  *lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
  *hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
}

// uniform_numerator on 16 lanes: 2 (w >> 9) + 1.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi2"), always_inline)) inline __m512i
numerators_avx512(__m512i w) {
  return _mm512_or_si512(_mm512_slli_epi32(_mm512_srli_epi32(w, 9), 1), _mm512_set1_epi32(1));
}

// Philox words of groups [group0, group0 + round_up(groups, 16)) as uniform numerators.
// Not inlined: an AVX-512 body cannot be inlined into the ISA-generic templates; one call
// per 512-element block costs nothing.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi2"), noinline)) void
philox_numerators_avx512(uint64_t group0, int64_t groups, uint32_t k0, uint32_t k1, uint32_t s0, uint32_t s1,
                         uint32_t* n0, uint32_t* n1, uint32_t* n2, uint32_t* n3) {
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i m0 = _mm512_set1_epi64(kPhiloxM0), m1 = _mm512_set1_epi64(kPhiloxM1);
  const __m512i one = _mm512_set1_epi32(1);
  for (int64_t j = 0; j < groups; j += 16) {
    const uint64_t base = group0 + static_cast<uint64_t>(j);
    const __m512i base_lo = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(base)));
    __m512i c0 = _mm512_add_epi32(base_lo, lane);
    // The group index is 64-bit: carry into the high word where the low word wrapped.
    const __mmask16 wrapped = _mm512_cmplt_epu32_mask(c0, base_lo);
    __m512i c1 = _mm512_mask_add_epi32(_mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(base >> 32))),
                                       wrapped, _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(base >> 32))), one);
    __m512i c2 = _mm512_set1_epi32(static_cast<int>(s0)), c3 = _mm512_set1_epi32(static_cast<int>(s1));
    uint32_t key0 = k0, key1 = k1;
#pragma GCC unroll 10
    for (int round = 0; round < 10; ++round) {
      __m512i hi0, lo0, hi1, lo1;
      mulhilo_avx512(m0, c0, &hi0, &lo0);
      mulhilo_avx512(m1, c2, &hi1, &lo1);
      c0 = _mm512_xor_si512(_mm512_xor_si512(hi1, c1), _mm512_set1_epi32(static_cast<int>(key0)));
      c1 = lo1;
      c2 = _mm512_xor_si512(_mm512_xor_si512(hi0, c3), _mm512_set1_epi32(static_cast<int>(key1)));
      c3 = lo0;
      key0 += kPhiloxW0;
      key1 += kPhiloxW1;
    }
    _mm512_store_si512(n0 + j, numerators_avx512(c0));
    _mm512_store_si512(n1 + j, numerators_avx512(c1));
    _mm512_store_si512(n2 + j, numerators_avx512(c2));
    _mm512_store_si512(n3 + j, numerators_avx512(c3));
  }
}
#pragma GCC diagnostic pop
#endif

// Normals of elements [first, first + n) of a row; first is a multiple of 4, out holds
// round_up(n, 4) floats.
template <int ISA>
PF_CPU_INLINE void philox_block(uint64_t seed, uint64_t step, int64_t first, int64_t n, float* out) {
  const uint64_t group0 = static_cast<uint64_t>(first) >> 2;
  const int64_t groups = (n + 3) >> 2;
  const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  const uint32_t s0 = static_cast<uint32_t>(step), s1 = static_cast<uint32_t>(step >> 32);
  // kBlock / 4 groups, a multiple of 16: the AVX-512 loop may fill up to it.
  alignas(64) uint32_t n0[kBlock / 4], n1[kBlock / 4], n2[kBlock / 4], n3[kBlock / 4];
  static_assert((kBlock / 4) % 16 == 0, "the AVX-512 Philox loop works in 16-group steps");
#if defined(__x86_64__)
  if constexpr (ISA == kAvx512) {
    philox_numerators_avx512(group0, groups, k0, k1, s0, s1, n0, n1, n2, n3);
  } else
#endif
  // Philox in structure-of-arrays form: one straight-line body per group, vectorised
  // across groups (the 10 rounds unroll fully).
  for (int64_t j = 0; j < groups; ++j) {
    const uint64_t g = group0 + static_cast<uint64_t>(j);
    uint32_t c0 = static_cast<uint32_t>(g), c1 = static_cast<uint32_t>(g >> 32), c2 = s0, c3 = s1;
    uint32_t key0 = k0, key1 = k1;
#pragma GCC unroll 10
    for (int round = 0; round < 10; ++round) {
      const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c0;
      const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c2;
      const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
      const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
      c0 = hi1 ^ c1 ^ key0;
      c1 = lo1;
      c2 = hi0 ^ c3 ^ key1;
      c3 = lo0;
      key0 += kPhiloxW0;
      key1 += kPhiloxW1;
    }
    n0[j] = uniform_numerator(c0);
    n1[j] = uniform_numerator(c1);
    n2[j] = uniform_numerator(c2);
    n3[j] = uniform_numerator(c3);
  }
  for (int64_t j = 0; j < groups; ++j) {
    const float r01 = sqrtf(minus_two_log_uniform(n0[j]));
    const float r23 = sqrtf(minus_two_log_uniform(n2[j]));
    float s1, c1, s3, c3;
    sincos_two_pi_uniform(n1[j], &s1, &c1);
    sincos_two_pi_uniform(n3[j], &s3, &c3);
    out[4 * j + 0] = r01 * c1;
    out[4 * j + 1] = r01 * s1;
    out[4 * j + 2] = r23 * c3;
    out[4 * j + 3] = r23 * s3;
  }
}

// ----------------------------------------------------------------------------- task bodies

struct SampleTask {
  Family family;
  int64_t row_elems;
  const RowCoefficients* rows;
  const void* x;
  Elem x_elem;
  const void* v;
  Elem v_elem;
  const void* noise;  // nullptr: draw from (seeds, step)
  Elem noise_elem;
  const int64_t* seeds;
  const int64_t* steps;
  void* prev;        // x's type
  float* mean;       // nullptr unless asked
};

// Sum over [begin, end) of row `row` of (prev_rounded - mean)^2.
template <int ISA>
PF_CPU_INLINE double sample_chunk_impl(const SampleTask& t, int64_t row, int64_t begin, int64_t end) {
  alignas(64) float xs[kBlock], vs[kBlock], zs[kBlock], ps[kBlock], ms[kBlock];
  const RowCoefficients rc = t.rows[row];
  const float cx = rc.cx, cv = rc.cv, sd = rc.sd;
  const bool stochastic = t.family != Family::Ode;
  double acc = 0.0;
  for (int64_t blk = begin; blk < end; blk += kBlock) {
    const int64_t n = std::min(kBlock, end - blk);
    const int64_t off = row * t.row_elems + blk;
    const float* xp = load_block(t.x, t.x_elem, off, n, xs);
    const float* vp = load_block(t.v, t.v_elem, off, n, vs);
    float* mp = t.mean != nullptr ? t.mean + off : ms;
    for (int64_t i = 0; i < n; ++i) mp[i] = cx * xp[i] + cv * vp[i];
    if (!stochastic) {
      store_block(t.prev, t.x_elem, off, n, mp);
      continue;
    }
    const float* zp;
    if (t.noise != nullptr) {
      zp = load_block(t.noise, t.noise_elem, off, n, zs);
    } else {
      philox_block<ISA>(static_cast<uint64_t>(t.seeds[row]), static_cast<uint64_t>(t.steps[row]), blk, n, zs);
      zp = zs;
    }
    for (int64_t i = 0; i < n; ++i) ps[i] = mp[i] + sd * zp[i];
    store_block_rounded(t.prev, t.x_elem, off, n, ps);
    acc += block_sq_sum(n, [&](int64_t i) { return ps[i] - mp[i]; });
  }
  return acc;
}

struct ScoreTask {
  Family family;
  int64_t row_elems;
  const RowCoefficients* rows;
  const void* x;
  Elem x_elem;
  const void* v;
  Elem v_elem;
  const void* prev;
  Elem prev_elem;
  const void* old_mean;  // nullptr: no guard bias
  Elem old_elem;
  float* mean;           // nullptr unless asked
};

struct ScoreSums {
  double log_prob = 0.0;  // sum of (prev - mean)^2
  double bias = 0.0;      // sum of (mean - old_mean)^2
};

template <int ISA>
PF_CPU_INLINE ScoreSums score_chunk_impl(const ScoreTask& t, int64_t row, int64_t begin, int64_t end) {
  alignas(64) float xs[kBlock], vs[kBlock], ps[kBlock], os[kBlock], ms[kBlock];
  const RowCoefficients rc = t.rows[row];
  const float cx = rc.cx, cv = rc.cv;
  const bool stochastic = t.family != Family::Ode;
  ScoreSums acc;
  // The training hot path (log-prob only, x, v, prev of one type) reads the streams in
  // the reduction loop itself: no widened scratch and no mean written back. Score forward
  // of 16 x 131072 on one core, best of 40: fp32 0.73 -> 0.49 ms, bf16 0.59 -> 0.43 ms.
  // The per-block sum is block_sq_sum, as everywhere else, so re-scoring stays bitwise
  // equal to sample mode's log-prob (tested).
  const bool lp_only = stochastic && t.mean == nullptr && t.old_mean == nullptr && t.x_elem == t.v_elem &&
                       t.x_elem == t.prev_elem && t.x_elem != Elem::F16;
  for (int64_t blk = begin; blk < end; blk += kBlock) {
    const int64_t n = std::min(kBlock, end - blk);
    const int64_t off = row * t.row_elems + blk;
    if (lp_only) {
      if (t.x_elem == Elem::BF16) {
        const uint16_t* xb = static_cast<const uint16_t*>(t.x) + off;
        const uint16_t* vb = static_cast<const uint16_t*>(t.v) + off;
        const uint16_t* pb = static_cast<const uint16_t*>(t.prev) + off;
        acc.log_prob += block_sq_sum(n, [&](int64_t i) {
          const float m = cx * bits_to_float(static_cast<uint32_t>(xb[i]) << 16) +
                          cv * bits_to_float(static_cast<uint32_t>(vb[i]) << 16);
          return bits_to_float(static_cast<uint32_t>(pb[i]) << 16) - m;
        });
      } else {
        const float* xf = static_cast<const float*>(t.x) + off;
        const float* vf = static_cast<const float*>(t.v) + off;
        const float* pf = static_cast<const float*>(t.prev) + off;
        acc.log_prob += block_sq_sum(n, [&](int64_t i) { return pf[i] - (cx * xf[i] + cv * vf[i]); });
      }
      continue;
    }
    const float* xp = load_block(t.x, t.x_elem, off, n, xs);
    const float* vp = load_block(t.v, t.v_elem, off, n, vs);
    float* mp = t.mean != nullptr ? t.mean + off : ms;
    if (stochastic) {
      const float* pp = load_block(t.prev, t.prev_elem, off, n, ps);
      acc.log_prob += block_sq_sum(n, [&](int64_t i) {
        const float m = cx * xp[i] + cv * vp[i];
        mp[i] = m;
        return pp[i] - m;
      });
    } else {
      for (int64_t i = 0; i < n; ++i) mp[i] = cx * xp[i] + cv * vp[i];
    }
    if (t.old_mean != nullptr) {
      const float* op = load_block(t.old_mean, t.old_elem, off, n, os);
      acc.bias += block_sq_sum(n, [&](int64_t i) { return mp[i] - op[i]; });
    }
  }
  return acc;
}

struct BackwardTask {
  int64_t row_elems;
  const RowCoefficients* rows;
  const float* lp_scale;    // per row: grad_log_prob * (1 / std^2) / M (0 for ode)
  const float* bias_scale;  // per row: grad_guard_bias * 2 / M, or nullptr
  const void* x;
  Elem x_elem;
  const void* v;
  Elem v_elem;
  const void* prev;
  Elem prev_elem;
  const void* old_mean;     // nullptr unless the bias has a gradient or old_mean needs one
  Elem old_elem;
  const float* grad_mean;   // nullptr: no gradient through the mean output
  void* grad_v;             // v's type
  void* grad_x;             // x's type, or nullptr
  void* grad_old;           // old_mean's type, or nullptr
};

// d loss / d mean_i = a_lp (prev_i - mean_i) + a_b (mean_i - old_i) + grad_mean_i, then
// grad_v = cv * that and grad_x = cx * that (mean = cx x + cv v).
template <int ISA>
PF_CPU_INLINE void backward_chunk_impl(const BackwardTask& t, int64_t row, int64_t begin, int64_t end) {
  alignas(64) float xs[kBlock], vs[kBlock], ps[kBlock], os[kBlock], gs[kBlock], gx[kBlock], go[kBlock];
  const RowCoefficients rc = t.rows[row];
  const float cx = rc.cx, cv = rc.cv;
  const float a_lp = t.lp_scale[row];
  const float a_b = t.bias_scale != nullptr ? t.bias_scale[row] : 0.0f;
  for (int64_t blk = begin; blk < end; blk += kBlock) {
    const int64_t n = std::min(kBlock, end - blk);
    const int64_t off = row * t.row_elems + blk;
    const float* xp = load_block(t.x, t.x_elem, off, n, xs);
    const float* vp = load_block(t.v, t.v_elem, off, n, vs);
    const float* pp = load_block(t.prev, t.prev_elem, off, n, ps);
    float* gm = gs;  // total d loss / d mean of the block
    for (int64_t i = 0; i < n; ++i) {
      const float m = cx * xp[i] + cv * vp[i];
      gm[i] = a_lp * (pp[i] - m);
    }
    if (t.old_mean != nullptr) {
      const float* op = load_block(t.old_mean, t.old_elem, off, n, os);
      for (int64_t i = 0; i < n; ++i) {
        const float m = cx * xp[i] + cv * vp[i];
        const float db = a_b * (m - op[i]);
        gm[i] += db;
        go[i] = -db;
      }
      if (t.grad_old != nullptr) store_block(t.grad_old, t.old_elem, off, n, go);
    }
    if (t.grad_mean != nullptr) {
      const float* g = t.grad_mean + off;
      for (int64_t i = 0; i < n; ++i) gm[i] += g[i];
    }
    if (t.grad_x != nullptr) {
      for (int64_t i = 0; i < n; ++i) gx[i] = cx * gm[i];
      store_block(t.grad_x, t.x_elem, off, n, gx);
    }
    for (int64_t i = 0; i < n; ++i) gm[i] *= cv;
    store_block(t.grad_v, t.v_elem, off, n, gm);
  }
}

template <int ISA>
PF_CPU_INLINE void normals_chunk_impl(const int64_t* seeds, const int64_t* steps, float* out, int64_t row_elems,
                                      int64_t row, int64_t begin, int64_t end) {
  alignas(64) float zs[kBlock];
  for (int64_t blk = begin; blk < end; blk += kBlock) {
    const int64_t n = std::min(kBlock, end - blk);
    philox_block<ISA>(static_cast<uint64_t>(seeds[row]), static_cast<uint64_t>(steps[row]), blk, n, zs);
    float* o = out + row * row_elems + blk;
    for (int64_t i = 0; i < n; ++i) o[i] = zs[i];
  }
}

// ----------------------------------------------------------------------------- ISA variants

#define PF_DEFINE_VARIANTS(SUFFIX, ISA, ATTR)                                                                     \
  ATTR double sample_chunk_##SUFFIX(const SampleTask& t, int64_t r, int64_t b, int64_t e) {                 \
    return sample_chunk_impl<ISA>(t, r, b, e);                                                                    \
  }                                                                                                          \
  ATTR ScoreSums score_chunk_##SUFFIX(const ScoreTask& t, int64_t r, int64_t b, int64_t e) {                \
    return score_chunk_impl<ISA>(t, r, b, e);                                                                     \
  }                                                                                                          \
  ATTR void backward_chunk_##SUFFIX(const BackwardTask& t, int64_t r, int64_t b, int64_t e) {               \
    backward_chunk_impl<ISA>(t, r, b, e);                                                                         \
  }                                                                                                          \
  ATTR void normals_chunk_##SUFFIX(const int64_t* s, const int64_t* st, float* o, int64_t m, int64_t r,     \
                                   int64_t b, int64_t e) {                                                   \
    normals_chunk_impl<ISA>(s, st, o, m, r, b, e);                                                                \
  }

#if defined(__x86_64__)
PF_DEFINE_VARIANTS(avx512, kAvx512, __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi2"))))
PF_DEFINE_VARIANTS(avx2, kAvx2, __attribute__((target("avx2,fma,f16c,bmi2"))))
#endif
PF_DEFINE_VARIANTS(base, kBaseline, )

struct Kernels {
  double (*sample)(const SampleTask&, int64_t, int64_t, int64_t);
  ScoreSums (*score)(const ScoreTask&, int64_t, int64_t, int64_t);
  void (*backward)(const BackwardTask&, int64_t, int64_t, int64_t);
  void (*normals)(const int64_t*, const int64_t*, float*, int64_t, int64_t, int64_t, int64_t);
  const char* isa;
};

// The best variant this CPU runs; PRECISE_FAST_CPU_ISA=avx2|baseline caps it (read once),
// so tests can run the variants a developer's machine would not pick by itself.
const Kernels& kernels() {
  static const Kernels chosen = [] {
    const char* cap_env = std::getenv("PRECISE_FAST_CPU_ISA");
    const std::string cap = cap_env != nullptr ? cap_env : "";
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (cap.empty() || cap == "avx512") {
      if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
        return Kernels{sample_chunk_avx512, score_chunk_avx512, backward_chunk_avx512, normals_chunk_avx512, "avx512"};
      }
    }
    if (cap.empty() || cap == "avx512" || cap == "avx2") {
      if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
        return Kernels{sample_chunk_avx2, score_chunk_avx2, backward_chunk_avx2, normals_chunk_avx2, "avx2"};
      }
    }
#endif
    return Kernels{sample_chunk_base, score_chunk_base, backward_chunk_base, normals_chunk_base, "baseline"};
  }();
  return chosen;
}

// ----------------------------------------------------------------------------- driver

// Runs body(task, row, begin, end) over every (row, chunk) task in parallel.
template <typename Body>
void for_each_chunk(int64_t batch, int64_t row_elems, const Body& body) {
  const int64_t chunks = (row_elems + kChunk - 1) / kChunk;
  at::parallel_for(0, batch * chunks, 1, [&](int64_t first, int64_t last) {
    for (int64_t task = first; task < last; ++task) {
      const int64_t row = task / chunks, chunk = task % chunks;
      const int64_t begin = chunk * kChunk, end = std::min(row_elems, begin + kChunk);
      body(task, row, begin, end);
    }
  });
}

int64_t chunks_per_row(int64_t row_elems) { return (row_elems + kChunk - 1) / kChunk; }

std::vector<RowCoefficients> coefficients(const StepViews& s) {
  std::vector<RowCoefficients> rows(static_cast<size_t>(s.batch));
  const float* sig = s.sigma.data_ptr<float>();
  const float* nxt = s.next_sigma.data_ptr<float>();
  const float* sd = s.std_dev.data_ptr<float>();
  for (int64_t b = 0; b < s.batch; ++b) rows[b] = row_coefficients(s.family, sig[b], nxt[b], sd[b]);
  return rows;
}

void check_cpu(const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu(), "the CPU kernel got tensors on ", x.device());
}

// The sample pass into given buffers (checked by the callers): prev in x's type, log_prob
// (B,) float32, mean float32 or undefined.
void sample_into(const StepViews& s, const at::Tensor& prev, const at::Tensor& log_prob, const at::Tensor& mean) {
  const auto rows = coefficients(s);
  SampleTask t{};
  t.family = s.family;
  t.row_elems = s.row_elems;
  t.rows = rows.data();
  t.x = s.x.data_ptr();
  t.x_elem = elem_of(s.x, "x");
  t.v = s.v.data_ptr();
  t.v_elem = elem_of(s.v, "v");
  t.noise = s.noise.defined() ? s.noise.data_ptr() : nullptr;
  t.noise_elem = s.noise.defined() ? elem_of(s.noise, "noise") : Elem::F32;
  t.seeds = s.seeds.defined() ? s.seeds.data_ptr<int64_t>() : nullptr;
  t.steps = s.step_index.defined() ? s.step_index.data_ptr<int64_t>() : nullptr;
  t.prev = prev.data_ptr();
  t.mean = mean.defined() ? mean.data_ptr<float>() : nullptr;

  const int64_t chunks = chunks_per_row(s.row_elems);
  std::vector<double> partial(static_cast<size_t>(s.batch * chunks), 0.0);
  const auto fn = kernels().sample;
  for_each_chunk(s.batch, s.row_elems, [&](int64_t task, int64_t row, int64_t b, int64_t e) {
    partial[task] = fn(t, row, b, e);
  });
  float* lp = log_prob.data_ptr<float>();
  for (int64_t row = 0; row < s.batch; ++row) {
    if (s.family == Family::Ode) {
      lp[row] = 0.0f;
      continue;
    }
    double sum = 0.0;
    for (int64_t c = 0; c < chunks; ++c) sum += partial[row * chunks + c];
    lp[row] = static_cast<float>(-0.5 * rows[row].inv_var * sum / static_cast<double>(s.row_elems) +
                                 rows[row].log_norm);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sample_step_cpu(
    const at::Tensor& x, const at::Tensor& v, const at::Tensor& sigma, const at::Tensor& next_sigma,
    const at::Tensor& std_dev, const c10::optional<at::Tensor>& seeds, const c10::optional<at::Tensor>& step_index,
    const c10::optional<at::Tensor>& noise, int64_t family, bool return_mean) {
  check_cpu(x);
  const StepViews s = sample_views(x, v, sigma, next_sigma, std_dev, seeds, step_index, noise, family);
  at::Tensor prev = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor mean = at::empty(return_mean ? x.sizes() : at::IntArrayRef{0}, x.options().dtype(at::kFloat));
  at::Tensor log_prob = at::empty({s.batch}, x.options().dtype(at::kFloat));
  sample_into(s, prev, log_prob, return_mean ? mean : at::Tensor());
  return {prev, log_prob, mean};
}

void sample_step_out_cpu(const at::Tensor& x, const at::Tensor& v, const at::Tensor& sigma,
                         const at::Tensor& next_sigma, const at::Tensor& std_dev,
                         const c10::optional<at::Tensor>& seeds, const c10::optional<at::Tensor>& step_index,
                         const c10::optional<at::Tensor>& noise, int64_t family, const at::Tensor& prev,
                         const at::Tensor& log_prob, const c10::optional<at::Tensor>& mean) {
  check_cpu(x);
  const StepViews s = sample_views(x, v, sigma, next_sigma, std_dev, seeds, step_index, noise, family);
  check_sample_out(x, prev, log_prob, mean);
  sample_into(s, prev, log_prob, mean.has_value() ? *mean : at::Tensor());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> score_step_cpu(
    const at::Tensor& x, const at::Tensor& v, const at::Tensor& prev_sample, const at::Tensor& sigma,
    const at::Tensor& next_sigma, const at::Tensor& std_dev, const c10::optional<at::Tensor>& old_mean,
    int64_t family, bool return_mean) {
  check_cpu(x);
  const StepViews s = score_views(x, v, prev_sample, sigma, next_sigma, std_dev, old_mean, family);
  const auto rows = coefficients(s);
  const bool with_bias = s.old_mean.defined();
  at::Tensor mean = at::empty(return_mean ? x.sizes() : at::IntArrayRef{0}, x.options().dtype(at::kFloat));
  // Every row of both is written below: empty, not zeros (a fill is one more dispatch).
  at::Tensor log_prob = at::empty({s.batch}, x.options().dtype(at::kFloat));
  at::Tensor bias = at::empty({with_bias ? s.batch : 0}, x.options().dtype(at::kFloat));

  ScoreTask t{};
  t.family = s.family;
  t.row_elems = s.row_elems;
  t.rows = rows.data();
  t.x = s.x.data_ptr();
  t.x_elem = elem_of(s.x, "x");
  t.v = s.v.data_ptr();
  t.v_elem = elem_of(s.v, "v");
  t.prev = s.prev.data_ptr();
  t.prev_elem = elem_of(s.prev, "prev_sample");
  t.old_mean = with_bias ? s.old_mean.data_ptr() : nullptr;
  t.old_elem = with_bias ? elem_of(s.old_mean, "old_mean") : Elem::F32;
  t.mean = return_mean ? mean.data_ptr<float>() : nullptr;

  const int64_t chunks = chunks_per_row(s.row_elems);
  std::vector<ScoreSums> partial(static_cast<size_t>(s.batch * chunks));
  const auto fn = kernels().score;
  for_each_chunk(s.batch, s.row_elems, [&](int64_t task, int64_t row, int64_t b, int64_t e) {
    partial[task] = fn(t, row, b, e);
  });
  float* lp = log_prob.data_ptr<float>();
  float* bp = with_bias ? bias.data_ptr<float>() : nullptr;
  const double inv_m = 1.0 / static_cast<double>(s.row_elems);
  for (int64_t row = 0; row < s.batch; ++row) {
    double sum_lp = 0.0, sum_b = 0.0;
    for (int64_t c = 0; c < chunks; ++c) {
      sum_lp += partial[row * chunks + c].log_prob;
      sum_b += partial[row * chunks + c].bias;
    }
    lp[row] = s.family == Family::Ode
                  ? 0.0f
                  : static_cast<float>(-0.5 * rows[row].inv_var * sum_lp * inv_m + rows[row].log_norm);
    if (bp != nullptr) bp[row] = static_cast<float>(sum_b * inv_m);
  }
  return {log_prob, mean, bias};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> score_step_backward_cpu(
    const at::Tensor& grad_log_prob, const c10::optional<at::Tensor>& grad_mean,
    const c10::optional<at::Tensor>& grad_guard_bias, const at::Tensor& x, const at::Tensor& v,
    const at::Tensor& prev_sample, const at::Tensor& sigma, const at::Tensor& next_sigma, const at::Tensor& std_dev,
    const c10::optional<at::Tensor>& old_mean, int64_t family, bool need_grad_x, bool need_grad_old_mean) {
  check_cpu(x);
  const StepViews s = score_views(x, v, prev_sample, sigma, next_sigma, std_dev, old_mean, family);
  const auto rows = coefficients(s);
  const BackwardGrads g = backward_grads(x, s, grad_log_prob, grad_mean, grad_guard_bias, need_grad_old_mean);
  const at::Tensor &g_lp = g.log_prob, &g_mean = g.mean, &g_bias = g.bias;
  const bool bias_grad = g.bias_grad, old_grad = g.old_grad;

  const double inv_m = 1.0 / static_cast<double>(s.row_elems);
  std::vector<float> lp_scale(static_cast<size_t>(s.batch)), bias_scale(static_cast<size_t>(s.batch), 0.0f);
  const float* glp = g_lp.data_ptr<float>();
  for (int64_t b = 0; b < s.batch; ++b) {
    lp_scale[b] = static_cast<float>(glp[b] * rows[b].inv_var * inv_m);
    if (bias_grad) bias_scale[b] = static_cast<float>(2.0 * g_bias.data_ptr<float>()[b] * inv_m);
  }

  at::Tensor grad_v = at::empty(v.sizes(), v.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor grad_x = need_grad_x ? at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous))
                                  : at::empty({0}, x.options());
  at::Tensor grad_old = old_grad ? at::empty(s.old_mean.sizes(), s.old_mean.options())
                                 : at::empty({0}, x.options().dtype(at::kFloat));

  BackwardTask t{};
  t.row_elems = s.row_elems;
  t.rows = rows.data();
  t.lp_scale = lp_scale.data();
  t.bias_scale = bias_grad ? bias_scale.data() : nullptr;
  t.x = s.x.data_ptr();
  t.x_elem = elem_of(s.x, "x");
  t.v = s.v.data_ptr();
  t.v_elem = elem_of(s.v, "v");
  t.prev = s.prev.data_ptr();
  t.prev_elem = elem_of(s.prev, "prev_sample");
  // Without a bias gradient the old mean only feeds grad_old, which is then zero.
  t.old_mean = (bias_grad && s.old_mean.defined()) ? s.old_mean.data_ptr() : nullptr;
  t.old_elem = s.old_mean.defined() ? elem_of(s.old_mean, "old_mean") : Elem::F32;
  t.grad_mean = g_mean.defined() ? g_mean.data_ptr<float>() : nullptr;
  t.grad_v = grad_v.data_ptr();
  t.grad_x = need_grad_x ? grad_x.data_ptr() : nullptr;
  t.grad_old = (old_grad && bias_grad) ? grad_old.data_ptr() : nullptr;
  if (old_grad && !bias_grad) grad_old.zero_();

  const auto fn = kernels().backward;
  for_each_chunk(s.batch, s.row_elems, [&](int64_t, int64_t row, int64_t b, int64_t e) { fn(t, row, b, e); });
  return {grad_v, grad_x, grad_old};
}

at::Tensor philox_normal_cpu(const at::Tensor& seeds, const at::Tensor& step_index, int64_t row_elems) {
  TORCH_CHECK(seeds.device().is_cpu(), "the CPU kernel got tensors on ", seeds.device());
  TORCH_CHECK_VALUE(seeds.dim() == 1 && seeds.size(0) > 0, "seeds must have shape (B,), got ", seeds.sizes());
  TORCH_CHECK_VALUE(row_elems > 0, "row_elems must be positive, got ", row_elems);
  const at::Tensor s = row_integers(seeds, seeds, "seeds");
  const at::Tensor st = row_integers(seeds, step_index, "step_index");
  const int64_t batch = seeds.size(0);
  at::Tensor out = at::empty({batch, row_elems}, seeds.options().dtype(at::kFloat));
  const auto fn = kernels().normals;
  const int64_t* sp = s.data_ptr<int64_t>();
  const int64_t* stp = st.data_ptr<int64_t>();
  float* op = out.data_ptr<float>();
  for_each_chunk(batch, row_elems, [&](int64_t, int64_t row, int64_t b, int64_t e) {
    fn(sp, stp, op, row_elems, row, b, e);
  });
  return out;
}

}  // namespace

const char* cpu_isa() { return kernels().isa; }

TORCH_LIBRARY_IMPL(precise_fast, CPU, m) {
  m.impl("sample_step", &sample_step_cpu);
  m.impl("sample_step_out", &sample_step_out_cpu);
  m.impl("score_step", &score_step_cpu);
  m.impl("score_step_backward", &score_step_backward_cpu);
  m.impl("philox_normal", &philox_normal_cpu);
}

}  // namespace precise_fast
