"""Figures for the PINN experiments (matplotlib, Agg backend, imported lazily)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._mpl import pyplot as _plt


def solution_figures(out: Path, xs, ts, pred, exact):
    """``solution.png`` (prediction beside the exact solution) and ``error.png`` (|error|)."""
    plt = _plt()
    ext = [float(ts.min()), float(ts.max()), float(xs.min()), float(xs.max())]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    vmax = float(np.abs(exact).max())
    for ax, field, title in zip(axes, (pred, exact), ("PINN prediction", "exact solution")):
        im = ax.imshow(field, origin="lower", extent=ext, aspect="auto", cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        ax.set_xlabel("t"), ax.set_ylabel("x"), ax.set_title(title)
    fig.colorbar(im, ax=axes, shrink=0.9)
    fig.savefig(out / "solution.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5.5, 4), constrained_layout=True)
    im = ax.imshow(np.abs(pred - exact), origin="lower", extent=ext, aspect="auto", cmap="magma")
    ax.set_xlabel("t"), ax.set_ylabel("x"), ax.set_title("absolute error |u - u*|")
    fig.colorbar(im, ax=ax)
    fig.savefig(out / "error.png", dpi=110)
    plt.close(fig)


def training_figures(out: Path, history: dict, label: str):
    """``losses.png``, ``weights.png`` and ``diagnostics.png`` from a training history."""
    plt = _plt()
    steps = np.asarray(history["step"])
    names = list(history["block_loss"][0]) if history["block_loss"] else []
    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    for n in names:
        ax.semilogy(steps, [b[n] for b in history["block_loss"]], label=f"{n}")
    ax.set_xlabel("step"), ax.set_ylabel("unweighted block loss"), ax.set_title(f"block losses ({label})")
    ax.legend()
    fig.savefig(out / "losses.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    for n in names:
        line = ax.semilogy(steps, [w[n] for w in history["weights"]], label=f"{n} ({label})")[0]
        exact = history.get("exact_weights") or []
        if exact and any(e is not None for e in exact):
            ex = [np.nan if e is None else e[n] for e in exact]
            ax.semilogy(steps, ex, "--", color=line.get_color(), label=f"{n} (exact)")
    ax.set_xlabel("step"), ax.set_ylabel("weight lambda_i"), ax.set_title("NTK weights over training")
    ax.legend(fontsize=8)
    fig.savefig(out / "weights.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    axes[0].loglog(steps, history["avg_res_sq"], label="(1/T) sum ||R_t||^2")
    axes[0].loglog(steps, history["avg_grad_sq"], label="(1/T) sum ||grad L_t||^2")
    axes[0].set_xlabel("T (steps)"), axes[0].set_title("running averages (convergence theorem)")
    axes[0].legend()
    axes[1].semilogy(steps, history["min_weight"], label="min weight so far")
    axes[1].semilogy(steps, history["max_weight"], label="max weight so far")
    axes[1].set_xlabel("step"), axes[1].set_title("weight bounds l_min, l_max")
    axes[1].legend()
    fig.savefig(out / "diagnostics.png", dpi=110)
    plt.close(fig)


def compare_figure(out: Path, runs: dict):
    """``compare.png``: relative L2 error over training for each run."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    for label, hist in runs.items():
        ax.semilogy(hist["step"], hist["relative_l2"], label=label)
    ax.set_xlabel("step"), ax.set_ylabel("relative L2 error"), ax.set_title("weighting compared")
    ax.legend()
    fig.savefig(out / "compare.png", dpi=110)
    plt.close(fig)


def fd_bias_figure(out: Path, rows: list):
    """``fd_bias.png``: relative bias of finite-difference ||J v||^2 against h."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    for r in rows:
        ax.loglog(r["h"], np.maximum(np.abs(r["relative_bias"]), 1e-17), "o-", label=f"{r['dtype']}, {r['scheme']}")
    ax.set_xlabel("step h"), ax.set_ylabel("|relative bias| of ||J v||^2")
    ax.set_title("finite-difference sketch: bias vs step size")
    ax.invert_xaxis()
    ax.legend()
    fig.savefig(out / "fd_bias.png", dpi=110)
    plt.close(fig)
