// CUDA kernels of the fused sampler step (sample, score, score backward, Philox normals).
//
// Grid (blocks of a row, rows); 256 threads per block (__launch_bounds__), each thread owns
// 8 consecutive elements (two Philox groups of 4), so a block covers 2048 elements of one
// row. A thread moves its 8 elements with 16-byte vector loads and stores where the
// address is 16-byte aligned and the 8 are all in the row (float32: two, 16-bit: one),
// and element by element otherwise (row tails, odd row lengths). The element types are
// template parameters: no per-element dtype switch. Per-row sums go to a (B, blocks)
// buffer reduced by a second kernel in a fixed order in double: deterministic (no
// atomics) and capture-safe (no host synchronisation, allocations from the caching
// allocator, step index read from device memory so a CUDA graph replay can advance it).
// The per-row coefficients and the Philox/Box-Muller math are those of
// step_coefficients.h, shared with the CPU kernel.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <cstdint>
#include <type_traits>

#include "fused_step_args.h"
#include "step_coefficients.h"

namespace precise_fast {
namespace {

constexpr int kThreads = 256;
constexpr int kElemsPerThread = 8;  // two Philox groups
constexpr int kElemsPerBlock = kThreads * kElemsPerThread;
constexpr int kFinalizeThreads = 128;

// bfloat16 storage (the bits); float32 <-> bfloat16 by hand, as the CPU kernel and torch.
struct Bf16 {
  uint16_t bits;
};

// Element I/O per storage type: widen to float, and store rounded to nearest even
// returning the stored value widened back (the log-prob uses the sample as stored).
template <typename T>
struct Io;

template <>
struct Io<float> {
  using Bits = uint32_t;
  __device__ static float widen(uint32_t b) { return __uint_as_float(b); }
  __device__ static uint32_t narrow(float v, float* stored) {
    *stored = v;
    return __float_as_uint(v);
  }
};

template <>
struct Io<Bf16> {
  using Bits = uint16_t;
  __device__ static float widen(uint16_t b) { return __uint_as_float(static_cast<uint32_t>(b) << 16); }
  __device__ static uint16_t narrow(float v, float* stored) {
    const uint32_t b = __float_as_uint(v);
    const bool is_nan = (b & 0x7FFFFFFFu) > 0x7F800000u;
    const uint16_t h = static_cast<uint16_t>(is_nan ? ((b >> 16) | 0x40u) : ((b + 0x7FFFu + ((b >> 16) & 1u)) >> 16));
    *stored = widen(h);
    return h;
  }
};

template <>
struct Io<__half> {
  using Bits = uint16_t;
  __device__ static float widen(uint16_t b) { return __half2float(__ushort_as_half(b)); }
  __device__ static uint16_t narrow(float v, float* stored) {
    const __half h = __float2half_rn(v);
    *stored = __half2float(h);
    return __half_as_ushort(h);
  }
};

__device__ __forceinline__ bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// The 8 elements [off, off + n) of a stream, widened (n < 8: the rest are 0).
template <typename T>
__device__ __forceinline__ void load8(const void* base, int64_t off, int n, float out[kElemsPerThread]) {
  using Bits = typename Io<T>::Bits;
  const Bits* p = static_cast<const Bits*>(base) + off;
  if (n == kElemsPerThread && aligned16(p)) {
    if constexpr (sizeof(Bits) == 4) {
      const uint4 a = reinterpret_cast<const uint4*>(p)[0], b = reinterpret_cast<const uint4*>(p)[1];
      const uint32_t w[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
      for (int k = 0; k < 8; ++k) out[k] = Io<T>::widen(w[k]);
    } else {
      const uint4 a = reinterpret_cast<const uint4*>(p)[0];
      const uint32_t w[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
      for (int k = 0; k < 4; ++k) {  // little-endian: element 2k is the low half
        out[2 * k] = Io<T>::widen(static_cast<Bits>(w[k] & 0xFFFFu));
        out[2 * k + 1] = Io<T>::widen(static_cast<Bits>(w[k] >> 16));
      }
    }
    return;
  }
#pragma unroll
  for (int k = 0; k < kElemsPerThread; ++k) out[k] = k < n ? Io<T>::widen(p[k]) : 0.0f;
}

// Stores vals[0, n) rounded to T at base + off, replacing each by the value stored.
template <typename T>
__device__ __forceinline__ void store8(void* base, int64_t off, int n, float vals[kElemsPerThread]) {
  using Bits = typename Io<T>::Bits;
  Bits* p = static_cast<Bits*>(base) + off;
  Bits bits[kElemsPerThread];
#pragma unroll
  for (int k = 0; k < kElemsPerThread; ++k) bits[k] = Io<T>::narrow(vals[k], &vals[k]);
  if (n == kElemsPerThread && aligned16(p)) {
    // __stwb: an explicit 16-byte st.global (a plain uint4 assignment of packed 16-bit
    // values was split into four 4-byte stores by nvcc 13).
    if constexpr (sizeof(Bits) == 4) {
      __stwb(reinterpret_cast<uint4*>(p), make_uint4(bits[0], bits[1], bits[2], bits[3]));
      __stwb(reinterpret_cast<uint4*>(p) + 1, make_uint4(bits[4], bits[5], bits[6], bits[7]));
    } else {
      uint32_t w[4];
#pragma unroll
      for (int k = 0; k < 4; ++k) w[k] = static_cast<uint32_t>(bits[2 * k]) | (static_cast<uint32_t>(bits[2 * k + 1]) << 16);
      __stwb(reinterpret_cast<uint4*>(p), make_uint4(w[0], w[1], w[2], w[3]));
    }
    return;
  }
#pragma unroll
  for (int k = 0; k < kElemsPerThread; ++k) {
    if (k < n) p[k] = bits[k];
  }
}

__device__ __forceinline__ RowCoefficients load_row(Family family, const float* sigma, const float* next_sigma,
                                                    const float* std_dev, int64_t row) {
  return row_coefficients(family, sigma[row], next_sigma[row], std_dev[row]);
}

// Block-wide sum of one float per thread; thread 0 gets the result.
__device__ __forceinline__ float block_sum(float value, float* shared) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_down_sync(0xFFFFFFFFu, value, offset);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) shared[warp] = value;
  __syncthreads();
  float total = 0.0f;
  if (threadIdx.x == 0) {
    for (int w = 0; w < kThreads / 32; ++w) total += shared[w];
  }
  __syncthreads();
  return total;
}

// Where a thread's 8 elements start in its row, and how many of them the row has.
struct ThreadSpan {
  int64_t first;  // element index within the row (a multiple of 8)
  int n;          // 0..8
};

__device__ __forceinline__ ThreadSpan thread_span(int64_t row_elems) {
  ThreadSpan t;
  t.first = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) * kElemsPerThread;
  const int64_t left = row_elems - t.first;
  t.n = left <= 0 ? 0 : (left >= kElemsPerThread ? kElemsPerThread : static_cast<int>(left));
  return t;
}

// XT: x and prev_sample; IT: v and noise (XT, or float when the inputs' types differ).
template <typename XT, typename IT>
__global__ void __launch_bounds__(kThreads) sample_kernel(
    Family family, int64_t row_elems, const float* sigma, const float* next_sigma, const float* std_dev,
    const void* x, const void* v, const void* noise, const int64_t* seeds, const int64_t* steps, void* prev,
    float* mean_out, float* partial, int64_t n_blocks) {
  __shared__ float shared[kThreads / 32];
  const int64_t row = blockIdx.y;
  const RowCoefficients rc = load_row(family, sigma, next_sigma, std_dev, row);
  const ThreadSpan span = thread_span(row_elems);
  float sum = 0.0f;
  if (span.n > 0) {
    const int64_t off = row * row_elems + span.first;
    float xs[kElemsPerThread], vs[kElemsPerThread], z[kElemsPerThread], mean[kElemsPerThread];
    load8<XT>(x, off, span.n, xs);
    load8<IT>(v, off, span.n, vs);
#pragma unroll
    for (int k = 0; k < kElemsPerThread; ++k) mean[k] = rc.cx * xs[k] + rc.cv * vs[k];
    if (mean_out != nullptr) store8<float>(mean_out, off, span.n, mean);
    if (family == Family::Ode) {
      store8<XT>(prev, off, span.n, mean);
    } else {
      if (noise != nullptr) {
        load8<IT>(noise, off, span.n, z);
      } else {
        const uint64_t group = static_cast<uint64_t>(span.first) >> 2;
        philox_normals4(static_cast<uint64_t>(seeds[row]), static_cast<uint64_t>(steps[row]), group, &z[0], &z[1],
                        &z[2], &z[3]);
        philox_normals4(static_cast<uint64_t>(seeds[row]), static_cast<uint64_t>(steps[row]), group + 1, &z[4], &z[5],
                        &z[6], &z[7]);
      }
      float p[kElemsPerThread];
#pragma unroll
      for (int k = 0; k < kElemsPerThread; ++k) p[k] = mean[k] + rc.sd * z[k];
      // The log-prob of the sample as stored: rounded to x's type first.
      store8<XT>(prev, off, span.n, p);
#pragma unroll
      for (int k = 0; k < kElemsPerThread; ++k) {
        const float d = k < span.n ? p[k] - mean[k] : 0.0f;
        sum += d * d;
      }
    }
  }
  const float total = block_sum(sum, shared);
  if (threadIdx.x == 0) partial[row * n_blocks + blockIdx.x] = total;
}

// T: x, v and prev_sample (their common type, or float when they differ); OT: old_mean
// (T, or float: the rollout keeps its means in float32 next to bfloat16 latents).
template <typename T, typename OT>
__global__ void __launch_bounds__(kThreads) score_kernel(
    Family family, int64_t row_elems, const float* sigma, const float* next_sigma, const float* std_dev,
    const void* x, const void* v, const void* prev, const void* old_mean, float* mean_out, float* partial,
    float* bias_partial, int64_t n_blocks) {
  __shared__ float shared[kThreads / 32];
  const int64_t row = blockIdx.y;
  const RowCoefficients rc = load_row(family, sigma, next_sigma, std_dev, row);
  const ThreadSpan span = thread_span(row_elems);
  float sum = 0.0f, sum_b = 0.0f;
  if (span.n > 0) {
    const int64_t off = row * row_elems + span.first;
    float xs[kElemsPerThread], vs[kElemsPerThread], mean[kElemsPerThread], other[kElemsPerThread];
    load8<T>(x, off, span.n, xs);
    load8<T>(v, off, span.n, vs);
#pragma unroll
    for (int k = 0; k < kElemsPerThread; ++k) mean[k] = rc.cx * xs[k] + rc.cv * vs[k];
    if (family != Family::Ode) {
      load8<T>(prev, off, span.n, other);
#pragma unroll
      for (int k = 0; k < kElemsPerThread; ++k) {
        const float d = k < span.n ? other[k] - mean[k] : 0.0f;
        sum += d * d;
      }
    }
    if (old_mean != nullptr) {
      load8<OT>(old_mean, off, span.n, other);
#pragma unroll
      for (int k = 0; k < kElemsPerThread; ++k) {
        const float e = k < span.n ? mean[k] - other[k] : 0.0f;
        sum_b += e * e;
      }
    }
    if (mean_out != nullptr) store8<float>(mean_out, off, span.n, mean);
  }
  const float total = block_sum(sum, shared);
  if (threadIdx.x == 0) partial[row * n_blocks + blockIdx.x] = total;
  if (old_mean != nullptr) {
    const float total_b = block_sum(sum_b, shared);
    if (threadIdx.x == 0) bias_partial[row * n_blocks + blockIdx.x] = total_b;
  }
}

// Per row: log_prob = -sum / (2 std^2 M) + log_norm; bias = sum_b / M (double, fixed order).
__global__ void __launch_bounds__(kFinalizeThreads) finalize_kernel(
    Family family, int64_t row_elems, const float* sigma, const float* next_sigma, const float* std_dev,
    const float* partial, const float* bias_partial, int64_t n_blocks, float* log_prob, float* bias) {
  __shared__ double shared[2][kFinalizeThreads];
  const int64_t row = blockIdx.x;
  double sum = 0.0, sum_b = 0.0;
  for (int64_t j = threadIdx.x; j < n_blocks; j += kFinalizeThreads) {
    sum += partial[row * n_blocks + j];
    if (bias != nullptr) sum_b += bias_partial[row * n_blocks + j];
  }
  shared[0][threadIdx.x] = sum;
  shared[1][threadIdx.x] = sum_b;
  __syncthreads();
  for (int stride = kFinalizeThreads / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) {
      shared[0][threadIdx.x] += shared[0][threadIdx.x + stride];
      shared[1][threadIdx.x] += shared[1][threadIdx.x + stride];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const RowCoefficients rc = load_row(family, sigma, next_sigma, std_dev, row);
    const double inv_m = 1.0 / static_cast<double>(row_elems);
    log_prob[row] = family == Family::Ode ? 0.0f : static_cast<float>(-0.5 * rc.inv_var * shared[0][0] * inv_m + rc.log_norm);
    if (bias != nullptr) bias[row] = static_cast<float>(shared[1][0] * inv_m);
  }
}

// T: x, v, prev_sample and grad_v, grad_x (their common type, or float when they differ:
// the launcher then rounds the float gradients to each type); OT: old_mean and grad_old.
template <typename T, typename OT>
__global__ void __launch_bounds__(kThreads) backward_kernel(
    Family family, int64_t row_elems, const float* sigma, const float* next_sigma, const float* std_dev,
    const float* grad_log_prob, const float* grad_bias, const float* grad_mean, const void* x, const void* v,
    const void* prev, const void* old_mean, void* grad_v, void* grad_x, void* grad_old) {
  const int64_t row = blockIdx.y;
  const RowCoefficients rc = load_row(family, sigma, next_sigma, std_dev, row);
  const ThreadSpan span = thread_span(row_elems);
  if (span.n == 0) return;
  const double inv_m = 1.0 / static_cast<double>(row_elems);
  const float a_lp = family == Family::Ode ? 0.0f : static_cast<float>(grad_log_prob[row] * rc.inv_var * inv_m);
  const float a_b = grad_bias != nullptr ? static_cast<float>(2.0 * grad_bias[row] * inv_m) : 0.0f;
  const int64_t off = row * row_elems + span.first;
  float xs[kElemsPerThread], vs[kElemsPerThread], other[kElemsPerThread], g[kElemsPerThread];
  load8<T>(x, off, span.n, xs);
  load8<T>(v, off, span.n, vs);
  float mean[kElemsPerThread];
#pragma unroll
  for (int k = 0; k < kElemsPerThread; ++k) mean[k] = rc.cx * xs[k] + rc.cv * vs[k];
  if (family == Family::Ode) {
#pragma unroll
    for (int k = 0; k < kElemsPerThread; ++k) g[k] = 0.0f;
  } else {
    load8<T>(prev, off, span.n, other);
#pragma unroll
    for (int k = 0; k < kElemsPerThread; ++k) g[k] = a_lp * (other[k] - mean[k]);
  }
  if (grad_bias != nullptr) {
    load8<OT>(old_mean, off, span.n, other);
    float minus_db[kElemsPerThread];
#pragma unroll
    for (int k = 0; k < kElemsPerThread; ++k) {
      const float db = a_b * (mean[k] - other[k]);
      g[k] += db;
      minus_db[k] = -db;
    }
    if (grad_old != nullptr) store8<OT>(grad_old, off, span.n, minus_db);
  }
  if (grad_mean != nullptr) {
    load8<float>(grad_mean, off, span.n, other);
#pragma unroll
    for (int k = 0; k < kElemsPerThread; ++k) g[k] += other[k];
  }
  if (grad_x != nullptr) {
    float gx[kElemsPerThread];
#pragma unroll
    for (int k = 0; k < kElemsPerThread; ++k) gx[k] = rc.cx * g[k];
    store8<T>(grad_x, off, span.n, gx);
  }
#pragma unroll
  for (int k = 0; k < kElemsPerThread; ++k) g[k] *= rc.cv;
  store8<T>(grad_v, off, span.n, g);
}

__global__ void __launch_bounds__(kThreads) normals_kernel(const int64_t* seeds, const int64_t* steps, float* out,
                                                           int64_t row_elems) {
  const int64_t row = blockIdx.y;
  const ThreadSpan span = thread_span(row_elems);
  if (span.n == 0) return;
  float z[kElemsPerThread];
  const uint64_t group = static_cast<uint64_t>(span.first) >> 2;
  philox_normals4(static_cast<uint64_t>(seeds[row]), static_cast<uint64_t>(steps[row]), group, &z[0], &z[1], &z[2],
                  &z[3]);
  philox_normals4(static_cast<uint64_t>(seeds[row]), static_cast<uint64_t>(steps[row]), group + 1, &z[4], &z[5], &z[6],
                  &z[7]);
  store8<float>(out, row * row_elems + span.first, span.n, z);
}

// ----------------------------------------------------------------------------- launchers

void check_launch() {
  const cudaError_t err = cudaGetLastError();
  TORCH_CHECK(err == cudaSuccess, "precise_fast CUDA kernel launch failed: ", cudaGetErrorString(err));
}

int64_t blocks_per_row(int64_t row_elems) { return (row_elems + kElemsPerBlock - 1) / kElemsPerBlock; }

void check_cuda(const at::Tensor& x) {
  TORCH_CHECK(x.is_cuda(), "the CUDA kernel got tensors on ", x.device());
  TORCH_CHECK_VALUE(x.size(0) <= kMaxGridRows, "the CUDA kernels take at most ", kMaxGridRows, " rows, got ",
                    x.size(0));
}

// Calls f(tag) with a null T* for the storage type T of a float32 / bfloat16 / float16 tensor.
template <typename F>
void with_elem(at::ScalarType type, F&& f) {
  switch (type) {
    case at::kFloat:
      f(static_cast<float*>(nullptr));
      break;
    case at::kBFloat16:
      f(static_cast<Bf16*>(nullptr));
      break;
    case at::kHalf:
      f(static_cast<__half*>(nullptr));
      break;
    default:
      TORCH_CHECK(false, "precise_fast CUDA kernels: unsupported element type ", type);
  }
}

template <typename Tag>
using ElemOf = std::remove_pointer_t<Tag>;

// t in `type` (or undefined): a copy only when it differs. Widening bfloat16 / float16 to
// float32 is exact, so a mixed-type call computes what the per-type kernels would.
at::Tensor as_type(const at::Tensor& t, at::ScalarType type) {
  return (!t.defined() || t.scalar_type() == type) ? t : t.to(type).contiguous();
}

// The sample pass into given buffers (checked by the callers): prev in x's type, log_prob
// (B,) float32, mean float32 or undefined.
void sample_into(const StepViews& s, const at::Tensor& prev, const at::Tensor& log_prob, const at::Tensor& mean) {
  const at::ScalarType xt = s.x.scalar_type();
  const bool uniform = s.v.scalar_type() == xt && (!s.noise.defined() || s.noise.scalar_type() == xt);
  const at::ScalarType it = uniform ? xt : at::kFloat;
  const at::Tensor v = as_type(s.v, it), noise = as_type(s.noise, it);
  const int64_t n_blocks = blocks_per_row(s.row_elems);
  at::Tensor partial = at::empty({s.batch, n_blocks}, s.x.options().dtype(at::kFloat));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned>(n_blocks), static_cast<unsigned>(s.batch));
  with_elem(xt, [&](auto x_tag) {
    using XT = ElemOf<decltype(x_tag)>;
    auto launch = [&](auto in_tag) {
      using IT = ElemOf<decltype(in_tag)>;
      sample_kernel<XT, IT><<<grid, kThreads, 0, stream>>>(
          s.family, s.row_elems, s.sigma.data_ptr<float>(), s.next_sigma.data_ptr<float>(),
          s.std_dev.data_ptr<float>(), s.x.data_ptr(), v.data_ptr(), noise.defined() ? noise.data_ptr() : nullptr,
          s.seeds.defined() ? s.seeds.data_ptr<int64_t>() : nullptr,
          s.step_index.defined() ? s.step_index.data_ptr<int64_t>() : nullptr, prev.data_ptr(),
          mean.defined() ? mean.data_ptr<float>() : nullptr, partial.data_ptr<float>(), n_blocks);
    };
    if (uniform) {
      launch(static_cast<XT*>(nullptr));
    } else {
      launch(static_cast<float*>(nullptr));
    }
  });
  check_launch();
  finalize_kernel<<<static_cast<unsigned>(s.batch), kFinalizeThreads, 0, stream>>>(
      s.family, s.row_elems, s.sigma.data_ptr<float>(), s.next_sigma.data_ptr<float>(), s.std_dev.data_ptr<float>(),
      partial.data_ptr<float>(), nullptr, n_blocks, log_prob.data_ptr<float>(), nullptr);
  check_launch();
}

// The storage types of a score / backward pass: T for x, v, prev_sample (their common type,
// else float), OT for old_mean (T or float; else old_mean is widened to float).
struct ScoreTypes {
  at::ScalarType t, ot;
  at::Tensor x, v, prev, old_mean;
};

ScoreTypes score_types(const StepViews& s) {
  ScoreTypes r;
  const at::ScalarType xt = s.x.scalar_type();
  r.t = (s.v.scalar_type() == xt && s.prev.scalar_type() == xt) ? xt : at::kFloat;
  r.ot = (!s.old_mean.defined() || s.old_mean.scalar_type() == r.t) ? r.t : at::kFloat;
  r.x = as_type(s.x, r.t);
  r.v = as_type(s.v, r.t);
  r.prev = as_type(s.prev, r.t);
  r.old_mean = as_type(s.old_mean, r.ot);
  return r;
}

// Calls f(T tag, OT tag) for the pair of storage types (OT is T or float).
template <typename F>
void with_score_types(const ScoreTypes& st, F&& f) {
  with_elem(st.t, [&](auto t_tag) {
    using T = ElemOf<decltype(t_tag)>;
    if (st.ot == st.t) {
      f(t_tag, static_cast<T*>(nullptr));
    } else {
      f(t_tag, static_cast<float*>(nullptr));
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sample_step_cuda(
    const at::Tensor& x, const at::Tensor& v, const at::Tensor& sigma, const at::Tensor& next_sigma,
    const at::Tensor& std_dev, const c10::optional<at::Tensor>& seeds, const c10::optional<at::Tensor>& step_index,
    const c10::optional<at::Tensor>& noise, int64_t family, bool return_mean) {
  check_cuda(x);
  const c10::cuda::CUDAGuard guard(x.device());
  const StepViews s = sample_views(x, v, sigma, next_sigma, std_dev, seeds, step_index, noise, family);
  at::Tensor prev = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor mean = at::empty(return_mean ? x.sizes() : at::IntArrayRef{0}, x.options().dtype(at::kFloat));
  at::Tensor log_prob = at::empty({s.batch}, x.options().dtype(at::kFloat));
  sample_into(s, prev, log_prob, return_mean ? mean : at::Tensor());
  return {prev, log_prob, mean};
}

void sample_step_out_cuda(const at::Tensor& x, const at::Tensor& v, const at::Tensor& sigma,
                          const at::Tensor& next_sigma, const at::Tensor& std_dev,
                          const c10::optional<at::Tensor>& seeds, const c10::optional<at::Tensor>& step_index,
                          const c10::optional<at::Tensor>& noise, int64_t family, const at::Tensor& prev,
                          const at::Tensor& log_prob, const c10::optional<at::Tensor>& mean) {
  check_cuda(x);
  const c10::cuda::CUDAGuard guard(x.device());
  const StepViews s = sample_views(x, v, sigma, next_sigma, std_dev, seeds, step_index, noise, family);
  check_sample_out(x, prev, log_prob, mean);
  sample_into(s, prev, log_prob, mean.has_value() ? *mean : at::Tensor());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> score_step_cuda(
    const at::Tensor& x, const at::Tensor& v, const at::Tensor& prev_sample, const at::Tensor& sigma,
    const at::Tensor& next_sigma, const at::Tensor& std_dev, const c10::optional<at::Tensor>& old_mean,
    int64_t family, bool return_mean) {
  check_cuda(x);
  const c10::cuda::CUDAGuard guard(x.device());
  const StepViews s = score_views(x, v, prev_sample, sigma, next_sigma, std_dev, old_mean, family);
  const bool with_bias = s.old_mean.defined();
  const ScoreTypes st = score_types(s);
  at::Tensor mean = at::empty(return_mean ? x.sizes() : at::IntArrayRef{0}, x.options().dtype(at::kFloat));
  at::Tensor log_prob = at::empty({s.batch}, x.options().dtype(at::kFloat));
  at::Tensor bias = at::empty({with_bias ? s.batch : 0}, x.options().dtype(at::kFloat));
  const int64_t n_blocks = blocks_per_row(s.row_elems);
  at::Tensor partial = at::empty({s.batch, n_blocks}, x.options().dtype(at::kFloat));
  at::Tensor bias_partial = at::empty({with_bias ? s.batch * n_blocks : 1}, x.options().dtype(at::kFloat));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned>(n_blocks), static_cast<unsigned>(s.batch));
  with_score_types(st, [&](auto t_tag, auto ot_tag) {
    using T = ElemOf<decltype(t_tag)>;
    using OT = ElemOf<decltype(ot_tag)>;
    score_kernel<T, OT><<<grid, kThreads, 0, stream>>>(
        s.family, s.row_elems, s.sigma.data_ptr<float>(), s.next_sigma.data_ptr<float>(), s.std_dev.data_ptr<float>(),
        st.x.data_ptr(), st.v.data_ptr(), st.prev.data_ptr(), with_bias ? st.old_mean.data_ptr() : nullptr,
        return_mean ? mean.data_ptr<float>() : nullptr, partial.data_ptr<float>(), bias_partial.data_ptr<float>(),
        n_blocks);
  });
  check_launch();
  finalize_kernel<<<static_cast<unsigned>(s.batch), kFinalizeThreads, 0, stream>>>(
      s.family, s.row_elems, s.sigma.data_ptr<float>(), s.next_sigma.data_ptr<float>(), s.std_dev.data_ptr<float>(),
      partial.data_ptr<float>(), bias_partial.data_ptr<float>(), n_blocks, log_prob.data_ptr<float>(),
      with_bias ? bias.data_ptr<float>() : nullptr);
  check_launch();
  return {log_prob, mean, bias};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> score_step_backward_cuda(
    const at::Tensor& grad_log_prob, const c10::optional<at::Tensor>& grad_mean,
    const c10::optional<at::Tensor>& grad_guard_bias, const at::Tensor& x, const at::Tensor& v,
    const at::Tensor& prev_sample, const at::Tensor& sigma, const at::Tensor& next_sigma, const at::Tensor& std_dev,
    const c10::optional<at::Tensor>& old_mean, int64_t family, bool need_grad_x, bool need_grad_old_mean) {
  check_cuda(x);
  const c10::cuda::CUDAGuard guard(x.device());
  const StepViews s = score_views(x, v, prev_sample, sigma, next_sigma, std_dev, old_mean, family);
  const BackwardGrads g = backward_grads(x, s, grad_log_prob, grad_mean, grad_guard_bias, need_grad_old_mean);
  const bool bias_grad = g.bias_grad, old_grad = g.old_grad;
  const ScoreTypes st = score_types(s);
  // Gradients in the kernel's storage types; rounded to each tensor's own type afterwards
  // when that differs (round to nearest even either way, so the values are the same).
  const auto like = [](const at::Tensor& t, at::ScalarType type) {
    return at::empty(t.sizes(), t.options().dtype(type).memory_format(at::MemoryFormat::Contiguous));
  };
  at::Tensor grad_v = like(v, st.t);
  at::Tensor grad_x = need_grad_x ? like(x, st.t) : at::empty({0}, x.options());
  at::Tensor grad_old;
  if (old_grad) {
    // Without a bias gradient nothing reaches old_mean: its gradient is zero.
    grad_old = bias_grad ? like(s.old_mean, st.ot) : at::zeros(s.old_mean.sizes(), s.old_mean.options());
  } else {
    grad_old = at::empty({0}, x.options().dtype(at::kFloat));
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned>(blocks_per_row(s.row_elems)), static_cast<unsigned>(s.batch));
  with_score_types(st, [&](auto t_tag, auto ot_tag) {
    using T = ElemOf<decltype(t_tag)>;
    using OT = ElemOf<decltype(ot_tag)>;
    backward_kernel<T, OT><<<grid, kThreads, 0, stream>>>(
        s.family, s.row_elems, s.sigma.data_ptr<float>(), s.next_sigma.data_ptr<float>(), s.std_dev.data_ptr<float>(),
        g.log_prob.data_ptr<float>(), bias_grad ? g.bias.data_ptr<float>() : nullptr,
        g.mean.defined() ? g.mean.data_ptr<float>() : nullptr, st.x.data_ptr(), st.v.data_ptr(), st.prev.data_ptr(),
        bias_grad ? st.old_mean.data_ptr() : nullptr, grad_v.data_ptr(), need_grad_x ? grad_x.data_ptr() : nullptr,
        (old_grad && bias_grad) ? grad_old.data_ptr() : nullptr);
  });
  check_launch();
  if (grad_v.scalar_type() != v.scalar_type()) grad_v = grad_v.to(v.scalar_type());
  if (need_grad_x && grad_x.scalar_type() != x.scalar_type()) grad_x = grad_x.to(x.scalar_type());
  if (old_grad && grad_old.scalar_type() != s.old_mean.scalar_type()) grad_old = grad_old.to(s.old_mean.scalar_type());
  return {grad_v, grad_x, grad_old};
}

at::Tensor philox_normal_cuda(const at::Tensor& seeds, const at::Tensor& step_index, int64_t row_elems) {
  check_cuda(seeds);
  TORCH_CHECK_VALUE(seeds.dim() == 1 && seeds.size(0) > 0, "seeds must have shape (B,), got ", seeds.sizes());
  TORCH_CHECK_VALUE(row_elems > 0, "row_elems must be positive, got ", row_elems);
  const c10::cuda::CUDAGuard guard(seeds.device());
  const at::Tensor s = row_integers(seeds, seeds, "seeds");
  const at::Tensor st = row_integers(seeds, step_index, "step_index");
  at::Tensor out = at::empty({seeds.size(0), row_elems}, seeds.options().dtype(at::kFloat));
  const dim3 grid(static_cast<unsigned>(blocks_per_row(row_elems)), static_cast<unsigned>(seeds.size(0)));
  normals_kernel<<<grid, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(s.data_ptr<int64_t>(), st.data_ptr<int64_t>(),
                                                                           out.data_ptr<float>(), row_elems);
  check_launch();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(precise_fast, CUDA, m) {
  m.impl("sample_step", &sample_step_cuda);
  m.impl("sample_step_out", &sample_step_out_cuda);
  m.impl("score_step", &score_step_cuda);
  m.impl("score_step_backward", &score_step_backward_cuda);
  m.impl("philox_normal", &philox_normal_cuda);
}

}  // namespace precise_fast
