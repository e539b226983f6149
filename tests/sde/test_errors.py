"""Bad input gets a clear error that names the argument."""

import pytest
import torch

from precise_fast.sde import flux2_sigmas, mean_jacobian, noise_std, step

SIGMAS = [1.0, 0.6, 0.3, 0.0]


def _xv(batch=2, n=5):
    return torch.randn(batch, n), torch.randn(batch, n)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: noise_std(SIGMAS, "ddim", 0.5), "kind='ddim'"),
        (lambda: noise_std(SIGMAS, "cps", 1.5), "cps needs 0 <= eta <= 1"),
        (lambda: noise_std(SIGMAS, "precise", -0.1), "eta=-0.1"),
        (lambda: noise_std(SIGMAS, "precise", float("nan")), "eta=nan"),
        (lambda: noise_std([1.0, 0.5, 0.5, 0.0], "precise", 1.0), "strictly decreasing"),
        (lambda: noise_std([1.0, 0.7, 0.8, 0.0], "precise", 1.0), r"sigmas\[1\]"),
        (lambda: noise_std([0.9, 0.5, 0.0], "precise", 1.0), "from 1 to 0"),
        (lambda: noise_std([1.0, 0.5, 0.1], "precise", 1.0), "from 1 to 0"),
        (lambda: noise_std([1.0], "precise", 1.0), "N \\+ 1 >= 2"),
        (lambda: noise_std([[1.0, 0.0]], "precise", 1.0), "1-D"),
        (lambda: noise_std([1.0, float("nan"), 0.0], "precise", 1.0), "non-finite"),
        (lambda: mean_jacobian(0.5, 0.4, 0.1, "euler"), "kind='euler'"),
        (lambda: flux2_sigmas(0, 1024), "num_steps"),
        (lambda: flux2_sigmas(20, 0), "image_seq_len"),
    ],
)
def test_schedule_and_kind_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_step_shape_and_device_errors():
    x, v = _xv()
    with pytest.raises(ValueError, match="v has shape"):
        step(x, v[:, :4], 0.5, 0.4, 0.1, kind="precise")
    with pytest.raises(ValueError, match="prev_sample has shape"):
        step(x, v, 0.5, 0.4, 0.1, kind="precise", prev_sample=x[:1])
    with pytest.raises(ValueError, match="noise has shape"):
        step(x, v, 0.5, 0.4, 0.1, kind="precise", noise=x.T)
    with pytest.raises(ValueError, match="v is on meta"):
        step(x, v.to("meta"), 0.5, 0.4, 0.1, kind="precise")
    with pytest.raises(ValueError, match=r"sigma must be a float or a tensor of shape \(2,\)"):
        step(x, v, torch.tensor([0.5, 0.5, 0.5]), 0.4, 0.1, kind="precise")
    with pytest.raises(ValueError, match=r"std must be a float or a tensor of shape \(2,\)"):
        step(x, v, 0.5, 0.4, torch.ones(2, 1), kind="precise")
    with pytest.raises(ValueError, match="next_sigma is on meta"):
        step(x, v, 0.5, torch.zeros(2, device="meta"), 0.1, kind="precise")
    with pytest.raises(TypeError, match="std must be a float or a tensor"):
        step(x, v, 0.5, 0.4, "0.1", kind="precise")
    with pytest.raises(TypeError, match="floating"):
        step(x.long(), v.long(), 0.5, 0.4, 0.1, kind="precise")


def test_step_value_errors():
    x, v = _xv()
    with pytest.raises(ValueError, match="kind='sde'"):
        step(x, v, 0.5, 0.4, 0.1, kind="sde")
    with pytest.raises(ValueError, match=r"sigma must lie in \(0, 1\]"):
        step(x, v, 1.5, 0.4, 0.1, kind="precise")
    with pytest.raises(ValueError, match=r"next_sigma must lie in \[0, sigma\)"):
        step(x, v, 0.5, 0.6, 0.1, kind="precise")
    with pytest.raises(ValueError, match="std must be finite and > 0"):
        step(x, v, 0.5, 0.4, 0.0, kind="flow_grpo")
    with pytest.raises(ValueError, match="backend='fast'"):
        step(x, v, 0.5, 0.4, 0.1, kind="precise", backend="fast")


# Issue 13, "Sampler API": every backend must treat these inputs alike. Before the fix the
# reference returned NaN log-probs for rows of zero elements (the fused backends raised),
# and float64 latents came back with float64 log-probs, though step() promises float32 math.


def _public_backends():
    import precise_fast.sde.ops as ops

    names = ["reference"]
    if ops.native_available():
        names.append("cpu")
    return names


@pytest.mark.parametrize("backend", _public_backends())
def test_zero_elements_per_row_is_an_error_on_every_backend(backend):
    from precise_fast.sde import sample_step, score_step

    x = torch.zeros(2, 0)
    with pytest.raises(ValueError, match="non-empty batch dimension and elements"):
        step(x, x, 0.5, 0.4, 0.1, kind="precise", backend=backend)
    with pytest.raises(ValueError, match="non-empty batch dimension and elements"):
        step(x, x, 0.5, 0.4, 0.1, kind="precise", prev_sample=x, backend=backend)
    with pytest.raises(ValueError, match="non-empty batch dimension and elements"):
        sample_step(x, x, 0.5, 0.4, 0.1, kind="precise", seeds=torch.tensor([1, 2]), backend=backend)
    with pytest.raises(ValueError, match="non-empty batch dimension and elements"):
        score_step(x, x, x, 0.5, 0.4, 0.1, kind="precise", backend=backend)


@pytest.mark.parametrize("kind", ["precise", "flow_grpo", "ode"])
def test_float64_inputs_get_float32_math_like_the_fused_backends(kind):
    from precise_fast.sde import sample_step, score_step

    gen = torch.Generator().manual_seed(0)
    x64, v64 = torch.randn(3, 50, generator=gen, dtype=torch.float64), torch.randn(3, 50, generator=gen, dtype=torch.float64)
    z = torch.randn(3, 50, generator=gen)
    s, n, sd = torch.tensor([1.0, 0.8, 0.3]), torch.tensor([0.9, 0.5, 0.0]), torch.tensor([0.3, 0.2, 1e-6])
    if kind == "ode":
        sd = torch.zeros(3)
    out64 = step(x64, v64, s, n, sd, kind=kind, noise=z)  # auto: the reference for float64
    out32 = step(x64.float(), v64.float(), s, n, sd, kind=kind, noise=z, backend="reference")
    assert out64.log_prob.dtype == torch.float32 and out64.mean.dtype == torch.float32
    assert out64.prev_sample.dtype == torch.float64
    assert torch.equal(out64.log_prob, out32.log_prob) and torch.equal(out64.mean, out32.mean)
    assert torch.equal(out64.prev_sample, out32.prev_sample.double())
    prev, lp, mean = sample_step(x64, v64, s, n, sd, kind=kind, noise=z, return_mean=True)
    assert lp.dtype == torch.float32 and mean.dtype == torch.float32 and torch.equal(lp, out64.log_prob)
    lp_score, mean_score, _ = score_step(x64, v64, prev, s, n, sd, kind=kind, return_mean=True)
    assert lp_score.dtype == torch.float32 and torch.equal(lp_score, lp) and torch.equal(mean_score, mean)
    import precise_fast.sde.ops as ops

    if ops.native_available():
        fused = step(x64.float(), v64.float(), s, n, sd, kind=kind, noise=z, backend="cpu")
        torch.testing.assert_close(out64.log_prob, fused.log_prob, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out64.mean, fused.mean, rtol=1e-6, atol=1e-6)


def test_step_value_checks_run_again_after_an_in_place_change():
    """step() checks a (B,) tensor's values once per version (no sync per call); an in-place
    write bumps the version, so the next call checks the new values."""
    x, v = _xv()
    sigma, next_sigma, std = torch.full((2,), 0.5), torch.full((2,), 0.4), torch.full((2,), 0.1)
    step(x, v, sigma, next_sigma, std, kind="precise")
    step(x, v, sigma, next_sigma, std, kind="precise")  # unchanged: no new check needed
    sigma.fill_(1.5)
    with pytest.raises(ValueError, match=r"sigma must lie in \(0, 1\]"):
        step(x, v, sigma, next_sigma, std, kind="precise")
    sigma.fill_(0.5)
    std[1] = 0.0
    with pytest.raises(ValueError, match="std must be finite and > 0"):
        step(x, v, sigma, next_sigma, std, kind="precise")
    # The same values checked for a kind without noise (std 0 allowed) do not pass for a stochastic one.
    step(x, v, sigma, next_sigma, std, kind="ode")
    with pytest.raises(ValueError, match="std must be finite and > 0"):
        step(x, v, sigma, next_sigma, std, kind="flow_grpo")
