"""Compile the Triton kernels of ``kernels/fused_step.py`` for sm_90 without a GPU, and the
rules their PTX must obey for the bitwise promise (one seed gives the same normals, samples
and log-probs as the C++ kernels, built with ``-ffp-contract=off`` / ``--fmad=false``).

Run as ``python -m tests.kernels.sm90_ptx VARIANTS.json OUT_DIR [--fusion]`` with
``TRITON_INTERPRET`` unset (``test_sm90_compile.py`` does): each variant, a kernel with its
pointer types and constexpr values, goes through triton's own stages (``ASTSource`` ->
ttir -> ttgir -> llir -> ptx) for ``GPUTarget("cuda", 90, 32)`` with the kernels' launch
options (``fused_step.LAUNCH_OPTIONS``), and its PTX is written to ``OUT_DIR/<index>.ptx``.
``--fusion`` compiles with ``enable_fp_fusion=True`` instead: the control that shows the
rules catch contraction.

The rules (:func:`violations`), instruction by instruction:

- no floating ``fma`` / ``mad``: contraction rounds ``a * b + c`` once where the C++ kernels
  round twice;
- every floating ``add`` / ``sub`` / ``mul`` carries a rounding modifier: PTX lets ptxas
  contract the bare forms (``mul.f32`` + ``add.f32``) into an FMA, never ``mul.rn.f32``;
- ``div`` / ``sqrt`` / ``rcp`` / ``rsqrt`` only as IEEE ``.rn`` (no ``.approx``, no
  ``div.full``), no ``ex2`` / ``lg2`` / ``sin`` / ``cos`` / ``tanh`` (hardware
  approximations), no ``.ftz`` (flushing subnormals, which the CPU keeps), no directed
  rounding (``.rz`` / ``.rm`` / ``.rp``) into a floating type.

None of Box-Muller's log / sin / cos is exempt: the kernels evaluate them with the same
polynomials as ``csrc/step_coefficients.h`` (``_minus_two_log_uniform``,
``_sincos_two_pi_uniform``), in plain float32 arithmetic under the rules above. One call is:
the per-row ``log(std)`` of the log-prob's normaliser (``tl.log`` on float64 in
``_row_coefficients``), which lowers to libdevice's ``__nv_log``, the CUDA math library's
double ``log`` that the C++ CUDA kernel's ``row_coefficients`` calls through
``step_coefficients.h``. Its body is written with explicit ``fma.rn.f64`` and a
``rcp.approx.ftz.f64`` seed refined by Newton steps (a correctly rounded algorithm, not
contraction or a hardware approximation), so exactly those two float64 forms are allowed on
the source lines that call ``tl.log``, and nowhere else.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
from pathlib import Path

FLOAT_TYPES = {"f16", "f16x2", "bf16", "bf16x2", "f32", "f64"}
_ROUNDING = {"rn", "rz", "rm", "rp"}
_APPROX_ONLY = {"ex2", "lg2", "sin", "cos", "tanh"}
_LIBDEVICE_LOG = {"fma.rn.f64", "rcp.approx.ftz.f64"}
_FILE = re.compile(r'^\s*\.file\s+(\d+)\s+"([^"]+)"')
_LOC = re.compile(r"^\s*\.loc\s+(\d+)\s+(\d+)")


def _rule(opcode: str) -> str | None:
    """Why ``opcode`` (e.g. ``mul.rn.f32``) breaks the bitwise promise, or None."""
    base, *mods = opcode.split(".")
    floating = any(m in FLOAT_TYPES for m in mods)
    if base in _APPROX_ONLY:
        return "hardware approximation"
    if "approx" in mods or "full" in mods:
        return "approximate"
    if floating and "ftz" in mods:
        return "flushes subnormals"
    if not floating:
        return None
    if base in ("fma", "mad"):
        return "contracted multiply-add"
    if base in ("add", "sub", "mul") and not _ROUNDING & set(mods):
        return "no rounding modifier: ptxas may contract it"
    if base in ("div", "sqrt", "rcp", "rsqrt") and "rn" not in mods:
        return "not IEEE round-to-nearest"
    if base == "cvt" and {"rz", "rm", "rp"} & set(mods) and len(mods) >= 2 and mods[-2] in FLOAT_TYPES:
        return "directed rounding into a float"
    return None


@functools.lru_cache(maxsize=None)
def _log_call_lines(path: str) -> frozenset[int]:
    """Lines of the source file ``path`` that call ``tl.log`` (none if it cannot be read)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return frozenset()
    return frozenset(i for i, line in enumerate(text.splitlines(), 1) if "tl.log(" in line)


def violations(ptx: str) -> list[str]:
    """``"file:line: opcode (why)"`` for each instruction of ``ptx`` that breaks the rules.

    The source lines come from the PTX's own ``.loc`` / ``.file`` records, so the libdevice
    log exemption holds wherever the kernel source lives (Inductor recompiles a copy of it).
    """
    # The .file table comes at the end of the PTX, after the code whose .loc lines cite it.
    files = {m.group(1): m.group(2) for m in map(_FILE.match, ptx.splitlines()) if m}
    where = (None, 0)
    out = []
    for raw in ptx.splitlines():
        if m := _LOC.match(raw):
            where = (files.get(m.group(1)), int(m.group(2)))
            continue
        line = raw.split("//", 1)[0].strip()
        if not line or line.startswith((".", "$", "{", "}", ")", "(")) or line.endswith(":"):
            continue
        tokens = line.split()
        opcode = tokens[1] if tokens[0].startswith("@") and len(tokens) > 1 else tokens[0]
        why = _rule(opcode)
        if why is None:
            continue
        if opcode in _LIBDEVICE_LOG and where[0] is not None and where[1] in _log_call_lines(where[0]):
            continue
        out.append(f"{where[0] and Path(where[0]).name}:{where[1]}: {opcode} ({why})")
    return out


def compile_ptx(kernel, signature: dict, constexprs: dict, options: dict, aligned: bool = False) -> str:
    """PTX of one kernel variant for sm_90, through triton's own stages up to ``ptx`` (no ptxas).

    ``aligned``: every pointer and integer argument is marked divisible by 16, as triton
    specializes a launch on 16-byte aligned tensors with sizes like 16 x 131072 (wider vector
    loads, another reduction layout); otherwise nothing is, as for an offset view or odd sizes."""
    from triton._C.libtriton import ir
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.compiler.compiler import make_backend

    target = GPUTarget("cuda", 90, 32)
    backend = make_backend(target)
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(kernel.arg_names)
             if aligned and name in signature} if aligned else None
    src = ASTSource(kernel, {**signature, **{k: "constexpr" for k in constexprs}}, constexprs, attrs)
    opts = backend.parse_options(dict(options))
    stages: dict = {}
    backend.add_stages(stages, opts, src.language)
    context = ir.context()
    ir.load_dialects(context)
    backend.load_dialects(context)
    module = src.make_ir(target, opts, backend.get_codegen_implementation(opts), backend.get_module_map(), context)
    metadata = {"target": target, **opts.__dict__}
    for ext, stage in stages.items():
        module = stage(module, metadata)
        if ext == "ptx":
            return module
    raise RuntimeError("triton's stages have no ptx stage")


def main(argv: list[str]) -> None:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("unset TRITON_INTERPRET: the interpreter's kernels cannot be compiled")
    from precise_fast.kernels import fused_step as fs

    variants = json.loads(Path(argv[0]).read_text())
    out = Path(argv[1])
    options = {**fs.LAUNCH_OPTIONS, "enable_fp_fusion": True} if "--fusion" in argv[2:] else fs.LAUNCH_OPTIONS
    for i, v in enumerate(variants):
        ptx = compile_ptx(getattr(fs, v["kernel"]), v["signature"], v["constexprs"], options, v.get("aligned", False))
        (out / f"{i}.ptx").write_text(ptx)


if __name__ == "__main__":
    main(sys.argv[1:])
