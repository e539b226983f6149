// Argument checks and views shared by the CPU and CUDA implementations of the fused
// step ops: every bad input becomes a clear Python exception before any kernel runs.
#pragma once

#include <ATen/ATen.h>

#include "step_coefficients.h"

namespace precise_fast {

// The CUDA (and Triton) kernels put the rows on grid dimension y, which holds at most 65535:
// precise_fast/kinds.py's MAX_GRID_ROWS, which the Python side checks first
// (precise_fast._C.max_grid_rows() returns this one; tests/sde/test_kinds.py compares them).
constexpr int64_t kMaxGridRows = 65535;

// Element types the kernels read and write (kinds.FUSED_DTYPE_NAMES); all arithmetic is float32.
enum class Elem : int { F32 = 0, BF16 = 1, F16 = 2 };

inline Elem elem_of(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return Elem::F32;
    case at::kBFloat16:
      return Elem::BF16;
    case at::kHalf:
      return Elem::F16;
    default:
      TORCH_CHECK_TYPE(false, name, " must be float32, bfloat16 or float16, got ", t.scalar_type());
  }
  return Elem::F32;
}

inline Family family_or_throw(int64_t number) {
  Family family;
  TORCH_CHECK_VALUE(family_of(number, &family), "family=", number,
                    " is not a sampler family; expected 0, 1 or 2 (precise_fast.sde.kinds.FAMILY)");
  return family;
}

inline void check_latent(const at::Tensor& x, const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.sizes() == x.sizes(), name, " has shape ", t.sizes(), " but x has shape ", x.sizes());
  TORCH_CHECK_VALUE(t.device() == x.device(), name, " is on ", t.device(), " but x is on ", x.device());
  elem_of(t, name);
}

inline void check_x(const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.dim() >= 1 && x.size(0) > 0 && x.numel() > 0,
                    "x must have a non-empty batch dimension and elements, got shape ", x.sizes());
  elem_of(x, "x");
}

// (B,) float32 per-row step values (sigma, next_sigma, std), contiguous.
inline at::Tensor row_values(const at::Tensor& x, const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.device() == x.device(), name, " is on ", t.device(), " but x is on ", x.device());
  TORCH_CHECK_TYPE(t.is_floating_point(), name, " must be a floating tensor, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == x.size(0), name, " must have shape (", x.size(0), ",), got ",
                    t.sizes());
  // The usual case returns t itself without a dispatch (to() and contiguous() are each one).
  if (t.scalar_type() == at::kFloat && t.is_contiguous()) return t;
  return t.to(at::kFloat).contiguous();
}

// (B,) int64 per-row integers (seeds, step_index); a 0-d step index is broadcast.
inline at::Tensor row_integers(const at::Tensor& x, const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.device() == x.device(), name, " is on ", t.device(), " but x is on ", x.device());
  TORCH_CHECK_TYPE(!t.is_floating_point() && !t.is_complex() && t.scalar_type() != at::kBool, name,
                   " must be an integer tensor, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 0 || (t.dim() == 1 && t.size(0) == x.size(0)), name, " must be 0-d or of shape (",
                    x.size(0), ",), got ", t.sizes());
  return t.to(at::kLong).expand({x.size(0)}).contiguous();
}

// Everything a fused kernel needs, checked: pointers are to contiguous tensors.
struct StepViews {
  Family family;
  int64_t batch = 0;
  int64_t row_elems = 0;  // M: elements per row
  at::Tensor x, v, prev, old_mean, noise, sigma, next_sigma, std_dev, seeds, step_index;
};

inline StepViews sample_views(const at::Tensor& x, const at::Tensor& v, const at::Tensor& sigma,
                              const at::Tensor& next_sigma, const at::Tensor& std_dev,
                              const c10::optional<at::Tensor>& seeds, const c10::optional<at::Tensor>& step_index,
                              const c10::optional<at::Tensor>& noise, int64_t family) {
  StepViews s;
  s.family = family_or_throw(family);
  check_x(x);
  check_latent(x, v, "v");
  s.batch = x.size(0);
  s.row_elems = x.numel() / s.batch;
  s.x = x.contiguous();
  s.v = v.contiguous();
  s.sigma = row_values(x, sigma, "sigma");
  s.next_sigma = row_values(x, next_sigma, "next_sigma");
  s.std_dev = row_values(x, std_dev, "std");
  if (s.family != Family::Ode) {
    TORCH_CHECK_VALUE(seeds.has_value() != noise.has_value(), "family=", family,
                      " needs exactly one of seeds (Philox stream) or noise (explicit normals)");
    if (noise.has_value()) {
      check_latent(x, *noise, "noise");
      s.noise = noise->contiguous();
    } else {
      s.seeds = row_integers(x, *seeds, "seeds");
      TORCH_CHECK_VALUE(s.seeds.dim() == 1, "seeds must have shape (", s.batch, ",)");
      TORCH_CHECK_VALUE(step_index.has_value(), "sampling from seeds needs step_index");
      s.step_index = row_integers(x, *step_index, "step_index");
    }
  }
  return s;
}

inline StepViews score_views(const at::Tensor& x, const at::Tensor& v, const at::Tensor& prev,
                             const at::Tensor& sigma, const at::Tensor& next_sigma, const at::Tensor& std_dev,
                             const c10::optional<at::Tensor>& old_mean, int64_t family) {
  StepViews s;
  s.family = family_or_throw(family);
  check_x(x);
  check_latent(x, v, "v");
  check_latent(x, prev, "prev_sample");
  s.batch = x.size(0);
  s.row_elems = x.numel() / s.batch;
  s.x = x.contiguous();
  s.v = v.contiguous();
  s.prev = prev.contiguous();
  s.sigma = row_values(x, sigma, "sigma");
  s.next_sigma = row_values(x, next_sigma, "next_sigma");
  s.std_dev = row_values(x, std_dev, "std");
  if (old_mean.has_value()) {
    check_latent(x, *old_mean, "old_mean");
    s.old_mean = old_mean->contiguous();
  }
  return s;
}

// The out= buffers of sample_step_out: written in place, so they must already be what the
// functional op would allocate (contiguous, x's shape and dtype / (B,) float32 / float32).
inline void check_sample_out(const at::Tensor& x, const at::Tensor& prev, const at::Tensor& log_prob,
                             const c10::optional<at::Tensor>& mean) {
  TORCH_CHECK_VALUE(prev.sizes() == x.sizes() && prev.scalar_type() == x.scalar_type() && prev.device() == x.device() &&
                        prev.is_contiguous(),
                    "prev_sample out buffer must be contiguous, of x's shape ", x.sizes(), " and dtype ",
                    x.scalar_type(), ", got ", prev.sizes(), " ", prev.scalar_type());
  TORCH_CHECK_VALUE(log_prob.dim() == 1 && log_prob.size(0) == x.size(0) && log_prob.scalar_type() == at::kFloat &&
                        log_prob.device() == x.device() && log_prob.is_contiguous(),
                    "log_prob out buffer must be a contiguous (", x.size(0), ",) float32 tensor, got ",
                    log_prob.sizes(), " ", log_prob.scalar_type());
  if (mean.has_value()) {
    TORCH_CHECK_VALUE(mean->sizes() == x.sizes() && mean->scalar_type() == at::kFloat && mean->device() == x.device() &&
                          mean->is_contiguous(),
                      "mean out buffer must be contiguous float32 of x's shape ", x.sizes(), ", got ", mean->sizes(),
                      " ", mean->scalar_type());
  }
}

// The incoming gradients of the score op, checked once for the CPU and CUDA backwards.
struct BackwardGrads {
  at::Tensor log_prob;  // (B,) float32
  at::Tensor mean;      // float32 like x, or undefined when no gradient reaches the mean output
  at::Tensor bias;      // (B,) float32, or undefined without a guard-bias gradient
  bool bias_grad = false;
  bool old_grad = false;  // a gradient w.r.t. old_mean is wanted and old_mean exists
};

inline BackwardGrads backward_grads(const at::Tensor& x, const StepViews& s, const at::Tensor& grad_log_prob,
                                    const c10::optional<at::Tensor>& grad_mean,
                                    const c10::optional<at::Tensor>& grad_guard_bias, bool need_grad_old_mean) {
  BackwardGrads g;
  g.log_prob = row_values(x, grad_log_prob, "grad_log_prob");
  if (grad_mean.has_value()) {
    check_latent(x, *grad_mean, "grad_mean");
    g.mean = grad_mean->to(at::kFloat).contiguous();
  }
  g.bias_grad = grad_guard_bias.has_value();
  TORCH_CHECK_VALUE(!g.bias_grad || s.old_mean.defined(), "grad_guard_bias needs old_mean");
  if (g.bias_grad) g.bias = row_values(x, *grad_guard_bias, "grad_guard_bias");
  g.old_grad = need_grad_old_mean && s.old_mean.defined();
  return g;
}

}  // namespace precise_fast
