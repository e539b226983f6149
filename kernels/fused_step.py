"""Triton kernels of the fused sampler step, and their ``torch.library.triton_op`` boundaries.

Ops (same arguments and results as the C++ ops, see ``precise_fast/sde/ops.py``; a kind
arrives as its family, the integer of the kind table ``precise_fast/kinds.py``):
``precise_fast::triton_sample_step``, ``triton_score_step``, ``triton_score_step_backward``,
``triton_philox_normal``, and ``triton_sample_step_out`` (sample_step writing into given
buffers). They run on CUDA; under ``TRITON_INTERPRET=1`` on CPU tensors, which is how CI
tests them, through the same ``triton_op`` registration.

Layout: a 2-D grid (block of a row, row). Each program owns ``4 * GROUPS`` consecutive
elements of one row: Philox runs once per group of 4 (``tl.philox``, the library's
Philox4x32-10, keyed exactly as ``precise_fast/sde/philox.py``), the four normals are
interleaved back into element order, and the per-row sums go to a (B, blocks) buffer that
a second kernel reduces in a fixed order in float64: deterministic, no atomics.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch._subclasses.fake_tensor import is_fake
from torch._subclasses.functional_tensor import FunctionalTensorMode
from torch.library import triton_op
from torch.library import wrap_triton as _torch_wrap_triton

from precise_fast.kinds import FAMILY_ODE, FUSED_DTYPE_NAMES, MAX_GRID_ROWS

# 256 groups = 1024 elements per program: 4 KiB of float32 per stream, enough bytes in
# flight per SM for a memory-bound kernel, and few programs under the interpreter.
GROUPS = 256
ELEMS_PER_PROGRAM = 4 * GROUPS
FINALIZE_BLOCK = 128

# Read once, as triton.jit does when the kernels below are defined.
_INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
_DTYPES = tuple(getattr(torch, name) for name in FUSED_DTYPE_NAMES)


def wrap_triton(kernel):
    """``torch.library.wrap_triton``, also for the interpreter's kernels on every supported torch.

    Under TRITON_INTERPRET=1 ``triton.jit`` makes an InterpretedFunction, whose launches run in
    numpy and have nothing to trace: torch 2.14 hands it back as it is, torch 2.11 refuses it
    ("wrap_triton only works on functions annotated with triton.jit"). Do as 2.14 does.
    """
    return kernel if _INTERPRETING else _torch_wrap_triton(kernel)


# ----------------------------------------------------------------------------- device helpers


@triton.jit
def _row_coefficients(sigma_ptr, next_sigma_ptr, std_ptr, row, FAMILY: tl.constexpr):
    """(cx, cv, sd, inv_var, log_norm) of a row: mean = cx x + cv v; float64 per-row math.

    float64 ``/`` and ``tl.sqrt`` lower to IEEE ``div.rn.f64`` / ``sqrt.rn.f64`` (only the
    float32 forms have approximate variants), so cx and cv round as in csrc/step_coefficients.h.
    """
    s = tl.load(sigma_ptr + row).to(tl.float64)
    sn = tl.load(next_sigma_ptr + row).to(tl.float64)
    sd = tl.load(std_ptr + row).to(tl.float64)
    dt = sn - s
    if FAMILY == 1:  # Euler-Maruyama
        cx = 1.0 - 0.5 * sd * sd / s
        cv = dt - 0.5 * sd * sd * (1.0 - s) / s
    elif FAMILY == 2:  # coefficient-preserving
        c = tl.sqrt(tl.maximum(sn * sn - sd * sd, 0.0))
        cx = (1.0 - sn) + c
        cv = -s * (1.0 - sn) + (1.0 - s) * c
    else:  # ode
        cx = dt * 0.0 + 1.0
        cv = dt
    if FAMILY == 0:  # no log-prob (std is 0): keep log(0) out of the graph
        inv_var = dt * 0.0
        log_norm = dt * 0.0
    else:
        inv_var = 1.0 / (sd * sd)
        log_norm = -tl.log(sd) - 0.91893853320467274178
    return cx.to(tl.float32), cv.to(tl.float32), sd.to(tl.float32), inv_var, log_norm


@triton.jit
def _to_element(value, ptr):
    """float32 -> the pointee type of ptr, rounding to nearest even.

    bfloat16 is rounded by hand in integers: the Triton interpreter truncates a plain
    ``.to(tl.bfloat16)`` (and rounds half away from zero with "rtne"), while CUDA rounds to
    nearest even; by hand both match torch's ``.to(torch.bfloat16)``.
    """
    if ptr.dtype.element_ty == tl.bfloat16:
        bits = value.to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        quiet_nan = (bits >> 16) | 0x40
        out = tl.where((bits & 0x7FFFFFFF) > 0x7F800000, quiet_nan, rounded)
        return out.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return value.to(ptr.dtype.element_ty)


@triton.jit
def _uniform_numerator(word):
    """The odd integer 2 (w >> 9) + 1 in [1, 2**24): the uniform is its value / 2**24."""
    return ((word >> 9) << 1) | 1


@triton.jit
def _minus_two_log_uniform(n):
    """-2 log(n / 2**24) in float32: e ln2 + 2 atanh((m - 1) / (m + 1)), m in [sqrt(1/2), sqrt(2))."""
    u = n.to(tl.float32) * 5.9604644775390625e-8
    bits = u.to(tl.uint32, bitcast=True)
    e = (bits >> 23).to(tl.int32) - 127
    m = ((bits & 0x007FFFFF) | 0x3F800000).to(tl.float32, bitcast=True)
    big = m > 1.41421356
    m = tl.where(big, 0.5 * m, m)
    e = tl.where(big, e + 1, e)
    f = m - 1.0
    s = tl.div_rn(f, 2.0 + f)
    s2 = s * s
    poly = s2 * (0.6666666666666666 + s2 * (0.4 + s2 * (0.2857142857142857 + s2 * 0.2222222222222222)))
    log_m = 2.0 * s + s * poly
    ef = e.to(tl.float32)
    log_u = ef * 0.693145751953125 + (ef * 1.4286068202862268e-06 + log_m)
    return -2.0 * log_u


@triton.jit
def _sincos_two_pi_uniform(n):
    """(sin, cos) of 2 pi n / 2**24: exact integer quadrant reduction, Taylor on [-pi/4, pi/4]."""
    q = (n + (1 << 21)) >> 22
    rem = n.to(tl.int32) - (q << 22).to(tl.int32)
    t = rem.to(tl.float32) * (5.9604644775390625e-8 * 6.28318530717958647692)
    t2 = t * t
    sin_t = t + t * t2 * (
        -0.16666666666666666 + t2 * (0.008333333333333333 + t2 * (-1.984126984126984e-4 + t2 * 2.7557319223985893e-6))
    )
    cos_t = 1.0 + t2 * (
        -0.5
        + t2 * (0.041666666666666664 + t2 * (-0.001388888888888889 + t2 * (2.48015873015873e-05 + t2 * -2.755731922398589e-07)))
    )
    quadrant = q & 3
    odd = (quadrant & 1) != 0
    s_rot = tl.where(odd, cos_t, sin_t)
    c_rot = tl.where(odd, sin_t, cos_t)
    sin_out = tl.where(quadrant >= 2, -s_rot, s_rot)
    cos_out = tl.where((quadrant == 1) | (quadrant == 2), -c_rot, c_rot)
    return sin_out, cos_out


@triton.jit
def _philox_block_normals(seed, step, block, GROUPS_: tl.constexpr):
    """Normals of elements [4 GROUPS_ block, 4 GROUPS_ (block + 1)) of a row, in element order."""
    g = block.to(tl.int64) * GROUPS_ + tl.arange(0, GROUPS_).to(tl.int64)
    c0 = (g & 0xFFFFFFFF).to(tl.uint32)
    c1 = (g >> 32).to(tl.uint32)
    zero = tl.zeros([GROUPS_], dtype=tl.int64)
    c2 = ((zero + step) & 0xFFFFFFFF).to(tl.uint32)
    c3 = (((zero + step) >> 32) & 0xFFFFFFFF).to(tl.uint32)
    w0, w1, w2, w3 = tl.philox(seed, c0, c1, c2, c3, 10)
    r01 = tl.sqrt_rn(_minus_two_log_uniform(_uniform_numerator(w0)))
    r23 = tl.sqrt_rn(_minus_two_log_uniform(_uniform_numerator(w2)))
    s1, k1 = _sincos_two_pi_uniform(_uniform_numerator(w1))
    s3, k3 = _sincos_two_pi_uniform(_uniform_numerator(w3))
    z0, z1, z2, z3 = r01 * k1, r01 * s1, r23 * k3, r23 * s3
    # [g, i, j] -> element 4 g + 2 i + j: j picks (z0, z2) vs (z1, z3), i picks the pair.
    z = tl.join(tl.join(z0, z2), tl.join(z1, z3))
    return tl.reshape(z, [4 * GROUPS_])


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _sample_kernel(
    x_ptr, v_ptr, sigma_ptr, next_sigma_ptr, std_ptr, seeds_ptr, steps_ptr, noise_ptr,
    prev_ptr, mean_ptr, partial_ptr, M, n_blocks,
    FAMILY: tl.constexpr, HAS_NOISE: tl.constexpr, RETURN_MEAN: tl.constexpr, GROUPS_: tl.constexpr,
):
    block = tl.program_id(0)
    row = tl.program_id(1)
    cx, cv, sd, inv_var, log_norm = _row_coefficients(sigma_ptr, next_sigma_ptr, std_ptr, row, FAMILY)
    idx = block.to(tl.int64) * (4 * GROUPS_) + tl.arange(0, 4 * GROUPS_)
    mask = idx < M
    offs = row.to(tl.int64) * M + idx
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    mean = cx * x + cv * v
    if RETURN_MEAN:
        tl.store(mean_ptr + offs, mean, mask=mask)
    if FAMILY == 0:
        tl.store(prev_ptr + offs, _to_element(mean, prev_ptr), mask=mask)
        tl.store(partial_ptr + row * n_blocks + block, 0.0)
    else:
        if HAS_NOISE:
            z = tl.load(noise_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        else:
            seed = tl.load(seeds_ptr + row)
            step = tl.load(steps_ptr + row)
            z = _philox_block_normals(seed, step, block, GROUPS_)
        prev = _to_element(mean + sd * z, prev_ptr)
        tl.store(prev_ptr + offs, prev, mask=mask)
        # The log-prob of the sample as stored: rounded to x's type first.
        d = tl.where(mask, prev.to(tl.float32) - mean, 0.0)
        tl.store(partial_ptr + row * n_blocks + block, tl.sum(d * d, axis=0))


@triton.jit
def _score_kernel(
    x_ptr, v_ptr, prev_ptr, old_ptr, sigma_ptr, next_sigma_ptr, std_ptr,
    mean_ptr, partial_ptr, bias_partial_ptr, M, n_blocks,
    FAMILY: tl.constexpr, HAS_OLD: tl.constexpr, RETURN_MEAN: tl.constexpr, BLOCK: tl.constexpr,
):
    block = tl.program_id(0)
    row = tl.program_id(1)
    cx, cv, sd, inv_var, log_norm = _row_coefficients(sigma_ptr, next_sigma_ptr, std_ptr, row, FAMILY)
    idx = block.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < M
    offs = row.to(tl.int64) * M + idx
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    mean = cx * x + cv * v
    if RETURN_MEAN:
        tl.store(mean_ptr + offs, mean, mask=mask)
    if FAMILY == 0:
        tl.store(partial_ptr + row * n_blocks + block, 0.0)
    else:
        p = tl.load(prev_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        d = tl.where(mask, p - mean, 0.0)
        tl.store(partial_ptr + row * n_blocks + block, tl.sum(d * d, axis=0))
    if HAS_OLD:
        o = tl.load(old_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        e = tl.where(mask, mean - o, 0.0)
        tl.store(bias_partial_ptr + row * n_blocks + block, tl.sum(e * e, axis=0))


@triton.jit
def _finalize_kernel(
    partial_ptr, bias_partial_ptr, sigma_ptr, next_sigma_ptr, std_ptr, log_prob_ptr, bias_ptr, M, n_blocks,
    FAMILY: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr,
):
    """Per row: log_prob = -sum / (2 std^2 M) + log_norm, bias = sum / M (float64, fixed order)."""
    row = tl.program_id(0)
    cx, cv, sd, inv_var, log_norm = _row_coefficients(sigma_ptr, next_sigma_ptr, std_ptr, row, FAMILY)
    acc = tl.zeros([BLOCK], dtype=tl.float64)
    acc_b = tl.zeros([BLOCK], dtype=tl.float64)
    # A while loop, not range(0, n_blocks, BLOCK): triton 3.6's interpreter takes a runtime
    # bound with int() of a one-element array, which numpy 2.5 refuses. start is a runtime
    # int32 from the first line (row * 0), as a loop-carried value must be in compiled code.
    start = row * 0
    while start < n_blocks:
        j = start + tl.arange(0, BLOCK)
        m = j < n_blocks
        acc += tl.load(partial_ptr + row * n_blocks + j, mask=m, other=0.0).to(tl.float64)
        if HAS_BIAS:
            acc_b += tl.load(bias_partial_ptr + row * n_blocks + j, mask=m, other=0.0).to(tl.float64)
        start += BLOCK
    total = tl.sum(acc, axis=0)
    if FAMILY == 0:
        tl.store(log_prob_ptr + row, 0.0)
    else:
        tl.store(log_prob_ptr + row, (-0.5 * inv_var * total / M + log_norm).to(tl.float32))
    if HAS_BIAS:
        tl.store(bias_ptr + row, (tl.sum(acc_b, axis=0) / M).to(tl.float32))


@triton.jit
def _backward_kernel(
    glp_ptr, gmean_ptr, gbias_ptr, x_ptr, v_ptr, prev_ptr, old_ptr, sigma_ptr, next_sigma_ptr, std_ptr,
    gv_ptr, gx_ptr, gold_ptr, M,
    FAMILY: tl.constexpr, HAS_GMEAN: tl.constexpr, HAS_GBIAS: tl.constexpr,
    NEED_GX: tl.constexpr, NEED_GOLD: tl.constexpr, BLOCK: tl.constexpr,
):
    """d loss / d mean = a_lp (prev - mean) + a_b (mean - old) + grad_mean; grad_v = cv *, grad_x = cx *."""
    block = tl.program_id(0)
    row = tl.program_id(1)
    cx, cv, sd, inv_var, log_norm = _row_coefficients(sigma_ptr, next_sigma_ptr, std_ptr, row, FAMILY)
    idx = block.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < M
    offs = row.to(tl.int64) * M + idx
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    mean = cx * x + cv * v
    if FAMILY == 0:
        g = mean * 0.0
    else:
        a_lp = (tl.load(glp_ptr + row).to(tl.float64) * inv_var / M).to(tl.float32)
        p = tl.load(prev_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        g = a_lp * (p - mean)
    if HAS_GBIAS:
        a_b = (tl.load(gbias_ptr + row).to(tl.float64) * 2.0 / M).to(tl.float32)
        o = tl.load(old_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        db = a_b * (mean - o)
        g += db
        if NEED_GOLD:
            tl.store(gold_ptr + offs, _to_element(-db, gold_ptr), mask=mask)
    if HAS_GMEAN:
        g += tl.load(gmean_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if NEED_GX:
        tl.store(gx_ptr + offs, _to_element(cx * g, gx_ptr), mask=mask)
    tl.store(gv_ptr + offs, _to_element(cv * g, gv_ptr), mask=mask)


@triton.jit
def _normals_kernel(seeds_ptr, steps_ptr, out_ptr, M, GROUPS_: tl.constexpr):
    block = tl.program_id(0)
    row = tl.program_id(1)
    idx = block.to(tl.int64) * (4 * GROUPS_) + tl.arange(0, 4 * GROUPS_)
    z = _philox_block_normals(tl.load(seeds_ptr + row), tl.load(steps_ptr + row), block, GROUPS_)
    tl.store(out_ptr + row.to(tl.int64) * M + idx, z, mask=idx < M)


# ----------------------------------------------------------------------------- launchers
# The argument rules live in precise_fast/sde/arguments.py (the public sample_step /
# score_step apply them); a launcher only asserts the invariants they establish, so a
# direct call of the raw op with bad input fails with a RuntimeError, never in a kernel.

# Every launch: no fp contraction (a * b + c stays two IEEE roundings, no FMA), as the
# CPU build's -ffp-contract=off and nvcc's --fmad=false, with tl.div_rn / tl.sqrt_rn in
# the float32 noise math: one seed gives bitwise the same normals and samples as the C++
# kernels (the interpreter always computes that way).
LAUNCH_OPTIONS = {"enable_fp_fusion": False}
# Under torch.compile the launches become Inductor's user-kernel nodes, and torch 2.11's
# Inductor drops launch options it does not know (pytorch/pytorch PR 187028 keeps them,
# after 2.11): Triton then compiles with its default, fusion on. Triton reads that default
# from the environment at each compile, and Inductor's generated kernels pass the option
# themselves, so this reaches only user kernels compiled without one, like these. Set at
# import, before a compile of these ops can start Inductor's worker processes (they inherit
# it); tests/kernels/test_sm90_compile.py checks the compiled graph's PTX on the GPU.
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "0")


def _expect(ok: bool, what: str) -> None:
    if not ok:
        raise RuntimeError(f"precise_fast Triton op: invariant violated: {what} (call precise_fast.sde.sample_step / score_step for checked arguments)")


def _expect_latents(x: torch.Tensor, **tensors) -> None:
    _expect(x.dim() >= 1 and x.shape[0] > 0 and x.numel() > 0, f"x has no rows or no elements: {tuple(x.shape)}")
    _expect(x.shape[0] <= MAX_GRID_ROWS, f"{x.shape[0]} rows exceed the grid's {MAX_GRID_ROWS}")
    _expect(x.device.type == "cuda" or _INTERPRETING, f"tensors on {x.device} need TRITON_INTERPRET=1")
    for name, t in (("x", x), *tensors.items()):
        if t is None:
            continue
        _expect(t.dtype in _DTYPES, f"{name} is {t.dtype}, not float32 / bfloat16 / float16")
        _expect(t.shape == x.shape and t.device == x.device, f"{name} is not shaped and placed like x")


def _expect_rows(x: torch.Tensor, dtype: torch.dtype = torch.float32, **rows) -> None:
    for name, t in rows.items():
        if t is None:
            continue
        _expect(
            t.shape == (x.shape[0],) and t.dtype == dtype and t.device == x.device and t.is_contiguous(),
            f"{name} is not a contiguous ({x.shape[0]},) {dtype} tensor",
        )


def _family(family: int) -> int:
    """The kind's family as the kind table numbers it (``precise_fast.kinds.FAMILY``); the
    kernels branch on it at compile time (``FAMILY`` constexpr: 0 ode, 1 Euler-Maruyama, 2
    coefficient-preserving), so no backend spells a kind name."""
    _expect(family in (0, 1, 2), f"family={family!r} is not a sampler family")
    return family


def _launch(kernel, grid, *args, **meta) -> None:
    """``kernel[grid](*args, **meta)`` with LAUNCH_OPTIONS, through ``wrap_triton``.

    On GPU, tracing (FakeTensors) turns the call into Inductor's triton-kernel node. The
    interpreter runs kernels in numpy and cannot run one on FakeTensors: there the launch
    is skipped while tracing, the launcher having already made the outputs' shapes.
    """
    if _INTERPRETING and any(isinstance(a, torch.Tensor) and is_fake(a) for a in args):
        return
    kernel[grid](*args, **meta, **LAUNCH_OPTIONS)


def _sample_into(x, v, sigma, next_sigma, std, seeds, step_index, noise, family, prev, log_prob, mean) -> None:
    family = _family(family)
    _expect_latents(x, v=v, noise=noise)
    _expect_rows(x, sigma=sigma, next_sigma=next_sigma, std=std, log_prob=log_prob)
    has_noise = family != FAMILY_ODE and noise is not None
    if family != FAMILY_ODE and not has_noise:
        _expect(seeds is not None and step_index is not None, "sampling without noise needs seeds and step_index")
        _expect_rows(x, torch.int64, seeds=seeds, step_index=step_index)
    _expect(prev.shape == x.shape and prev.dtype == x.dtype and prev.is_contiguous(), "prev_sample buffer is not x-like and contiguous")
    if mean is not None:
        _expect(mean.shape == x.shape and mean.dtype == torch.float32 and mean.is_contiguous(), "mean buffer is not float32, x-like and contiguous")
    x, v = x.contiguous(), v.contiguous()
    noise = noise.contiguous() if has_noise else None
    batch, m = x.shape[0], x.numel() // x.shape[0]
    n_blocks = triton.cdiv(m, ELEMS_PER_PROGRAM)
    partial = torch.empty((batch, n_blocks), dtype=torch.float32, device=x.device)
    dummy = partial  # stands for pointers the constexpr flags switch off
    draws = family != FAMILY_ODE and not has_noise
    _launch(
        wrap_triton(_sample_kernel), (n_blocks, batch),
        x, v, sigma, next_sigma, std,
        seeds if draws else dummy, step_index if draws else dummy, noise if has_noise else dummy,
        prev, dummy if mean is None else mean, partial, m, n_blocks,
        FAMILY=family, HAS_NOISE=has_noise, RETURN_MEAN=mean is not None, GROUPS_=GROUPS,
    )
    _launch(
        wrap_triton(_finalize_kernel), (batch,),
        partial, partial, sigma, next_sigma, std, log_prob, log_prob, m, n_blocks,
        FAMILY=family, HAS_BIAS=False, BLOCK=FINALIZE_BLOCK,
    )


# ----------------------------------------------------------------------------- ops


def _define_op(name: str, mutates_args=()):
    """The one registration of each Triton op, on GPU and under TRITON_INTERPRET=1 alike:
    ``triton_op``, whose fake (meta) kernel is the launcher itself run on FakeTensors.

    On GPU torch.compile decomposes the op into its launcher and sees the kernels. The
    interpreter's kernels are Python functions Inductor cannot lower, so there the op
    stays opaque under functionalization (as ``torch.export`` keeps it on GPU).
    """

    def register(fn):
        op = triton_op(name, mutates_args=mutates_args)(fn)
        if _INTERPRETING:
            op.register_torch_dispatch(FunctionalTensorMode, _opaque_under_functionalization)
        return op

    return register


def _opaque_under_functionalization(mode, op, types, args, kwargs):
    return mode.__torch_dispatch__(op, types, args, kwargs)


@_define_op("precise_fast::triton_sample_step")
def triton_sample_step(
    x: torch.Tensor,
    v: torch.Tensor,
    sigma: torch.Tensor,
    next_sigma: torch.Tensor,
    std: torch.Tensor,
    seeds: torch.Tensor | None,
    step_index: torch.Tensor | None,
    noise: torch.Tensor | None,
    family: int,
    return_mean: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    prev = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    mean = torch.empty(x.shape if return_mean else (0,), dtype=torch.float32, device=x.device)
    log_prob = torch.empty((x.shape[0],), dtype=torch.float32, device=x.device)
    _sample_into(x, v, sigma, next_sigma, std, seeds, step_index, noise, family, prev, log_prob, mean if return_mean else None)
    return prev, log_prob, mean


@_define_op("precise_fast::triton_sample_step_out", mutates_args=("prev_sample", "log_prob", "mean"))
def triton_sample_step_out(
    x: torch.Tensor,
    v: torch.Tensor,
    sigma: torch.Tensor,
    next_sigma: torch.Tensor,
    std: torch.Tensor,
    seeds: torch.Tensor | None,
    step_index: torch.Tensor | None,
    noise: torch.Tensor | None,
    family: int,
    prev_sample: torch.Tensor,
    log_prob: torch.Tensor,
    mean: torch.Tensor | None,
) -> None:
    _sample_into(x, v, sigma, next_sigma, std, seeds, step_index, noise, family, prev_sample, log_prob, mean)


@_define_op("precise_fast::triton_score_step")
def triton_score_step(
    x: torch.Tensor,
    v: torch.Tensor,
    prev_sample: torch.Tensor,
    sigma: torch.Tensor,
    next_sigma: torch.Tensor,
    std: torch.Tensor,
    old_mean: torch.Tensor | None,
    family: int,
    return_mean: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    family = _family(family)
    _expect_latents(x, v=v, prev_sample=prev_sample, old_mean=old_mean)
    _expect_rows(x, sigma=sigma, next_sigma=next_sigma, std=std)
    has_old = old_mean is not None
    x, v, prev_sample = x.contiguous(), v.contiguous(), prev_sample.contiguous()
    old_mean = old_mean.contiguous() if has_old else None
    batch, m = x.shape[0], x.numel() // x.shape[0]
    mean = torch.empty(x.shape if return_mean else (0,), dtype=torch.float32, device=x.device)
    log_prob = torch.empty((batch,), dtype=torch.float32, device=x.device)
    bias = torch.empty((batch if has_old else 0,), dtype=torch.float32, device=x.device)
    n_blocks = triton.cdiv(m, ELEMS_PER_PROGRAM)
    partial = torch.empty((batch, n_blocks), dtype=torch.float32, device=x.device)
    bias_partial = torch.empty((batch, n_blocks) if has_old else (1,), dtype=torch.float32, device=x.device)
    _launch(
        wrap_triton(_score_kernel), (n_blocks, batch),
        x, v, prev_sample, old_mean if has_old else partial, sigma, next_sigma, std,
        mean if return_mean else partial, partial, bias_partial, m, n_blocks,
        FAMILY=family, HAS_OLD=has_old, RETURN_MEAN=return_mean, BLOCK=ELEMS_PER_PROGRAM,
    )
    _launch(
        wrap_triton(_finalize_kernel), (batch,),
        partial, bias_partial, sigma, next_sigma, std, log_prob, bias if has_old else log_prob, m, n_blocks,
        FAMILY=family, HAS_BIAS=has_old, BLOCK=FINALIZE_BLOCK,
    )
    return log_prob, mean, bias


@_define_op("precise_fast::triton_score_step_backward")
def triton_score_step_backward(
    grad_log_prob: torch.Tensor,
    grad_mean: torch.Tensor | None,
    grad_guard_bias: torch.Tensor | None,
    x: torch.Tensor,
    v: torch.Tensor,
    prev_sample: torch.Tensor,
    sigma: torch.Tensor,
    next_sigma: torch.Tensor,
    std: torch.Tensor,
    old_mean: torch.Tensor | None,
    family: int,
    need_grad_x: bool,
    need_grad_old_mean: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    family = _family(family)
    _expect_latents(x, v=v, prev_sample=prev_sample, old_mean=old_mean)
    _expect_rows(x, sigma=sigma, next_sigma=next_sigma, std=std, grad_log_prob=grad_log_prob, grad_guard_bias=grad_guard_bias)
    has_old = old_mean is not None
    _expect(grad_guard_bias is None or has_old, "grad_guard_bias needs old_mean")
    has_gmean = grad_mean is not None
    if has_gmean:
        _expect(grad_mean.shape == x.shape and grad_mean.dtype == torch.float32, "grad_mean is not float32 and x-like")
        grad_mean = grad_mean.contiguous()
    x, v, prev_sample = x.contiguous(), v.contiguous(), prev_sample.contiguous()
    old_mean = old_mean.contiguous() if has_old else None
    batch, m = x.shape[0], x.numel() // x.shape[0]
    has_gbias = grad_guard_bias is not None
    need_old = need_grad_old_mean and has_old
    grad_v = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    grad_x = torch.empty(x.shape if need_grad_x else (0,), dtype=x.dtype, device=x.device)
    if need_old:
        # Without a bias gradient nothing reaches old_mean: its gradient is zero.
        grad_old = (torch.empty if has_gbias else torch.zeros)(old_mean.shape, dtype=old_mean.dtype, device=x.device)
    else:
        grad_old = torch.empty((0,), dtype=torch.float32, device=x.device)
    _launch(
        wrap_triton(_backward_kernel), (triton.cdiv(m, ELEMS_PER_PROGRAM), batch),
        grad_log_prob, grad_mean if has_gmean else grad_log_prob, grad_guard_bias if has_gbias else grad_log_prob,
        x, v, prev_sample, old_mean if has_old else grad_log_prob, sigma, next_sigma, std,
        grad_v, grad_x if need_grad_x else grad_v, grad_old if (need_old and has_gbias) else grad_v, m,
        FAMILY=family, HAS_GMEAN=has_gmean, HAS_GBIAS=has_gbias, NEED_GX=need_grad_x,
        NEED_GOLD=need_old and has_gbias, BLOCK=ELEMS_PER_PROGRAM,
    )
    return grad_v, grad_x, grad_old


@_define_op("precise_fast::triton_philox_normal")
def triton_philox_normal(seeds: torch.Tensor, step_index: torch.Tensor, row_elems: int) -> torch.Tensor:
    _expect(seeds.dim() == 1 and 0 < seeds.shape[0] <= MAX_GRID_ROWS, f"seeds has shape {tuple(seeds.shape)}")
    _expect(row_elems > 0, f"row_elems must be positive, got {row_elems}")
    _expect(seeds.device.type == "cuda" or _INTERPRETING, f"tensors on {seeds.device} need TRITON_INTERPRET=1")
    batch = seeds.shape[0]
    seeds = seeds.to(torch.int64).contiguous()
    step_index = step_index.to(torch.int64).expand(batch).contiguous()
    out = torch.empty((batch, row_elems), dtype=torch.float32, device=seeds.device)
    _launch(wrap_triton(_normals_kernel), (triton.cdiv(row_elems, ELEMS_PER_PROGRAM), batch), seeds, step_index, out, row_elems, GROUPS_=GROUPS)
    return out


# ----------------------------------------------------------------------------- autograd
# Only score mode is differentiable: sample mode draws data for the rollout buffer. The
# backward recomputes the mean from (x, v) in the same pass instead of saving it: one
# tensor less to keep per trained step, and the pass is memory-bound anyway. The C++ op's
# autograd is the same rules in C++ (csrc/score_autograd.cpp), which must not be Python: it
# runs on every call of the op.


def _score_setup_context(ctx, inputs, output):
    x, v, prev_sample, sigma, next_sigma, std, old_mean, family, return_mean = inputs
    ctx.save_for_backward(x, v, prev_sample, sigma, next_sigma, std, old_mean)
    ctx.family = family
    ctx.return_mean = return_mean


def _score_backward(ctx, grad_log_prob, grad_mean, grad_guard_bias):
    x, v, prev_sample, sigma, next_sigma, std, old_mean = ctx.saved_tensors
    need_v, need_x = ctx.needs_input_grad[1], ctx.needs_input_grad[0]
    need_old = old_mean is not None and ctx.needs_input_grad[6]
    if not (need_v or need_x or need_old):
        return (None,) * 9
    if grad_log_prob is None:
        grad_log_prob = torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)
    # An output that was returned empty has an empty gradient: nothing flows from it.
    if grad_mean is not None and (not ctx.return_mean or grad_mean.numel() == 0):
        grad_mean = None
    if grad_guard_bias is not None and (old_mean is None or grad_guard_bias.numel() == 0):
        grad_guard_bias = None
    grad_v, grad_x, grad_old = triton_score_step_backward(
        grad_log_prob.to(torch.float32).contiguous(),
        None if grad_mean is None else grad_mean.to(torch.float32).contiguous(),
        None if grad_guard_bias is None else grad_guard_bias.to(torch.float32).contiguous(),
        x, v, prev_sample, sigma, next_sigma, std, old_mean, ctx.family, need_x, need_old,
    )
    return (
        grad_x if need_x else None,
        grad_v if need_v else None,
        None, None, None, None,
        grad_old if need_old else None,
        None, None,
    )


torch.library.register_autograd("precise_fast::triton_score_step", _score_backward, setup_context=_score_setup_context)
