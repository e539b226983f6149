"""The samplers' marginal laws, as a table and a picture.

For Gaussian data the analytic denoiser propagates each sampler's marginal variance
exactly (``precise_fast.sde.analytic``); this shows which samplers keep the right marginal
and which converge as the step count grows (SAMPLERS.md, "What theory says must hold").
"""

from __future__ import annotations

import os

import torch

from ..sde import DEFAULT_ETA, KINDS, linear_sigmas
from ..sde.analytic import propagate_variance, true_variance

STEP_COUNTS = (10, 100, 1000)


def final_error(kind: str, num_steps: int, q: float) -> float:
    sigmas = linear_sigmas(num_steps)
    var = propagate_variance(sigmas, kind, DEFAULT_ETA[kind], q)
    return (var[-1] / true_variance(0.0, q) - 1).item()


def point_mass_excess(kind: str, num_steps: int = 20) -> float:
    """Relative excess variance at the last non-terminal step for point-mass data."""
    sigmas = linear_sigmas(num_steps)
    var = propagate_variance(sigmas, kind, DEFAULT_ETA[kind], 0.0)
    return (var[-2] / true_variance(sigmas[-2], 0.0) - 1).item()


def laws_table(q: float = 1.0) -> dict[str, dict[str, float]]:
    return {
        kind: {
            "eta": DEFAULT_ETA[kind],
            "point_mass_excess_20": point_mass_excess(kind),
            **{f"final_error_{n}": final_error(kind, n, q) for n in STEP_COUNTS},
        }
        for kind in KINDS
    }


def plot_laws(path: str, q: float = 1.0) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    sigmas = linear_sigmas(20)
    for kind in KINDS:
        var = propagate_variance(sigmas, kind, DEFAULT_ETA[kind], q)
        left.plot(sigmas[1:-1].numpy(), (var[:-1] / true_variance(sigmas[1:-1], q) - 1).numpy(), marker="o", label=kind)
        errors = [abs(final_error(kind, n, q)) for n in (5, 10, 30, 100, 300, 1000)]
        right.loglog([5, 10, 30, 100, 300, 1000], [max(e, 1e-12) for e in errors], marker="o", label=kind)
    left.invert_xaxis()
    left.set(xlabel="sigma after the step", ylabel="relative error of marginal variance",
             title=f"20 linear steps, Gaussian data q={q}")
    right.set(xlabel="number of steps", ylabel="|relative error| of final variance", title="SDE consistency")
    left.axhline(0, color="black", lw=0.5)
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(out_dir: str, q: float = 1.0) -> dict:
    from rich.console import Console
    from rich.table import Table

    os.makedirs(out_dir, exist_ok=True)
    rows = laws_table(q)
    table = Table(title=f"Marginal variance error, Gaussian data q={q} (exact propagation)")
    table.add_column("kind")
    table.add_column("eta", justify="right")
    table.add_column("point-mass excess @20", justify="right")
    for n in STEP_COUNTS:
        table.add_column(f"final error @{n}", justify="right")
    for kind, row in rows.items():
        table.add_row(kind, f"{row['eta']:g}", f"{row['point_mass_excess_20']:+.1%}",
                      *(f"{row[f'final_error_{n}']:+.2%}" for n in STEP_COUNTS))
    Console().print(table)
    path = os.path.join(out_dir, "laws.png")
    plot_laws(path, q)
    print(f"wrote {path}")
    torch.save(rows, os.path.join(out_dir, "laws.pt"))
    return rows
