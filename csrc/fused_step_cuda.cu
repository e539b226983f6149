// CUDA kernels of the fused sampler step (sample, score, score backward, Philox normals).
//
// Grid (blocks of a row, rows); 256 threads per block, each thread owns one Philox group of
// 4 consecutive elements, so a block covers 1024 elements of one row. Per-row sums go to a
// (B, blocks) buffer reduced by a second kernel in a fixed order in double: deterministic
// (no atomics) and capture-safe (no host synchronisation, allocations from the caching
// allocator, step index read from device memory so a CUDA graph replay can advance it).
// The per-row coefficients and the Philox/Box-Muller math are those of
// step_coefficients.h, shared with the CPU kernel.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include "fused_step_args.h"
#include "step_coefficients.h"

namespace precise_fast {
namespace {

constexpr int kThreads = 256;
constexpr int kElemsPerThread = 4;  // one Philox group
constexpr int kElemsPerBlock = kThreads * kElemsPerThread;
constexpr int kFinalizeThreads = 128;

__device__ __forceinline__ float load_as_float(const void* p, Elem e, int64_t i) {
  if (e == Elem::F32) return static_cast<const float*>(p)[i];
  if (e == Elem::BF16) return __uint_as_float(static_cast<uint32_t>(static_cast<const uint16_t*>(p)[i]) << 16);
  return __half2float(static_cast<const __half*>(p)[i]);
}

// Stores v in e's type (round to nearest even; bfloat16 by hand, as the CPU kernel and
// torch do) and returns the stored value widened back to float.
__device__ __forceinline__ float store_rounded(void* p, Elem e, int64_t i, float v) {
  if (e == Elem::F32) {
    static_cast<float*>(p)[i] = v;
    return v;
  }
  if (e == Elem::BF16) {
    const uint32_t b = __float_as_uint(v);
    const bool is_nan = (b & 0x7FFFFFFFu) > 0x7F800000u;
    const uint16_t h = static_cast<uint16_t>(is_nan ? ((b >> 16) | 0x40u) : ((b + 0x7FFFu + ((b >> 16) & 1u)) >> 16));
    static_cast<uint16_t*>(p)[i] = h;
    return __uint_as_float(static_cast<uint32_t>(h) << 16);
  }
  const __half h = __float2half_rn(v);
  static_cast<__half*>(p)[i] = h;
  return __half2float(h);
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

__global__ void sample_kernel(Family family, int64_t row_elems, const float* sigma, const float* next_sigma,
                              const float* std_dev, const void* x, Elem x_elem, const void* v, Elem v_elem,
                              const void* noise, Elem noise_elem, const int64_t* seeds, const int64_t* steps,
                              void* prev, float* mean_out, float* partial, int64_t n_blocks) {
  __shared__ float shared[kThreads / 32];
  const int64_t row = blockIdx.y;
  const RowCoefficients rc = load_row(family, sigma, next_sigma, std_dev, row);
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kElemsPerBlock + threadIdx.x * kElemsPerThread;
  float z[kElemsPerThread] = {0.0f, 0.0f, 0.0f, 0.0f};
  if (family != Family::Ode && noise == nullptr && first < row_elems) {
    philox_normals4(static_cast<uint64_t>(seeds[row]), static_cast<uint64_t>(steps[row]),
                    static_cast<uint64_t>(first) >> 2, &z[0], &z[1], &z[2], &z[3]);
  }
  float sum = 0.0f;
#pragma unroll
  for (int k = 0; k < kElemsPerThread; ++k) {
    const int64_t idx = first + k;
    if (idx >= row_elems) break;
    const int64_t off = row * row_elems + idx;
    const float mean = rc.cx * load_as_float(x, x_elem, off) + rc.cv * load_as_float(v, v_elem, off);
    if (mean_out != nullptr) mean_out[off] = mean;
    if (family == Family::Ode) {
      store_rounded(prev, x_elem, off, mean);
      continue;
    }
    const float zk = noise != nullptr ? load_as_float(noise, noise_elem, off) : z[k];
    // The log-prob of the sample as stored: rounded to x's type first.
    const float d = store_rounded(prev, x_elem, off, mean + rc.sd * zk) - mean;
    sum += d * d;
  }
  const float total = block_sum(sum, shared);
  if (threadIdx.x == 0) partial[row * n_blocks + blockIdx.x] = total;
}

__global__ void score_kernel(Family family, int64_t row_elems, const float* sigma, const float* next_sigma,
                             const float* std_dev, const void* x, Elem x_elem, const void* v, Elem v_elem,
                             const void* prev, Elem prev_elem, const void* old_mean, Elem old_elem, float* mean_out,
                             float* partial, float* bias_partial, int64_t n_blocks) {
  __shared__ float shared[kThreads / 32];
  const int64_t row = blockIdx.y;
  const RowCoefficients rc = load_row(family, sigma, next_sigma, std_dev, row);
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kElemsPerBlock + threadIdx.x * kElemsPerThread;
  float sum = 0.0f, sum_b = 0.0f;
#pragma unroll
  for (int k = 0; k < kElemsPerThread; ++k) {
    const int64_t idx = first + k;
    if (idx >= row_elems) break;
    const int64_t off = row * row_elems + idx;
    const float mean = rc.cx * load_as_float(x, x_elem, off) + rc.cv * load_as_float(v, v_elem, off);
    if (mean_out != nullptr) mean_out[off] = mean;
    if (family != Family::Ode) {
      const float d = load_as_float(prev, prev_elem, off) - mean;
      sum += d * d;
    }
    if (old_mean != nullptr) {
      const float e = mean - load_as_float(old_mean, old_elem, off);
      sum_b += e * e;
    }
  }
  const float total = block_sum(sum, shared);
  if (threadIdx.x == 0) partial[row * n_blocks + blockIdx.x] = total;
  if (old_mean != nullptr) {
    const float total_b = block_sum(sum_b, shared);
    if (threadIdx.x == 0) bias_partial[row * n_blocks + blockIdx.x] = total_b;
  }
}

// Per row: log_prob = -sum / (2 std^2 M) + log_norm; bias = sum_b / M (double, fixed order).
__global__ void finalize_kernel(Family family, int64_t row_elems, const float* sigma, const float* next_sigma,
                                const float* std_dev, const float* partial, const float* bias_partial,
                                int64_t n_blocks, float* log_prob, float* bias) {
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

__global__ void backward_kernel(Family family, int64_t row_elems, const float* sigma, const float* next_sigma,
                                const float* std_dev, const float* grad_log_prob, const float* grad_bias,
                                const float* grad_mean, const void* x, Elem x_elem, const void* v, Elem v_elem,
                                const void* prev, Elem prev_elem, const void* old_mean, Elem old_elem, void* grad_v,
                                void* grad_x, void* grad_old) {
  const int64_t row = blockIdx.y;
  const RowCoefficients rc = load_row(family, sigma, next_sigma, std_dev, row);
  const double inv_m = 1.0 / static_cast<double>(row_elems);
  const float a_lp = family == Family::Ode ? 0.0f : static_cast<float>(grad_log_prob[row] * rc.inv_var * inv_m);
  const float a_b = grad_bias != nullptr ? static_cast<float>(2.0 * grad_bias[row] * inv_m) : 0.0f;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kElemsPerBlock + threadIdx.x * kElemsPerThread;
#pragma unroll
  for (int k = 0; k < kElemsPerThread; ++k) {
    const int64_t idx = first + k;
    if (idx >= row_elems) break;
    const int64_t off = row * row_elems + idx;
    const float mean = rc.cx * load_as_float(x, x_elem, off) + rc.cv * load_as_float(v, v_elem, off);
    float g = family == Family::Ode ? 0.0f : a_lp * (load_as_float(prev, prev_elem, off) - mean);
    if (grad_bias != nullptr) {
      const float db = a_b * (mean - load_as_float(old_mean, old_elem, off));
      g += db;
      if (grad_old != nullptr) store_rounded(grad_old, old_elem, off, -db);
    }
    if (grad_mean != nullptr) g += grad_mean[off];
    if (grad_x != nullptr) store_rounded(grad_x, x_elem, off, rc.cx * g);
    store_rounded(grad_v, v_elem, off, rc.cv * g);
  }
}

__global__ void normals_kernel(const int64_t* seeds, const int64_t* steps, float* out, int64_t row_elems) {
  const int64_t row = blockIdx.y;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kElemsPerBlock + threadIdx.x * kElemsPerThread;
  if (first >= row_elems) return;
  float z[kElemsPerThread];
  philox_normals4(static_cast<uint64_t>(seeds[row]), static_cast<uint64_t>(steps[row]), static_cast<uint64_t>(first) >> 2,
                  &z[0], &z[1], &z[2], &z[3]);
#pragma unroll
  for (int k = 0; k < kElemsPerThread; ++k) {
    if (first + k < row_elems) out[row * row_elems + first + k] = z[k];
  }
}

// ----------------------------------------------------------------------------- launchers

void check_launch() {
  const cudaError_t err = cudaGetLastError();
  TORCH_CHECK(err == cudaSuccess, "precise_fast CUDA kernel launch failed: ", cudaGetErrorString(err));
}

int64_t blocks_per_row(int64_t row_elems) { return (row_elems + kElemsPerBlock - 1) / kElemsPerBlock; }

void check_cuda(const at::Tensor& x) {
  TORCH_CHECK(x.is_cuda(), "the CUDA kernel got tensors on ", x.device());
  TORCH_CHECK_VALUE(x.size(0) <= 65535, "the CUDA kernels take at most 65535 rows, got ", x.size(0));
}

// The sample pass into given buffers (checked by the callers): prev in x's type, log_prob
// (B,) float32, mean float32 or undefined.
void sample_into(const StepViews& s, const at::Tensor& prev, const at::Tensor& log_prob, const at::Tensor& mean) {
  const int64_t n_blocks = blocks_per_row(s.row_elems);
  at::Tensor partial = at::empty({s.batch, n_blocks}, s.x.options().dtype(at::kFloat));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned>(n_blocks), static_cast<unsigned>(s.batch));
  sample_kernel<<<grid, kThreads, 0, stream>>>(
      s.family, s.row_elems, s.sigma.data_ptr<float>(), s.next_sigma.data_ptr<float>(), s.std_dev.data_ptr<float>(),
      s.x.data_ptr(), elem_of(s.x, "x"), s.v.data_ptr(), elem_of(s.v, "v"),
      s.noise.defined() ? s.noise.data_ptr() : nullptr, s.noise.defined() ? elem_of(s.noise, "noise") : Elem::F32,
      s.seeds.defined() ? s.seeds.data_ptr<int64_t>() : nullptr,
      s.step_index.defined() ? s.step_index.data_ptr<int64_t>() : nullptr, prev.data_ptr(),
      mean.defined() ? mean.data_ptr<float>() : nullptr, partial.data_ptr<float>(), n_blocks);
  check_launch();
  finalize_kernel<<<static_cast<unsigned>(s.batch), kFinalizeThreads, 0, stream>>>(
      s.family, s.row_elems, s.sigma.data_ptr<float>(), s.next_sigma.data_ptr<float>(), s.std_dev.data_ptr<float>(),
      partial.data_ptr<float>(), nullptr, n_blocks, log_prob.data_ptr<float>(), nullptr);
  check_launch();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sample_step_cuda(
    const at::Tensor& x, const at::Tensor& v, const at::Tensor& sigma, const at::Tensor& next_sigma,
    const at::Tensor& std_dev, const c10::optional<at::Tensor>& seeds, const c10::optional<at::Tensor>& step_index,
    const c10::optional<at::Tensor>& noise, c10::string_view kind, bool return_mean) {
  check_cuda(x);
  const c10::cuda::CUDAGuard guard(x.device());
  const StepViews s = sample_views(x, v, sigma, next_sigma, std_dev, seeds, step_index, noise, std::string(kind));
  at::Tensor prev = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor mean = at::empty(return_mean ? x.sizes() : at::IntArrayRef{0}, x.options().dtype(at::kFloat));
  at::Tensor log_prob = at::empty({s.batch}, x.options().dtype(at::kFloat));
  sample_into(s, prev, log_prob, return_mean ? mean : at::Tensor());
  return {prev, log_prob, mean};
}

void sample_step_out_cuda(const at::Tensor& x, const at::Tensor& v, const at::Tensor& sigma,
                          const at::Tensor& next_sigma, const at::Tensor& std_dev,
                          const c10::optional<at::Tensor>& seeds, const c10::optional<at::Tensor>& step_index,
                          const c10::optional<at::Tensor>& noise, c10::string_view kind, const at::Tensor& prev,
                          const at::Tensor& log_prob, const c10::optional<at::Tensor>& mean) {
  check_cuda(x);
  const c10::cuda::CUDAGuard guard(x.device());
  const StepViews s = sample_views(x, v, sigma, next_sigma, std_dev, seeds, step_index, noise, std::string(kind));
  check_sample_out(x, prev, log_prob, mean);
  sample_into(s, prev, log_prob, mean.has_value() ? *mean : at::Tensor());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> score_step_cuda(
    const at::Tensor& x, const at::Tensor& v, const at::Tensor& prev_sample, const at::Tensor& sigma,
    const at::Tensor& next_sigma, const at::Tensor& std_dev, const c10::optional<at::Tensor>& old_mean,
    c10::string_view kind, bool return_mean) {
  check_cuda(x);
  const c10::cuda::CUDAGuard guard(x.device());
  const StepViews s = score_views(x, v, prev_sample, sigma, next_sigma, std_dev, old_mean, std::string(kind));
  const bool with_bias = s.old_mean.defined();
  at::Tensor mean = at::empty(return_mean ? x.sizes() : at::IntArrayRef{0}, x.options().dtype(at::kFloat));
  at::Tensor log_prob = at::empty({s.batch}, x.options().dtype(at::kFloat));
  at::Tensor bias = at::empty({with_bias ? s.batch : 0}, x.options().dtype(at::kFloat));
  const int64_t n_blocks = blocks_per_row(s.row_elems);
  at::Tensor partial = at::empty({s.batch, n_blocks}, x.options().dtype(at::kFloat));
  at::Tensor bias_partial = at::empty({with_bias ? s.batch * n_blocks : 1}, x.options().dtype(at::kFloat));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned>(n_blocks), static_cast<unsigned>(s.batch));
  score_kernel<<<grid, kThreads, 0, stream>>>(
      s.family, s.row_elems, s.sigma.data_ptr<float>(), s.next_sigma.data_ptr<float>(), s.std_dev.data_ptr<float>(),
      s.x.data_ptr(), elem_of(s.x, "x"), s.v.data_ptr(), elem_of(s.v, "v"), s.prev.data_ptr(),
      elem_of(s.prev, "prev_sample"), with_bias ? s.old_mean.data_ptr() : nullptr,
      with_bias ? elem_of(s.old_mean, "old_mean") : Elem::F32, return_mean ? mean.data_ptr<float>() : nullptr,
      partial.data_ptr<float>(), bias_partial.data_ptr<float>(), n_blocks);
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
    const c10::optional<at::Tensor>& old_mean, c10::string_view kind, bool need_grad_x, bool need_grad_old_mean) {
  check_cuda(x);
  const c10::cuda::CUDAGuard guard(x.device());
  const StepViews s = score_views(x, v, prev_sample, sigma, next_sigma, std_dev, old_mean, std::string(kind));
  const BackwardGrads g = backward_grads(x, s, grad_log_prob, grad_mean, grad_guard_bias, need_grad_old_mean);
  const at::Tensor &g_lp = g.log_prob, &g_mean = g.mean, &g_bias = g.bias;
  const bool bias_grad = g.bias_grad, old_grad = g.old_grad;
  at::Tensor grad_v = at::empty(v.sizes(), v.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor grad_x = need_grad_x ? at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous))
                                  : at::empty({0}, x.options());
  at::Tensor grad_old;
  if (old_grad) {
    // Without a bias gradient nothing reaches old_mean: its gradient is zero.
    grad_old = bias_grad ? at::empty(s.old_mean.sizes(), s.old_mean.options()) : at::zeros(s.old_mean.sizes(), s.old_mean.options());
  } else {
    grad_old = at::empty({0}, x.options().dtype(at::kFloat));
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned>(blocks_per_row(s.row_elems)), static_cast<unsigned>(s.batch));
  backward_kernel<<<grid, kThreads, 0, stream>>>(
      s.family, s.row_elems, s.sigma.data_ptr<float>(), s.next_sigma.data_ptr<float>(), s.std_dev.data_ptr<float>(),
      g_lp.data_ptr<float>(), bias_grad ? g_bias.data_ptr<float>() : nullptr,
      g_mean.defined() ? g_mean.data_ptr<float>() : nullptr, s.x.data_ptr(), elem_of(s.x, "x"), s.v.data_ptr(),
      elem_of(s.v, "v"), s.prev.data_ptr(), elem_of(s.prev, "prev_sample"),
      bias_grad ? s.old_mean.data_ptr() : nullptr, s.old_mean.defined() ? elem_of(s.old_mean, "old_mean") : Elem::F32,
      grad_v.data_ptr(), need_grad_x ? grad_x.data_ptr() : nullptr,
      (old_grad && bias_grad) ? grad_old.data_ptr() : nullptr);
  check_launch();
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
