// Per-row coefficient math and the Philox normal stream, shared by the CPU and CUDA
// kernels (shared/SAMPLERS.md is the contract; precise_fast/sde/philox.py the reference).
//
// Everything here is header-only, branch-light and free of library calls so that the CPU
// compiler can vectorise it and nvcc can inline it into device code.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define PF_HD __host__ __device__ __forceinline__
#else
#define PF_HD inline __attribute__((always_inline))
#endif

namespace precise_fast {

// ----------------------------------------------------------------------------- kinds

// The ops take a kind's family as the integer of precise_fast/kinds.py (FAMILY_*), the
// one table of kinds. Only the family matters to a step: the kinds of one family differ in
// their std, which arrives per row already computed (noise_std).
enum class Family : int { Ode = 0, EulerMaruyama = 1, CoefficientPreserving = 2 };

inline bool family_of(int64_t number, Family* family) {
  if (number < static_cast<int64_t>(Family::Ode) || number > static_cast<int64_t>(Family::CoefficientPreserving)) {
    return false;
  }
  *family = static_cast<Family>(number);
  return true;
}

// ----------------------------------------------------------------------------- coefficients

// mean = cx * x + cv * v (the mean is affine in x and v with per-row scalars), and the
// Gaussian log-density terms. Computed once per row in double from the float32 step values
// (the per-element math is float32): rounding the coefficients once costs less accuracy
// than evaluating x0_hat / eps_hat per element as the reference does.
struct RowCoefficients {
  float cx;          // d mean / d x
  float cv;          // d mean / d v (J of SAMPLERS.md)
  float sd;          // std
  double inv_var;    // 1 / std^2 (0 for ode: no log-prob)
  double log_norm;   // -log(std) - log(2 pi) / 2 (0 for ode)
};

PF_HD RowCoefficients row_coefficients(Family family, float sigma, float next_sigma, float std_dev) {
  const double s = sigma, sn = next_sigma, sd = std_dev;
  const double dt = sn - s;
  RowCoefficients r;
  double cx, cv;
  if (family == Family::EulerMaruyama) {
    // mean = x + dt v + sd^2 / 2 * (-(x + (1 - s) v) / s)
    cx = 1.0 - 0.5 * sd * sd / s;
    cv = dt - 0.5 * sd * sd * (1.0 - s) / s;
  } else if (family == Family::CoefficientPreserving) {
    // mean = (1 - s') (x - s v) + sqrt(max(s'^2 - sd^2, 0)) (x + (1 - s) v)
    const double c2 = sn * sn - sd * sd;
    const double c = c2 > 0.0 ? sqrt(c2) : 0.0;
    cx = (1.0 - sn) + c;
    cv = -s * (1.0 - sn) + (1.0 - s) * c;
  } else {
    cx = 1.0;
    cv = dt;
  }
  r.cx = static_cast<float>(cx);
  r.cv = static_cast<float>(cv);
  r.sd = std_dev;
  if (family == Family::Ode) {
    r.inv_var = 0.0;
    r.log_norm = 0.0;
  } else {
    r.inv_var = 1.0 / (sd * sd);
    r.log_norm = -log(sd) - 0.91893853320467274178;  // log(2 pi) / 2
  }
  return r;
}

// ----------------------------------------------------------------------------- Philox4x32-10
// Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as easy as 1, 2, 3" (SC 2011).
// Key (k0, k1) = the int64 seed's low and high words; counter
// (group lo, group hi, step lo, step hi) with group = element >> 2.

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;

PF_HD void philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1,
                         uint32_t* out0, uint32_t* out1, uint32_t* out2, uint32_t* out3) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    // The 32x32 -> 64 products are written as plain uint64 multiplies: x86 compilers
    // vectorise them to vpmuludq, nvcc emits mul.hi / mul.lo.
    const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c0;
    const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  *out0 = c0;
  *out1 = c1;
  *out2 = c2;
  *out3 = c3;
}

// A Philox word as the odd integer n = 2 (w >> 9) + 1 in [1, 2^24): the uniform is
// u = n / 2^24, exact in float32, never 0 or 1.
PF_HD uint32_t uniform_numerator(uint32_t word) { return ((word >> 9) << 1) | 1u; }

PF_HD float bits_to_float(uint32_t bits) {
  float f;
  memcpy(&f, &bits, sizeof(f));
  return f;
}

PF_HD uint32_t float_to_bits(float f) {
  uint32_t bits;
  memcpy(&bits, &f, sizeof(bits));
  return bits;
}

// -2 log(n / 2^24) for the odd numerator n, in float32 to about 2 ulp. log is evaluated as
// e ln2 + 2 atanh((m - 1) / (m + 1)) with m in [sqrt(1/2), sqrt(2)): the odd series to s^9
// leaves a truncation error below 1e-9 for |s| <= 0.172 (Cody & Waite style reduction).
PF_HD float minus_two_log_uniform(uint32_t n) {
  const float u = static_cast<float>(n) * 5.9604644775390625e-8f;  // exact: n < 2^24
  const uint32_t bits = float_to_bits(u);
  int32_t e = static_cast<int32_t>(bits >> 23) - 127;  // u >= 2^-24 is normal
  float m = bits_to_float((bits & 0x007FFFFFu) | 0x3F800000u);  // [1, 2)
  const bool big = m > 1.41421356f;
  m = big ? 0.5f * m : m;
  e = big ? e + 1 : e;
  const float f = m - 1.0f;  // exact (Sterbenz)
  const float s = f / (2.0f + f);
  const float s2 = s * s;
  const float poly = s2 * (0.6666666666666666f + s2 * (0.4f + s2 * (0.2857142857142857f + s2 * 0.2222222222222222f)));
  const float log_m = 2.0f * s + s * poly;
  const float ef = static_cast<float>(e);
  // ln 2 split so that e * ln2_hi is exact for |e| <= 25.
  const float log_u = ef * 0.693145751953125f + (ef * 1.4286068202862268e-06f + log_m);
  return -2.0f * log_u;
}

// sin and cos of 2 pi n / 2^24 for the odd numerator n, to about 1 ulp: the quadrant
// q = round(4 n / 2^24) is taken in integers, so the reduced angle f = n / 2^24 - q / 4 in
// [-1/8, 1/8] is exact, and Taylor polynomials on [-pi/4, pi/4] finish (next terms < 2e-9).
PF_HD void sincos_two_pi_uniform(uint32_t n, float* sin_out, float* cos_out) {
  const uint32_t q = (n + (1u << 21)) >> 22;  // n is odd: never a tie
  const int32_t rem = static_cast<int32_t>(n) - static_cast<int32_t>(q << 22);
  const float t = static_cast<float>(rem) * (5.9604644775390625e-8f * 6.28318530717958647692f);
  const float t2 = t * t;
  const float sin_t =
      t + t * t2 * (-0.16666666666666666f + t2 * (0.008333333333333333f + t2 * (-1.984126984126984e-4f + t2 * 2.7557319223985893e-6f)));
  const float cos_t =
      1.0f + t2 * (-0.5f + t2 * (0.041666666666666664f + t2 * (-0.001388888888888889f + t2 * (2.48015873015873e-05f + t2 * -2.755731922398589e-07f))));
  // Rotate by q quarter turns: (sin, cos) of t + q pi / 2.
  const uint32_t quadrant = q & 3u;
  const float s_rot = (quadrant & 1u) ? cos_t : sin_t;
  const float c_rot = (quadrant & 1u) ? sin_t : cos_t;
  *sin_out = (quadrant >= 2u) ? -s_rot : s_rot;
  *cos_out = (quadrant == 1u || quadrant == 2u) ? -c_rot : c_rot;
}

// The four normals of one Philox group (element lanes 0..3): Box-Muller on (w0, w1) and
// (w2, w3).
PF_HD void philox_normals4(uint64_t seed, uint64_t step, uint64_t group, float* z0, float* z1, float* z2, float* z3) {
  uint32_t w0, w1, w2, w3;
  philox4x32_10(static_cast<uint32_t>(group), static_cast<uint32_t>(group >> 32), static_cast<uint32_t>(step),
                static_cast<uint32_t>(step >> 32), static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32), &w0,
                &w1, &w2, &w3);
  const float r01 = sqrtf(minus_two_log_uniform(uniform_numerator(w0)));
  const float r23 = sqrtf(minus_two_log_uniform(uniform_numerator(w2)));
  float s1, c1, s3, c3;
  sincos_two_pi_uniform(uniform_numerator(w1), &s1, &c1);
  sincos_two_pi_uniform(uniform_numerator(w3), &s3, &c3);
  *z0 = r01 * c1;
  *z1 = r01 * s1;
  *z2 = r23 * c3;
  *z3 = r23 * s3;
}

}  // namespace precise_fast
