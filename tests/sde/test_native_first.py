"""The public score calls run the C++ op first and the Python rules only when it raises.

``api._native_score`` (under ``score_step`` and ``step(..., prev_sample=...)``) skips the
argument rules of ``precise_fast/sde/arguments.py`` on a C++ backend: the op checks its
arguments itself (``csrc/fused_step_args.h``), and the kind becomes the op's family by the
kind table's lookup (``kinds.FAMILY``), which refuses an unknown kind. That is
only sound while the op rejects everything the rules reject, and while a rejected call still
gets the rules' words; both are held here, with the fast path's results equal to the full
path's and the step-value memo's identity rules.
"""

from __future__ import annotations

import gc

import pytest
import torch

import precise_fast.sde.api as api
from precise_fast.sde import score_step, step
from precise_fast.sde import ops
from precise_fast.sde.arguments import check_step_values, memo_entry, remembered_rows
from precise_fast.sde.kinds import FAMILY

pytestmark = pytest.mark.skipif(not ops.native_available(), reason=f"precise_fast._C not built: {ops.native_error()}")

B, M = 2, 37


def _args(dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    x, v, prev, old = (torch.randn(B, M, generator=gen).to(dtype) for _ in range(4))
    sigma, next_sigma, std = torch.tensor([0.9, 0.6]), torch.tensor([0.8, 0.3]), torch.tensor([0.2, 0.25])
    return dict(x=x, v=v, prev_sample=prev, sigma=sigma, next_sigma=next_sigma, std=std, old_mean=old.float())


# (what is wrong, how to make it so, the exception and words of the rule in arguments.py / kinds.py / ops.py)
BAD = [
    ("v shape", lambda a: a.update(v=a["v"][:, :5]), ValueError, "v has shape"),
    ("v device", lambda a: a.update(v=a["v"].to("meta")), ValueError, "v is on meta"),
    ("v not a tensor", lambda a: a.update(v=a["v"].tolist()), TypeError, "v must be a tensor"),
    ("v integer", lambda a: a.update(v=a["v"].to(torch.int32)), TypeError, "v must be a floating tensor"),
    ("v float64", lambda a: a.update(v=a["v"].double()), TypeError, "float32, bfloat16 and float16"),
    ("x not a tensor", lambda a: a.update(x=3.0), TypeError, "x must be a tensor"),
    ("x integer", lambda a: a.update(x=a["x"].long(), v=a["v"].long()), TypeError, "floating"),
    ("x no rows", lambda a: a.update(**{k: t[:0] for k, t in a.items() if isinstance(t, torch.Tensor)}), ValueError,
     "non-empty"),
    ("x no elements", lambda a: a.update(**{k: a[k][:, :0] for k in ("x", "v", "prev_sample", "old_mean")}),
     ValueError, "non-empty"),
    ("x 0-d", lambda a: a.update(**{k: a[k][0, 0] for k in ("x", "v", "prev_sample", "old_mean")}), ValueError,
     "non-empty"),
    ("prev shape", lambda a: a.update(prev_sample=a["prev_sample"][:1]), ValueError, "prev_sample has shape"),
    ("prev device", lambda a: a.update(prev_sample=a["prev_sample"].to("meta")), ValueError, "prev_sample is on meta"),
    ("prev integer", lambda a: a.update(prev_sample=a["prev_sample"].long()), TypeError,
     "prev_sample must be a floating tensor"),
    ("prev float64", lambda a: a.update(prev_sample=a["prev_sample"].double()), TypeError, "prev_sample is torch.float64"),
    ("old_mean shape", lambda a: a.update(old_mean=a["old_mean"][:1]), ValueError, "old_mean has shape"),
    ("old_mean float64", lambda a: a.update(old_mean=a["old_mean"].double()), TypeError, "old_mean is torch.float64"),
    ("sigma length", lambda a: a.update(sigma=torch.ones(3)), ValueError, r"sigma must be a float or a tensor of shape \(2,\)"),
    ("std 2-D", lambda a: a.update(std=torch.ones(B, 1)), ValueError, r"std must be a float or a tensor of shape \(2,\)"),
    ("next_sigma device", lambda a: a.update(next_sigma=torch.zeros(B, device="meta")), ValueError,
     "next_sigma is on meta"),
    ("kind", lambda a: a.update(kind="euler"), ValueError, "kind='euler' is not a sampler kind"),
]


def _bad_args(make):
    args = _args()
    args["kind"] = "precise"
    make(args)
    return args


@pytest.mark.parametrize("name,make,exc,match", BAD, ids=[b[0] for b in BAD])
def test_the_op_rejects_what_the_rules_reject(name, make, exc, match):
    """The soundness condition of running the op first: it never accepts a call the rules refuse
    (the kind reaches the op as its family, through the table's lookup, as on the fast path)."""
    a = _bad_args(make)
    with pytest.raises(Exception):  # noqa: B017 - the op's own words differ; that it refuses is the point
        ops.NATIVE_SCORE_OP(a["x"], a["v"], a["prev_sample"], a["sigma"], a["next_sigma"], a["std"], a["old_mean"],
                            FAMILY[a["kind"]], True)


@pytest.mark.parametrize("backend", ["auto", "cpu"])
@pytest.mark.parametrize("name,make,exc,match", BAD, ids=[b[0] for b in BAD])
def test_a_refused_call_gets_the_rules_words(name, make, exc, match, backend):
    a = _bad_args(make)
    with pytest.raises(exc, match=match):
        score_step(a["x"], a["v"], a["prev_sample"], a["sigma"], a["next_sigma"], a["std"], kind=a["kind"],
                   old_mean=a["old_mean"], return_mean=True, backend=backend)
    if name.startswith("old_mean"):
        return  # step takes no old_mean
    with pytest.raises(exc, match=match):
        step(a["x"], a["v"], a["sigma"], a["next_sigma"], a["std"], kind=a["kind"], prev_sample=a["prev_sample"],
             backend=backend)


class _CountingOp:
    def __init__(self, op):
        self.op, self.calls = op, 0

    def __call__(self, *args):
        self.calls += 1
        return self.op(*args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_path_is_taken_and_equals_the_full_path(monkeypatch, dtype):
    a = _args(dtype)
    spy = _CountingOp(ops.NATIVE_SCORE_OP)
    monkeypatch.setattr(api, "NATIVE_SCORE_OP", spy)
    call = dict(kind="precise", old_mean=a["old_mean"], return_mean=True)
    fast = score_step(a["x"], a["v"], a["prev_sample"], a["sigma"], a["next_sigma"], a["std"], **call)
    # A 0-d / float64 / non-contiguous step value is not the op's (B,) row form: the full path converts it.
    odd_rows = (a["sigma"].double(), torch.tensor(0.3), a["std"].repeat_interleave(2)[::2])
    odd = score_step(a["x"], a["v"], a["prev_sample"], *odd_rows, **call)
    stepped = step(a["x"], a["v"], a["sigma"], a["next_sigma"], a["std"], kind="precise", prev_sample=a["prev_sample"])
    assert spy.calls == 3, "each call reached the op through the fast path"
    monkeypatch.setattr(api, "_native_score", lambda *args: None)
    full = score_step(a["x"], a["v"], a["prev_sample"], a["sigma"], a["next_sigma"], a["std"], **call)
    full_odd = score_step(a["x"], a["v"], a["prev_sample"], *odd_rows, **call)
    full_step = step(a["x"], a["v"], a["sigma"], a["next_sigma"], a["std"], kind="precise", prev_sample=a["prev_sample"])
    assert spy.calls == 3, "the full path calls the op through op_table, not the fast path's reference"
    for got, want in ((fast, full), (odd, full_odd)):
        for g, w in zip(got, want):
            assert torch.equal(g, w)
    assert all(torch.equal(g, w) for g, w in zip(stepped, full_step))
    assert stepped.prev_sample is a["prev_sample"]


def test_fast_path_gradients_equal_the_full_path(monkeypatch):
    a = _args()
    grads = []
    for fast in (True, False):
        if not fast:
            monkeypatch.setattr(api, "_native_score", lambda *args: None)
        x, v, old = (a[k].clone().requires_grad_(True) for k in ("x", "v", "old_mean"))
        lp, mean, bias = score_step(x, v, a["prev_sample"], a["sigma"], a["next_sigma"], a["std"], kind="precise",
                                    old_mean=old, return_mean=True)
        (lp.sum() + 0.5 * mean.square().mean() + bias.sum()).backward()
        grads.append((x.grad, v.grad, old.grad))
    for g_fast, g_full in zip(*grads):
        assert g_fast is not None and torch.equal(g_fast, g_full)


def test_score_autograd_is_the_cpp_kernel():
    """No Python autograd kernel on the C++ score op: it would run Python on every call
    (csrc/score_autograd.cpp says what that cost)."""
    dump = torch._C._dispatch_dump(f"{ops.OP_NAMESPACE}::score_step")
    autograd = [line for line in dump.splitlines() if line.startswith("Autograd")]
    assert autograd and all("score_autograd.cpp" in line for line in autograd), dump


def test_step_score_mode_checks_values_again_after_an_in_place_change():
    a = _args()
    sigma = a["sigma"].clone()
    call = lambda: step(a["x"], a["v"], sigma, a["next_sigma"], a["std"], kind="precise",  # noqa: E731
                        prev_sample=a["prev_sample"])
    first = call()
    assert torch.equal(call().log_prob, first.log_prob)  # remembered: the same rows
    sigma.fill_(1.5)
    with pytest.raises(ValueError, match=r"sigma must lie in \(0, 1\]"):
        call()
    sigma.fill_(0.95)
    assert not torch.equal(call().log_prob, first.log_prob)  # new values, new rows


def test_memo_entry_holds_no_caller_tensor_and_notices_a_new_one():
    sigma, next_sigma = torch.tensor([0.9, 0.6]), torch.tensor(0.3)  # the second needs converting (0-d)
    rows = check_step_values(sigma, next_sigma, 0.2, "precise", B, torch.device("cpu"))
    entry = memo_entry((sigma, next_sigma, 0.2), rows)
    again = remembered_rows(entry, sigma, next_sigma, 0.2)
    assert again[0] is sigma and all(torch.equal(r, w) for r, w in zip(again, rows))
    # Weak references only: the caller's tensors die with the caller's last reference.
    del sigma, next_sigma, rows, again
    gc.collect()
    assert entry[0][0]() is None and entry[1][0]() is None
    # A tensor that is not the one the entry saw (a reused id) is not taken for it.
    assert remembered_rows(entry, torch.tensor([0.9, 0.6]), torch.tensor(0.3), 0.2) is None


def test_a_bool_is_not_taken_for_a_remembered_number():
    x, v = torch.randn(B, M), torch.randn(B, M)
    step(x, v, 1, 0.5, 0.2, kind="precise", prev_sample=x)  # remembers the int 1 as sigma
    with pytest.raises(TypeError, match="sigma must be a float or a tensor, got bool"):
        step(x, v, True, 0.5, 0.2, kind="precise", prev_sample=x)
