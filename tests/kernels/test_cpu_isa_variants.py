"""The CPU kernel's AVX2 and baseline variants agree with the one this machine picks.

The extension compiles its loops for AVX-512, AVX2 and baseline x86-64 and picks one at
load time, so a machine only ever runs its best variant; PRECISE_FAST_CPU_ISA caps the
choice, and each variant runs here in a subprocess (the choice is made once per process).
Every result must be bitwise identical: the same float operations (no contraction to FMA
in ISO C++) and per-row sums in an order the source fixes (block_sq_sum in
csrc/fused_step_cpu.cpp), not one the vector width picks.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import precise_fast.sde.ops as ops

pytestmark = pytest.mark.skipif(not ops.native_available(), reason=f"precise_fast._C not built: {ops.native_error()}")

SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    import precise_fast._C as C
    from precise_fast.sde import sample_step, score_step

    def case():
        g = torch.Generator().manual_seed(0)
        out = {"isa": C.cpu_isa()}
        for name, dtype in (("f32", torch.float32), ("bf16", torch.bfloat16), ("f16", torch.float16)):
            x = torch.randn(3, 2053, generator=g).to(dtype)
            v = torch.randn(3, 2053, generator=g).to(dtype)
            s, n, d = torch.tensor([1.0, 0.7, 0.3]), torch.tensor([0.9, 0.5, 0.0]), torch.tensor([0.4, 0.3, 1e-6])
            prev, lp, mean = sample_step(x, v, s, n, d, kind="precise", seeds=torch.tensor([1, 2, 3]),
                                         step_index=5, return_mean=True, backend="cpu")
            old = (mean + 0.01).detach()
            vv = v.clone().requires_grad_(True)
            xx = x.clone().requires_grad_(True)
            lp2, mean2, bias = score_step(xx, vv, prev, s, n, d, kind="flow_grpo", old_mean=old, return_mean=True,
                                          backend="cpu")
            (lp2.sum() + bias.sum() + mean2.sum()).backward()
            out[name] = {"prev": prev, "lp": lp, "mean": mean, "lp2": lp2.detach(), "bias": bias.detach(),
                         "gv": vv.grad, "gx": xx.grad}
        out["normals"] = torch.ops.precise_fast.philox_normal(torch.tensor([7, 2**40]), torch.tensor(3), 40001)
        return out

    if __name__ == "__main__":
        torch.save(case(), sys.argv[1])
    """
)


def _run(tmp_path, isa: str | None):
    script = tmp_path / "isa_case.py"
    script.write_text(SCRIPT)
    out = tmp_path / f"out_{isa or 'default'}.pt"
    env = dict(os.environ)
    env.pop("PRECISE_FAST_CPU_ISA", None)
    if isa is not None:
        env["PRECISE_FAST_CPU_ISA"] = isa
    env["OMP_NUM_THREADS"] = "1"
    subprocess.run([sys.executable, str(script), str(out)], check=True, env=env, timeout=300)
    return torch.load(out)


def _cpu_has(flag: str) -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return any(flag in line.split() for line in f if line.startswith("flags"))
    except OSError:
        return False


@pytest.mark.parametrize("isa", ["avx2", "baseline"])
def test_variant_matches_default(tmp_path, isa):
    if isa == "avx2" and not _cpu_has("avx2"):
        pytest.skip("this CPU has no AVX2")
    default = _run(tmp_path, None)
    variant = _run(tmp_path, isa)
    assert variant["isa"] == isa
    if default["isa"] == isa:
        pytest.skip(f"{isa} is already this machine's default: nothing else to compare")
    assert torch.equal(variant["normals"], default["normals"])
    for dtype in ("f32", "bf16", "f16"):
        a, b = variant[dtype], default[dtype]
        for key in ("prev", "mean", "gv", "gx", "lp", "lp2", "bias"):
            assert torch.equal(a[key], b[key]), f"{isa} {dtype} {key} differs from {default['isa']}"
