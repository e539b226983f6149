"""Attention backend selection: auto choice, explicit requests that cannot run, logging."""

import logging

import pytest
import torch

from precise_fast.models import AttentionBackendError, resolve_attention_backend, set_attention_backend
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


def test_auto_picks_flash_on_cuda_when_usable(monkeypatch):
    # No GPU here: fake the device capability and the dispatcher's import checks.
    monkeypatch.setattr(attention_mod, "_flash_usable", lambda version: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert resolve_attention_backend("auto", "cuda", torch.bfloat16)[0] == "flash3"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert resolve_attention_backend("auto", "cuda", torch.bfloat16)[0] == "flash2"
    with pytest.raises(AttentionBackendError, match="needs a Hopper GPU"):
        resolve_attention_backend("flash3", "cuda", torch.bfloat16)
    # flash-attn has no fp32 kernels: auto falls back, an explicit request fails.
    assert resolve_attention_backend("auto", "cuda", torch.float32)[0] == "sdpa"
    with pytest.raises(AttentionBackendError, match="float16/bfloat16"):
        resolve_attention_backend("flash2", "cuda", torch.float32)
    monkeypatch.setattr(attention_mod, "_flash_usable", lambda version: version == 2)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert resolve_attention_backend("auto", "cuda", torch.bfloat16)[0] == "flash2"
    with pytest.raises(AttentionBackendError, match="not importable"):
        resolve_attention_backend("flash3", "cuda", torch.bfloat16)


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
