"""The chart of a sweep or of runs: memory, throughput and val_loss by job, or against the dataset size."""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from loaderlab.report.store import Selection, column
from loaderlab.report.table import BATCH_PARAMS, is_number, varied_params
from loaderlab.utils.paths import PROJECT_ROOT
from loaderlab.utils.system import MB

SCALING_PARAM = "data.num_images"
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22")
Labels = Callable[[pd.Series], str]


def loader_colours(loaders: list[str], conf_dir: Path = PROJECT_ROOT / "conf") -> dict[str, str]:
    """One colour per loader, the same in every report: by its place among conf/loader/*.yaml."""
    known = sorted(p.stem for p in (conf_dir / "loader").glob("*.yaml"))
    names = known + sorted(set(loaders) - set(known))
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def draw_chart(client: MlflowClient, sweep: Selection):
    """The matplotlib figure: bars per job, or lines against data.num_images for a scaling sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    jobs = sweep.jobs
    varied = varied_params(jobs)
    sizes = _numbers(column(jobs, f"params.{SCALING_PARAM}"))
    scaling = SCALING_PARAM in varied and len(sizes) >= 2
    label_of = _labeller(jobs, varied, leave_out=SCALING_PARAM if scaling else None)
    colours = loader_colours(column(jobs, "tags.loader").fillna("?").tolist())
    colour_of = lambda job: colours[job.get("tags.loader") or "?"]  # noqa: E731
    history = {
        job.run_id: sorted((m.step, m.value) for m in client.get_metric_history(job.run_id, "val_loss"))
        for job in jobs.itertuples()
    }
    draw_val_loss = any(len(points) >= 2 for points in history.values()) or (
        not scaling and any(history.values())
    )
    peak, added = column(jobs, "metrics.peak_rss_mb"), _added_mb(jobs)
    rate = column(jobs, "metrics.images_per_sec")
    style = {"label_of": label_of, "colour_of": colour_of}
    if scaling:
        panels = [
            partial(_lines, values=peak, ylabel="peak RSS (MB)", legend=True,
                    title="Peak host memory vs dataset size\n(flat = streaming works)"),
            partial(_lines, values=added, ylabel="peak - baseline RSS (MB)", reference=_array_mb(jobs, sizes),
                    title="Memory the run added vs dataset size\n(baseline: before the data pipeline)"),
            partial(_lines, values=rate, ylabel="throughput (images/s)",
                    title="Training throughput vs dataset size"),
        ]  # fmt: skip
    else:
        panels = [
            partial(_bars, values=peak, ylabel="peak RSS (MB)", baseline=jobs.get("metrics.baseline_rss_mb"),
                    title="Peak host memory by loader\n(grey: baseline before the data pipeline; "
                    "+N: what the run added)"),
            partial(_bars, values=rate, ylabel="throughput (images/s)",
                    title="Training throughput by loader\n(steady state, first epoch left out)"),
        ]  # fmt: skip
    count = len(panels) + draw_val_loss
    fig, axes = plt.subplots(1, count, figsize=(5.6 * count, 5.0), squeeze=False)
    axes = list(axes[0])
    for ax, panel in zip(axes, panels, strict=False):
        panel(ax, jobs, **style)
    if draw_val_loss:
        _val_loss_lines(axes[-1], jobs, history, label_of, colour_of)
    for ax in axes:
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.spines[["top", "right"]].set_visible(False)
    fig.suptitle(_title(sweep, varied), fontsize=13, fontweight="bold")
    fig.tight_layout()
    return fig


def _bars(
    ax,
    jobs: pd.DataFrame,
    values: pd.Series,
    ylabel: str,
    title: str,
    label_of: Labels,
    colour_of,
    baseline: pd.Series | None = None,
) -> None:  # noqa: E501
    """One bar per job; with a baseline, its part is grey and the bar is annotated '+what the run added'."""
    for i, (_, job) in enumerate(jobs.iterrows()):
        value = values.iloc[i]
        if pd.isna(value):
            ax.annotate(
                job["status"],
                (i, 0),
                xytext=(0, 4),
                textcoords="offset points",
                ha="center",
                va="bottom",
                rotation=90,
                color="#d62728",
                fontweight="bold",
            )
            continue
        text = f"{value:,.0f}"
        bottom = 0.0
        if baseline is not None and not pd.isna(baseline.iloc[i]):
            bottom = min(baseline.iloc[i], value)
            ax.bar(i, bottom, color="#d9d9d9", edgecolor="#999999", hatch="//", width=0.7)
            text += f"\n(+{value - bottom:,.0f})"
        ax.bar(i, value - bottom, bottom=bottom, color=colour_of(job), width=0.7)
        ax.annotate(
            text, (i, value), xytext=(0, 3), textcoords="offset points", ha="center", va="bottom", fontsize=9
        )
    ax.set_xticks(list(range(len(jobs))), [label_of(job) for _, job in jobs.iterrows()])
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    ax.margins(y=0.15)


def _lines(
    ax,
    jobs: pd.DataFrame,
    values: pd.Series,
    ylabel: str,
    title: str,
    label_of: Labels,
    colour_of,
    legend: bool = False,
    reference: tuple[list[float], list[float]] | None = None,
) -> None:  # noqa: E501
    """One line per label over data.num_images (log x axis); jobs without a value marked with a red x."""
    from matplotlib.ticker import FixedLocator, NullLocator

    sizes_col = column(jobs, f"params.{SCALING_PARAM}")
    frame = pd.DataFrame(
        {"n": pd.to_numeric(sizes_col, errors="coerce"), "y": pd.to_numeric(values, errors="coerce")}
    )
    frame["label"] = [label_of(job) for _, job in jobs.iterrows()]
    for label, group in frame.dropna(subset=["n"]).groupby("label", sort=False):
        points = group.dropna(subset=["y"]).sort_values("n")
        if not points.empty:
            ax.plot(
                points["n"],
                points["y"],
                marker="o",
                color=colour_of(jobs.loc[group.index[0]]),
                label=label,
                linewidth=2,
            )
        for index in group.index[group["y"].isna()]:
            job = jobs.loc[index]
            ax.plot([frame.at[index, "n"]], [0], marker="x", color="#d62728", markersize=10, clip_on=False)
            ax.annotate(
                f"{job.get('tags.loader')}\n{str(job['status']).lower()}",
                (frame.at[index, "n"], 0),
                xytext=(0, 8),
                textcoords="offset points",
                ha="center",
                fontsize=8,
                color="#d62728",
            )
    if reference is not None:
        xs, ys = reference
        (line,) = ax.plot(
            xs,
            ys,
            linestyle="--",
            color="#555555",
            linewidth=1.2,
            label="all images decoded as one uint8 array",
        )
        ax.annotate(
            f"{ys[-1]:,.0f} MB",
            (xs[-1], ys[-1]),
            xytext=(-4, 0),
            textcoords="offset points",
            ha="right",
            va="center",
            fontsize=8,
            color="#555555",
        )
        ax.legend(handles=[line], fontsize=8, frameon=False)  # the loaders' colours: first panel
    elif legend:
        ax.legend(fontsize=8, frameon=False)
    sizes = sorted(frame["n"].dropna().unique())
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(sizes))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{n:,.0f}" for n in sizes])
    ax.set_xlabel("number of images (data.num_images, log scale)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    ax.set_ylim(bottom=0)
    ax.margins(x=0.08, y=0.1)


def _val_loss_lines(ax, jobs: pd.DataFrame, history: dict, label_of: Labels, colour_of) -> None:
    """val_loss per epoch, one line per job."""
    for _, job in jobs.iterrows():
        if points := history.get(job["run_id"]):
            ax.plot(
                [step + 1 for step, _ in points],
                [value for _, value in points],
                marker="o",
                color=colour_of(job),
                label=label_of(job).replace("\n", " "),
                linewidth=2,
            )
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation loss (cross-entropy)")
    ax.set_title("Validation loss per epoch", fontsize=11)
    ax.xaxis.get_major_locator().set_params(integer=True)
    if ax.lines:
        ax.legend(fontsize=8, frameon=False)
    else:
        ax.text(0.5, 0.5, "no val_loss logged", transform=ax.transAxes, ha="center", color="#777777")


def _added_mb(jobs: pd.DataFrame) -> pd.Series:
    """What each run added to the process's memory: peak minus baseline, in MB."""
    added = column(jobs, "metrics.peak_rss_mb") - column(jobs, "metrics.baseline_rss_mb")
    return added.clip(lower=0)


def _array_mb(jobs: pd.DataFrame, sizes: list[float]) -> tuple[list[float], list[float]] | None:
    """The all-images uint8 array's MB at each dataset size, from the first job's input size and channels."""
    first = jobs.iloc[0]
    size = re.findall(r"\d+", str(first.get("params.model.input_size") or ""))
    channels = str(first.get("params.data.channels") or "3")
    if not size or not channels.isdigit() or not sizes:
        return None
    height, width = (int(size[0]), int(size[-1]))
    return sizes, [n * height * width * int(channels) / MB for n in sizes]


def _title(sweep: Selection, varied: list[str]) -> str:
    """'Sweep <id>' (or which runs) and what all its jobs share, e.g. 'small_cnn, 400 images, CPU'."""
    jobs = sweep.jobs

    def shared(name: str) -> str | None:
        values = column(jobs, name)
        if values.isna().any():  # astype(str) keeps a missing value missing in newer pandas
            return None
        distinct = set(values.astype(str))
        return distinct.pop() if len(distinct) == 1 and not distinct & {"None", "nan"} else None

    parts = []
    if model := shared("tags.model"):
        parts.append(model)
    if SCALING_PARAM not in varied and (n := shared(f"params.{SCALING_PARAM}")):
        parts.append(f"{int(float(n)):,} images" if is_number(n) else f"{n} images")
    if size := shared("params.model.input_size"):
        parts.append(f"input {size} px")
    if batch := shared("params.batch.train"):
        parts.append(f"batch {batch}")
    if epochs := shared("params.trainer.epochs"):
        parts.append(f"{epochs} epoch{'s' if epochs != '1' else ''}")
    if device := shared("tags.device"):
        parts.append(device)
    return sweep.title + (f": {', '.join(parts)}" if parts else "")


def _labeller(jobs: pd.DataFrame, varied: list[str], leave_out: str | None) -> Labels:
    """A short label per job: the loader, plus whatever else differs between jobs."""
    tags = [t for t in ("tags.model", "tags.dataset") if column(jobs, t).nunique(dropna=False) > 1]
    params = [k for k in (*varied, *BATCH_PARAMS) if k != leave_out]
    params = [k for k in params if column(jobs, f"params.{k}").nunique(dropna=False) > 1]

    def label(job: pd.Series) -> str:
        parts = [job.get("tags.loader") or "?", *(job.get(t) or "?" for t in tags)]
        parts += [f"{k.rsplit('.', 1)[-1]}={job.get(f'params.{k}')}" for k in params]
        return "\n".join(parts)

    labels = [label(job) for _, job in jobs.iterrows()]
    if leave_out is not None or len(set(labels)) == len(labels):
        return label  # a scaling chart draws one line per label, over the sizes
    # Bars of runs alike in all of that (the same run twice, say): their run ids tell them apart.
    return lambda job: f"{label(job)}\n{str(job.get('run_id'))[:8]}"


def _numbers(values: pd.Series) -> list[float]:
    """The distinct numeric values of a column, sorted."""
    return sorted({float(v) for v in values.dropna() if is_number(v)})
