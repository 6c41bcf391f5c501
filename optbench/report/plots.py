"""The report's figures: loss curves (against tokens and time), learning-rate sensitivity and update RMS per
block per scenario, performance profiles.

Figures are built on matplotlib's object API (Figure, not pyplot), which needs no global backend
switch and keeps no figure alive after saving. Each optimizer keeps one colour across all figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from optbench.bench.suite import Scenario
from optbench.report import measures, progress, stability
from optbench.report.load import Bench
from optbench.report.profile import TAU_MAX, rho

DPI = 110


def colors(names: Sequence[str]) -> dict[str, str]:
    """tab10 (tab20 beyond ten optimizers), in the suite's order."""
    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    return path


def loss_curves(bench: Bench, scenario: Scenario, palette: dict[str, str]) -> Figure | None:
    """Val loss against tokens of each optimizer's completed final runs: mean over seeds, min-max band."""
    bands = {}
    for entry in bench.suite.optimizers:
        runs = measures.completed(bench.select(scenario.name, entry.name, "final"))
        curve = measures.mean_curve(runs)
        if not curve.empty:
            bands[entry.name] = (curve.index, curve, len(runs))
    return _loss_bands(bands, scenario, palette, "tokens", "final runs")


def loss_vs_time(bench: Bench, scenario: Scenario, palette: dict[str, str]) -> Figure | None:
    """Val loss against wall-clock seconds of each optimizer's completed final runs: at each evaluation step all
    seeds share, the mean loss (min-max band) at the seeds' mean time. Shows what a faster step buys."""
    bands = {}
    for name, runs in progress.finals_by_optimizer(bench, scenario).items():
        curve = progress.loss_against_time(runs)
        if not curve.empty:
            bands[name] = (curve["seconds"], curve, len(runs))
    return _loss_bands(bands, scenario, palette, "wall-clock seconds", "final runs against time")


def _loss_bands(bands: dict[str, tuple], scenario: Scenario, palette: dict[str, str], xlabel: str,
                title: str) -> Figure | None:
    """Per optimizer, (x, a frame with mean/min/max loss, seeds): a mean line over a min-max band; None if empty."""
    if not bands:
        return None
    fig = Figure(figsize=(7, 4.2))
    ax = fig.add_subplot()
    for name, (x, curve, n) in bands.items():
        color = palette[name]
        ax.plot(x, curve["mean"], color=color, label=f"{name} (n={n})")
        ax.fill_between(x, curve["min"], curve["max"], color=color, alpha=0.2, linewidth=0)
    if scenario.target_loss is not None:
        ax.axhline(scenario.target_loss, color="grey", linestyle="--", linewidth=1, label="target")
    _log_loss_axis(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("validation loss")
    ax.set_title(f"{scenario.name}: {title}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def update_rms_layers(bench: Bench, scenario: Scenario, palette: dict[str, str]) -> Figure | None:
    """Small multiples, one panel per optimizer (its lowest-seed final run with dynamics records): update RMS of
    each block over training, shallow blocks light and deep ones dark, on a shared log scale."""
    panels = {}
    for entry in bench.suite.optimizers:
        run = stability.dynamics_run(bench, scenario, entry.name)
        table = stability.update_rms_by_layer(run) if run is not None else None
        if table is not None and not table.empty:
            panels[entry.name] = table
    if not panels:
        return None
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(3.2 * cols, 2.6 * rows))
    axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False)
    depth = colormaps["viridis_r"]
    for ax, (name, table) in zip(axes.flat, panels.items()):
        layers = list(table.columns)
        for i, layer in enumerate(layers):
            ax.plot(table.index, table[layer], color=depth(0.15 + 0.85 * i / max(1, len(layers) - 1)),
                    linewidth=1, label=f"block {layer}" if i in (0, len(layers) - 1) else None)
        ax.set_title(name, fontsize="medium", color=palette[name])
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize="x-small")
    fig.supxlabel("step")
    fig.supylabel("update RMS (median over the block)")
    fig.suptitle(f"{scenario.name}: update RMS per block, final runs")
    return fig


def _log_loss_axis(ax) -> None:
    ax.set_yscale("log")
    # Losses span well under a decade, where log axes' default 10^x labels would show no numbers at all.
    plain = FuncFormatter(lambda y, _: f"{y:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)


def lr_points(bench: Bench, scenario: Scenario, optimizer: str) -> pd.DataFrame:
    """Per tuned lr: the best final loss over the other hyperparameters (NaN if none completed) and
    whether any run at that lr diverged."""
    rows = [{"lr": float(r.hparams["lr"]), "loss": r.final_loss, "diverged": r.status == "diverged"}
            for r in bench.select(scenario.name, optimizer, "tune")
            if isinstance(r.hparams.get("lr"), int | float) and r.hparams["lr"] > 0]
    frame = pd.DataFrame(rows, columns=["lr", "loss", "diverged"]).astype({"loss": float, "diverged": bool})
    return frame.groupby("lr").agg(loss=("loss", "min"), diverged=("diverged", "any"))


def lr_sensitivity(bench: Bench, scenario: Scenario, palette: dict[str, str]) -> Figure | None:
    """Final val loss against lr over the tuning runs; an lr where every run diverged is an x at the top."""
    points = {e.name: lr_points(bench, scenario, e.name) for e in bench.suite.optimizers}
    # Failed, pruned or unfinished runs have no loss to draw; an lr with only those shows nothing.
    points = {name: p[p["loss"].notna() | p["diverged"]] for name, p in points.items()}
    points = {name: p for name, p in points.items() if len(p)}
    if not points:
        return None
    finite = np.concatenate([p["loss"].dropna().to_numpy() for p in points.values()])
    low, high = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
    top = high + 0.15 * max(high - low, 0.05 * abs(high), 1e-3)
    fig = Figure(figsize=(7, 4.2))
    ax = fig.add_subplot()
    for name, p in points.items():
        color = palette[name]
        ok = p[p["loss"].notna()]
        ax.plot(ok.index, ok["loss"], marker="o", color=color, label=name)
        blown = p[p["loss"].isna() & p["diverged"]]
        ax.scatter(blown.index, np.full(len(blown), top), marker="x", s=60, color=color)
    if any(((p["loss"].isna()) & p["diverged"]).any() for p in points.values()):
        ax.scatter([], [], marker="x", color="black", label="diverged")
    ax.set_xscale("log")
    ax.set_ylim(low - 0.05 * (top - low), top + 0.05 * (top - low))
    ax.set_xlabel("learning rate (best over the other hyperparameters)")
    ax.set_ylabel("final validation loss")
    ax.set_title(f"{scenario.name}: learning-rate sensitivity (tuning runs)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def performance_profile(r: pd.DataFrame, palette: dict[str, str]) -> Figure:
    """rho(tau) step plots over [1, TAU_MAX], one line per optimizer."""
    finite = r.to_numpy()[np.isfinite(r.to_numpy())]
    taus = np.unique(np.concatenate([[1.0, TAU_MAX], finite[(finite >= 1) & (finite <= TAU_MAX)]]))
    profile = rho(r, taus)
    fig = Figure(figsize=(7, 4.2))
    ax = fig.add_subplot()
    for name in r.columns:
        ax.step(taus, profile[name], where="post", color=palette[name], label=name)
    ax.set_xlim(1, TAU_MAX)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("tau (steps to target / best optimizer's)")
    ax.set_ylabel("fraction of scenarios within tau")
    ax.set_title(f"performance profile over {len(r)} scenario{'s' if len(r) != 1 else ''}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def plot_name(kind: str, scenario: str) -> str:
    """A file name for a scenario's figure: scenario names may hold characters a path should not."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in scenario)
    return f"{kind}-{safe}.png"
