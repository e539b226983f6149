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
