"""Attention backend selection: auto choice, explicit requests that cannot run, logging."""

import logging

import pytest
import torch

from precise_fast.models import (
    AttentionBackendError,
    attention_backend_for,
    resolve_attention_backend,
    set_attention_backend,
)
from precise_fast.models import attention as attention_mod


def test_auto_on_cpu_is_sdpa_and_says_why():
    backend, reason = resolve_attention_backend("auto", "cpu", torch.float32)
    assert backend == "sdpa"
    assert "needs CUDA" in reason


@pytest.mark.parametrize("name", ["flash2", "flash3", "fa2", "flash"])
def test_explicit_flash_on_cpu_is_a_clear_error(name):
    with pytest.raises(AttentionBackendError, match="cannot run: flash-attn [23] needs CUDA"):
        resolve_attention_backend(name, "cpu", torch.bfloat16)


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="not one of auto, sdpa, flash2, flash3"):
        resolve_attention_backend("xformers2", "cpu", torch.float32)


def _fake_flash(monkeypatch, capability=(9, 0), usable=(2, 3)):
    """No GPU here: fake the device capability and the dispatcher's import checks, with a
    stand-in ``flash_attn_interface`` module importable (as a flash-attn 3 install makes it)."""
    import sys
    import types

    monkeypatch.setitem(sys.modules, "flash_attn_interface", types.ModuleType("flash_attn_interface"))
    monkeypatch.setattr(attention_mod, "_flash_usable", lambda version: version in usable)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)


def test_auto_picks_flash_on_cuda_when_usable(monkeypatch):
    _fake_flash(monkeypatch, (9, 0))
    assert resolve_attention_backend("auto", "cuda", torch.bfloat16, "rollout")[0] == "flash3"
    _fake_flash(monkeypatch, (8, 0))
    assert resolve_attention_backend("auto", "cuda", torch.bfloat16, "rollout")[0] == "flash2"
    with pytest.raises(AttentionBackendError, match="needs a Hopper GPU"):
        resolve_attention_backend("flash3", "cuda", torch.bfloat16, "rollout")
    # flash-attn has no fp32 kernels: auto falls back, an explicit request fails.
    assert resolve_attention_backend("auto", "cuda", torch.float32)[0] == "sdpa"
    with pytest.raises(AttentionBackendError, match="float16/bfloat16"):
        resolve_attention_backend("flash2", "cuda", torch.float32)
    _fake_flash(monkeypatch, (9, 0), usable=(2,))
    assert resolve_attention_backend("auto", "cuda", torch.bfloat16, "rollout")[0] == "flash2"
    with pytest.raises(AttentionBackendError, match="not importable"):
        resolve_attention_backend("flash3", "cuda", torch.bfloat16, "rollout")


def test_training_never_gets_a_forward_only_backend(monkeypatch):
    """diffusers 0.42.1's ``_flash_3`` op has a fake kernel but no autograd formula
    (diffusers/models/attention_dispatch.py, ``_wrapped_flash_attn_3``): a trained policy
    must not run on it, even where flash-attn 3 is the fastest forward."""
    assert attention_mod.FORWARD_ONLY == {"flash3"}
    _fake_flash(monkeypatch, (9, 0))
    backend, reason = resolve_attention_backend("auto", "cuda", torch.bfloat16)  # default use: training
    assert backend == "flash2" and "forward-only" in reason
    assert resolve_attention_backend("auto", "cuda", torch.bfloat16, "training")[0] not in attention_mod.FORWARD_ONLY
    for name in ("flash3", "fa3", "_flash_3"):
        with pytest.raises(AttentionBackendError, match="forward-only in diffusers"):
            resolve_attention_backend(name, "cuda", torch.bfloat16, "training")
    # Only flash-attn 3 installed: training falls back to SDPA, never to the forward-only op.
    _fake_flash(monkeypatch, (9, 0), usable=(3,))
    assert resolve_attention_backend("auto", "cuda", torch.bfloat16)[0] == "sdpa"
    assert resolve_attention_backend("auto", "cuda", torch.bfloat16, "rollout")[0] == "flash3"
    with pytest.raises(ValueError, match="use='train' is not one of training, rollout"):
        resolve_attention_backend("auto", "cuda", torch.bfloat16, "train")


def test_set_backend_defaults_to_training_and_switches_for_rollouts(fresh_pipe, monkeypatch):
    # Every check passes (as on an H100 with both flash-attn packages): what gets installed?
    tr = fresh_pipe.transformer
    monkeypatch.setattr(attention_mod, "_why_not_flash", lambda version, device, dtype, use: (
        "forward-only" if use == "training" and f"flash{version}" in attention_mod.FORWARD_ONLY else None))
    installed = []
    monkeypatch.setattr(tr, "set_attention_backend", installed.append)
    assert set_attention_backend(tr, "auto") == "flash2"
    assert installed == ["flash"]
    with attention_backend_for(tr, "auto", "rollout") as backend:
        assert backend == "flash3" and tr.precise_fast_attention_backend == "flash3"
    assert installed == ["flash", "_flash_3", "flash"] and tr.precise_fast_attention_backend == "flash2"
    with attention_backend_for(tr, "flash2", "rollout"):  # already installed: nothing to switch
        pass
    assert installed == ["flash", "_flash_3", "flash"]


def test_set_backend_installs_sdpa_and_keeps_outputs(fresh_pipe, caplog):
    tr = fresh_pipe.transformer
    x = torch.randn(2, 16, tr.config.in_channels, generator=torch.Generator().manual_seed(0))
    e = torch.randn(2, 8, tr.config.joint_attention_dim, generator=torch.Generator().manual_seed(1))
    img = torch.zeros(16, 4, dtype=torch.long)
    img[:, 1], img[:, 2] = torch.arange(16) // 4, torch.arange(16) % 4
    txt = torch.zeros(8, 4, dtype=torch.long)
    txt[:, 3] = torch.arange(8)
    t = torch.tensor([0.5, 0.25])
    with torch.no_grad():
        before = tr(hidden_states=x, encoder_hidden_states=e, timestep=t, img_ids=img, txt_ids=txt, return_dict=False)[0]
        with caplog.at_level(logging.INFO, logger="precise_fast.models"):
            assert set_attention_backend(tr, "sdpa") == "sdpa"
        after = tr(hidden_states=x, encoder_hidden_states=e, timestep=t, img_ids=img, txt_ids=txt, return_dict=False)[0]
    assert tr.precise_fast_attention_backend == "sdpa"
    assert any(r.getMessage() == "attention backend: sdpa (requested)" for r in caplog.records)
    procs = [m.processor for m in tr.modules() if hasattr(m, "processor")]
    assert procs and all(getattr(p, "_attention_backend", None) == "native" for p in procs)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    with pytest.raises(AttentionBackendError):
        set_attention_backend(tr, "flash2")


def _grads_through(tr, x, e, t, img, txt):
    x = x.clone().requires_grad_(True)
    out = tr(hidden_states=x, encoder_hidden_states=e, timestep=t, img_ids=img, txt_ids=txt, return_dict=False)[0]
    out.float().square().mean().backward()
    lora = [p.grad.detach().float().clone() for p in tr.parameters() if p.requires_grad]
    return out.detach().float(), x.grad.detach().float(), lora


@pytest.mark.gpu
def test_backward_through_the_auto_backend_on_cuda(tiny_dir):
    """The GRPO update's backward through whatever ``auto`` installs for training (flash-attn 2
    or SDPA; never the forward-only flash-attn 3 op) matches SDPA's, and the rollout choice
    runs forward; issue 12 item 1."""
    from precise_fast.models import apply_lora, load_pipeline

    pipe = load_pipeline(tiny_dir, dtype=torch.bfloat16, device="cuda")
    tr = pipe.transformer
    apply_lora(tr, rank=2, alpha=2)
    with torch.no_grad():
        for p in tr.parameters():
            if p.requires_grad:
                p.add_(0.02)
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(2, 16, tr.config.in_channels, generator=g, device="cuda", dtype=torch.bfloat16)
    e = torch.randn(2, 8, tr.config.joint_attention_dim, generator=g, device="cuda", dtype=torch.bfloat16)
    img = torch.zeros(16, 4, dtype=torch.long, device="cuda")
    img[:, 1], img[:, 2] = torch.arange(16) // 4, torch.arange(16) % 4
    txt = torch.zeros(8, 4, dtype=torch.long, device="cuda")
    txt[:, 3] = torch.arange(8)
    t = torch.tensor([0.5, 0.25], device="cuda")
    args = (x, e, t, img, txt)
    chosen = set_attention_backend(tr, "auto")
    assert chosen not in attention_mod.FORWARD_ONLY
    out, gx, lora = _grads_through(tr, *args)
    tr.zero_grad(set_to_none=True)
    set_attention_backend(tr, "sdpa")
    ref_out, ref_gx, ref_lora = _grads_through(tr, *args)
    assert all(torch.isfinite(a).all() for a in [gx, *lora]) and lora
    torch.testing.assert_close(out, ref_out, rtol=0.05, atol=0.05)
    torch.testing.assert_close(gx, ref_gx, rtol=0.1, atol=0.05)
    for a, b in zip(lora, ref_lora):
        torch.testing.assert_close(a, b, rtol=0.1, atol=0.05 * float(b.abs().max()) + 1e-6)
    with torch.no_grad(), attention_backend_for(tr, "auto", "rollout"):
        fast = tr(hidden_states=x, encoder_hidden_states=e, timestep=t, img_ids=img, txt_ids=txt, return_dict=False)[0]
    torch.testing.assert_close(fast.float(), ref_out, rtol=0.05, atol=0.05)
