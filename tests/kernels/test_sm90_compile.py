"""Every Triton kernel variant compiles for sm_90 (H100 / H200) here, without a GPU, and its
PTX keeps the bitwise promise: no contracted multiply-add, no approximate division, square
root or transcendental in the noise, mean and log-prob math (rules: ``sm90_ptx.py``).

The variants are the ones the ops launch: the public calls run on the Triton backend on
small tensors for every kind, latent dtype and optional input (autograd for the backward),
each launch recorded instead of run; a variant is a kernel with its pointer types and
constexpr values. The latent tensors share one dtype per call (float32 noise, means and
gradients, as the public API passes them): other mixes change only the loads' exact widening
conversions. Each variant compiles twice: as triton specializes a launch on 16-byte aligned
tensors with sizes divisible by 16 (the real sizes: vector loads, another reduction layout)
and with nothing aligned (offset views, odd sizes). Compilation runs in a
subprocess without ``TRITON_INTERPRET`` (CI sets it for these tests), with the launch
options of ``fused_step.LAUNCH_OPTIONS``, as a GPU launch compiles them. A control compiles
two variants with fusion on and checks that the rules then fire.
"""

from __future__ import annotations

import inspect
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from precise_fast.kernels import fused_step as fs
from precise_fast.sde import KINDS, sample_step, score_step

from .sm90_ptx import violations

pytest.importorskip("triton.compiler")

ROOT = Path(__file__).resolve().parents[2]
DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.int64: "i64"}


def _kernel_name(kernel) -> str:
    kernel = getattr(kernel, "kernel", kernel)  # wrap_triton's wrapper holds the jit function
    return getattr(kernel, "fn", kernel).__name__


def _record(calls) -> list[dict]:
    """The distinct (kernel, signature, constexprs) that ``calls()`` launches, nothing run."""
    seen: dict[str, dict] = {}

    def record(kernel, grid, *args, **meta):
        name = _kernel_name(kernel)
        params = list(inspect.signature(getattr(fs, name).fn).parameters)
        signature = {}
        for pname, arg in zip(params, args):
            if isinstance(arg, torch.Tensor):
                signature[pname] = "*" + DTYPES[arg.dtype]
            else:
                assert isinstance(arg, int), (name, pname, arg)
                signature[pname] = "i32"
        constexprs = {k: (int(v) if isinstance(v, bool) else v) for k, v in meta.items()}
        key = json.dumps([name, signature, constexprs], sort_keys=True)
        seen.setdefault(key, {"kernel": name, "signature": signature, "constexprs": constexprs})

    real = fs._launch
    fs._launch = record
    try:
        calls()
    finally:
        fs._launch = real
    return list(seen.values())


def _every_launch() -> None:
    """Every argument combination of the public calls on the Triton backend: sample (kinds,
    noise or seeds, mean or not), score (old mean, mean) and its backward through autograd
    (gradients for x and the old mean or not; a loss over the mean and the guard bias or not)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows, n = 2, 8
    f32 = dict(dtype=torch.float32, device=device)
    s, sn, sd = torch.full((rows,), 0.6, **f32), torch.full((rows,), 0.5, **f32), torch.full((rows,), 0.1, **f32)
    seeds = torch.arange(rows, dtype=torch.int64, device=device)
    fs.triton_philox_normal(seeds, torch.zeros(rows, dtype=torch.int64, device=device), n)  # no public Triton route
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        x = torch.ones(rows, n, dtype=dtype, device=device)
        mean32 = torch.ones(rows, n, **f32)
        for kind in KINDS:
            for noise in (None, mean32):
                for return_mean in (False, True):
                    draw = dict(noise=noise) if noise is not None else dict(seeds=seeds)
                    sample_step(x, x, s, sn, sd, kind=kind, return_mean=return_mean, backend="triton", **draw)
            for with_old, need_old, use_mean, need_x in itertools.product((False, True), repeat=4):
                if need_old and not with_old:
                    continue
                xg, vg = x.clone().requires_grad_(need_x), x.clone().requires_grad_(True)
                old = mean32.clone().requires_grad_(need_old) if with_old else None
                lp, mean, bias = score_step(xg, vg, x, s, sn, sd, kind=kind, old_mean=old, return_mean=use_mean,
                                            backend="triton")
                loss = lp.sum() + (mean.sum() if use_mean else 0) + (bias.sum() if with_old else 0)
                loss.backward()


VARIANTS = _record(_every_launch)
# Each once as a launch on 16-byte aligned tensors with sizes divisible by 16 compiles it (as at
# 16 x 131072: wider vector loads, another reduction layout) and once with nothing aligned.
ALIGNED = [dict(v, aligned=aligned) for aligned in (True, False) for v in VARIANTS]
IDS = [f"{v['kernel']}-{v['signature'].get('x_ptr', '')}-" + ",".join(f"{k}={c}" for k, c in v["constexprs"].items())
       + ("-aligned" if v["aligned"] else "") for v in ALIGNED]


def _compile(variants, tmp: Path, fusion: bool = False) -> list[str]:
    spec = tmp / "variants.json"
    spec.write_text(json.dumps(variants))
    env = {k: val for k, val in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "tests.kernels.sm90_ptx", str(spec), str(tmp)] + (["--fusion"] if fusion else [])
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return [(tmp / f"{i}.ptx").read_text() for i in range(len(variants))]


@pytest.fixture(scope="module")
def ptx(tmp_path_factory):
    return dict(zip(IDS, _compile(ALIGNED, tmp_path_factory.mktemp("sm90"))))


def test_every_kernel_and_flag_is_a_variant():
    """The recording saw every kernel and every value of each constexpr flag."""
    kernels = {v["kernel"] for v in VARIANTS}
    assert kernels == {"_sample_kernel", "_score_kernel", "_finalize_kernel", "_backward_kernel", "_normals_kernel"}
    for name in kernels:
        flags = {}
        for v in (v for v in VARIANTS if v["kernel"] == name):
            for k, c in v["constexprs"].items():
                flags.setdefault(k, set()).add(c)
        for k, values in flags.items():
            if k.startswith(("HAS_", "NEED_", "RETURN_")):
                assert values == {0, 1}, (name, k, values)
            if k == "FAMILY":
                assert values == {0, 1, 2}, (name, values)
    assert {v["signature"].get("x_ptr") for v in VARIANTS} >= {"*fp32", "*bf16", "*fp16"}


@pytest.mark.slow
@pytest.mark.parametrize("variant", IDS)
def test_sm90_ptx_keeps_the_bitwise_promise(ptx, variant):
    code = ptx[variant]
    assert ".target sm_90" in code
    bad = violations(code)
    assert not bad, f"{len(bad)} instructions break the bitwise promise, e.g. {bad[:8]}"


@pytest.mark.slow
def test_the_aligned_variants_are_the_vectorized_ones(ptx):
    """The divisibility marks reach triton: the aligned sample kernels load 16 bytes at a time,
    their unaligned twins never (else the aligned half would check nothing new)."""
    for name in (i for i in IDS if i.startswith("_sample_kernel-") and i.endswith("-aligned")):
        assert "ld.global.v4" in ptx[name], name
        assert "ld.global.v4" not in ptx[name.removesuffix("-aligned")], name


@pytest.mark.slow
def test_the_rules_catch_contraction_when_fusion_is_on(tmp_path):
    """The control: with ``enable_fp_fusion=True`` the same kernels contract (fma.rn.f32)."""
    picks = [v for v in VARIANTS if v["signature"].get("x_ptr") == "*fp32" and (
        (v["kernel"] == "_sample_kernel" and v["constexprs"] == {"FAMILY": 2, "HAS_NOISE": 0, "RETURN_MEAN": 1,
                                                                   "GROUPS_": fs.GROUPS})
        or (v["kernel"] == "_backward_kernel" and v["constexprs"]["FAMILY"] == 2 and v["constexprs"]["HAS_GBIAS"]))][:2]
    assert len(picks) == 2
    for code in _compile(picks, tmp_path, fusion=True):
        bad = violations(code)
        assert any("fma.rn.f32" in b for b in bad), bad[:8]


def test_the_libdevice_log_is_the_only_exemption(tmp_path):
    """The float64 log's body is allowed on lines that call ``tl.log`` only; approximations never."""
    source = tmp_path / "kernel.py"
    source.write_text("a = 1\nb = tl.log(a)\n")
    ptx = f'.loc 1 {{line}} 3\n\tfma.rn.f64 %fd1, %fd2, %fd3, %fd4;\n\trcp.approx.ftz.f64 %fd5, %fd6;\n.file 1 "{source}"\n'
    assert violations(ptx.format(line=2)) == []
    assert len(violations(ptx.format(line=1))) == 2
    for opcode in ("fma.rn.f32", "mul.f32", "add.f64", "div.approx.f32", "div.full.f32", "sqrt.approx.ftz.f32",
                   "rsqrt.approx.f32", "ex2.approx.f32", "lg2.approx.ftz.f32", "sin.approx.f32", "mul.rn.ftz.f32",
                   "cvt.rz.f16.f32"):
        assert violations(ptx.replace("fma.rn.f64", opcode).format(line=2)), opcode
    for opcode in ("mul.rn.f32", "add.rn.f64", "div.rn.f32", "sqrt.rn.f32", "mad.lo.s32", "mul.hi.u32",
                   "cvt.rn.f32.s32", "cvt.rzi.s32.f32", "max.f32"):
        assert violations(f"\t{opcode} %r1, %r2;\n") == [], opcode


@pytest.mark.gpu
def test_torch_compile_keeps_fusion_off_in_the_kernels_it_compiles(tmp_path, monkeypatch):
    """Under torch.compile Inductor recompiles the Triton kernels from its own graph: the
    binaries it builds must still have ``enable_fp_fusion=False`` (fused_step.py sets Triton's
    default for torch versions whose Inductor drops the launch option) and pass the same rules,
    and the compiled step must equal eager bit for bit."""
    from torch._inductor import config as inductor_config

    from precise_fast.sde import sample_step, score_step

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))  # a fresh cache: every kernel compiles here
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(0)
    x, v = (torch.randn(2, 5000, generator=gen).to("cuda", torch.bfloat16) for _ in range(2))
    s, n, sd = (torch.tensor(p, device="cuda") for p in ([0.9, 0.6], [0.8, 0.5], [0.3, 0.2]))
    seeds = torch.tensor([3, 2**35], device="cuda")

    def step(x, v, steps):
        prev, lp, mean = sample_step(x, v, s, n, sd, kind="precise", seeds=seeds, step_index=steps, return_mean=True,
                                     backend="triton")
        lp2, _, bias = score_step(x, v, prev, s, n, sd, kind="precise", old_mean=mean, backend="triton")
        return prev, lp, mean, lp2, bias

    steps = torch.tensor(4, device="cuda")
    with inductor_config.patch(compile_threads=1, force_disable_caches=True):  # in-process: it sees the cache dir
        compiled = torch.compile(step, fullgraph=True)(x, v, steps)
    for a, b in zip(compiled, step(x, v, steps)):
        assert torch.equal(a, b)
    seen = set()
    for meta in tmp_path.rglob("*.json"):
        name = meta.stem
        if name not in {v["kernel"] for v in VARIANTS}:
            continue
        seen.add(name)
        assert json.loads(meta.read_text())["enable_fp_fusion"] is False, name
        ptx_file = meta.with_suffix(".ptx")
        if ptx_file.is_file():
            bad = violations(ptx_file.read_text())
            assert not bad, (name, bad[:8])
    assert {"_sample_kernel", "_score_kernel", "_finalize_kernel"} <= seen, seen
