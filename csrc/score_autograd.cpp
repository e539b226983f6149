// Autograd of the score_step op, in C++, for the C++ kernels (CPU and CUDA).
//
// Why not torch.library.register_autograd from Python (which the Triton op keeps, its
// kernels being Python): an autograd kernel registered from Python runs a Python function
// on every call of the op, grad or no grad. On a 2-core AMD EPYC, one thread, that cost
// 3.5 us of the op's 7 us on 16 x 8 inputs, and 28 us of its 59 us right after a
// 16 x 131072 pass had streamed 32 MiB through the caches (median of 80 random-order
// rounds): 4-5% of the full-size score pass itself. Here the op's Autograd kernel is C++,
// and the backward is the same as kernels/fused_step.py's `_score_backward` (the
// Triton op's): the mean is recomputed from (x, v), outputs returned empty get no gradient, and
// only the gradients autograd asks for are computed.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <tuple>

namespace precise_fast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using Triple = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// Indices of score_step's arguments (autograd edges count tensors only, and old_mean,
// the last tensor, is an edge only when given).
constexpr size_t kX = 0, kV = 1, kOldMean = 6, kArgs = 9;

Triple score_below_autograd(const at::Tensor& x, const at::Tensor& v, const at::Tensor& prev,
                            const at::Tensor& sigma, const at::Tensor& next_sigma, const at::Tensor& std_dev,
                            const std::optional<at::Tensor>& old_mean, int64_t family, bool return_mean) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("precise_fast::score_step", "")
                             .typed<Triple(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                           const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                           int64_t, bool)>();
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(x, v, prev, sigma, next_sigma, std_dev, old_mean, family, return_mean);
}

Triple score_backward_op(const at::Tensor& grad_log_prob, const std::optional<at::Tensor>& grad_mean,
                         const std::optional<at::Tensor>& grad_bias, const variable_list& saved, bool has_old,
                         int64_t family, bool need_x, bool need_old) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("precise_fast::score_step_backward", "")
          .typed<Triple(const at::Tensor&, const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                        const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                        const at::Tensor&, const std::optional<at::Tensor>&, int64_t, bool, bool)>();
  const std::optional<at::Tensor> old_mean = has_old ? std::optional<at::Tensor>(saved[6]) : std::nullopt;
  return op.call(grad_log_prob, grad_mean, grad_bias, saved[0], saved[1], saved[2], saved[3], saved[4], saved[5],
                 old_mean, family, need_x, need_old);
}

// A gradient that reaches a non-empty output, as the backward kernels read it (float32,
// contiguous); nothing for an output returned empty or one no gradient reached.
std::optional<at::Tensor> used_grad(const at::Tensor& grad, bool output_exists) {
  // sym_numel: under torch.compile with dynamic shapes the sizes are symbolic.
  if (!output_exists || !grad.defined() || grad.sym_numel() == 0) return std::nullopt;
  return grad.to(at::kFloat).contiguous();
}

struct ScoreStep : public torch::autograd::Function<ScoreStep> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& v,
                               const at::Tensor& prev, const at::Tensor& sigma, const at::Tensor& next_sigma,
                               const at::Tensor& std_dev, const std::optional<at::Tensor>& old_mean,
                               int64_t family, bool return_mean) {
    // Undefined incoming gradients stay undefined: a zero-filled mean gradient would cost
    // a full-size pass for nothing.
    ctx->set_materialize_grads(false);
    auto [log_prob, mean, bias] = score_below_autograd(x, v, prev, sigma, next_sigma, std_dev, old_mean, family,
                                                       return_mean);
    const bool has_old = old_mean.has_value() && old_mean->defined();
    ctx->save_for_backward({x, v, prev, sigma, next_sigma, std_dev, has_old ? *old_mean : at::Tensor()});
    ctx->saved_data["family"] = family;
    ctx->saved_data["return_mean"] = return_mean;
    ctx->saved_data["has_old"] = has_old;
    return {log_prob, mean, bias};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const bool has_old = ctx->saved_data["has_old"].toBool();
    const bool need_x = ctx->needs_input_grad(kX), need_v = ctx->needs_input_grad(kV);
    const bool need_old = has_old && ctx->needs_input_grad(kOldMean);
    variable_list out(kArgs);
    if (!(need_x || need_v || need_old)) return out;
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    const at::Tensor grad_log_prob =
        grads[0].defined() ? grads[0].to(at::kFloat).contiguous()
                           : at::zeros_symint(c10::SymIntArrayRef{x.sym_size(0)}, x.options().dtype(at::kFloat));
    const int64_t family = ctx->saved_data["family"].toInt();
    auto [grad_v, grad_x, grad_old] =
        score_backward_op(grad_log_prob, used_grad(grads[1], ctx->saved_data["return_mean"].toBool()),
                          used_grad(grads[2], has_old), saved, has_old, family, need_x, need_old);
    if (need_x) out[kX] = grad_x;
    if (need_v) out[kV] = grad_v;
    if (need_old) out[kOldMean] = grad_old;
    return out;
  }
};

Triple score_step_autograd(const at::Tensor& x, const at::Tensor& v, const at::Tensor& prev, const at::Tensor& sigma,
                           const at::Tensor& next_sigma, const at::Tensor& std_dev,
                           const std::optional<at::Tensor>& old_mean, int64_t family, bool return_mean) {
  // Nothing to record (rollout scoring, no_grad): straight to the kernel. Function::apply
  // would build and drop a context with its saved-data map on every call.
  const bool any_grad = x.requires_grad() || v.requires_grad() || prev.requires_grad() || sigma.requires_grad() ||
                        next_sigma.requires_grad() || std_dev.requires_grad() ||
                        (old_mean.has_value() && old_mean->defined() && old_mean->requires_grad());
  if (!any_grad || !at::GradMode::is_enabled()) {
    return score_below_autograd(x, v, prev, sigma, next_sigma, std_dev, old_mean, family, return_mean);
  }
  const variable_list out = ScoreStep::apply(x, v, prev, sigma, next_sigma, std_dev, old_mean, family, return_mean);
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(precise_fast, Autograd, m) { m.impl("score_step", &score_step_autograd); }

}  // namespace precise_fast
