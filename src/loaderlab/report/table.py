"""The comparison table: one row per job, with the params the sweep varied and the contract's metrics."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from loaderlab.report.store import Selection, column
from loaderlab.sweep import parse_overrides

NA = "n/a"
# The summary metrics shown as columns, with their decimals. gpu_peak_mb exists only where a GPU did.
METRIC_COLUMNS = {
    "peak_rss_mb": 1,
    "baseline_rss_mb": 1,
    "gpu_peak_mb": 1,
    "images_per_sec": 1,
    "time_to_first_batch_s": 2,
    "best_val_loss": 4,
}
OPTIONAL_METRIC_COLUMNS = {"test_accuracy": 4}  # shown where a sweep has them (data.test_fraction, ...)
BATCH_PARAMS = ("batch.train", "batch.val")  # shown in their own column
# A param under one of these prefixes follows from the tag when it is constant for each tag value.
GROUP_TAGS = {"loader.": "loader", "model.": "model", "data.": "dataset"}
IGNORED_PREFIXES = ("paths.", "hydra.")  # differ per job by construction (e.g. paths.output_dir)


@dataclass
class Table:
    """One row per job, every cell already formatted."""

    frame: pd.DataFrame

    @property
    def headers(self) -> list[str]:
        """The column names, left to right."""
        return list(self.frame.columns)

    def column(self, header: str) -> list[str]:
        """The cells of one column, top to bottom."""
        return self.frame[header].tolist()

    def render(self) -> str:
        """The table as aligned text: words left, numbers right, a rule under the header."""
        cells = [self.headers, *self.frame.values.tolist()]
        widths = [max(len(str(row[i])) for row in cells) for i in range(len(self.headers))]
        numeric = [all(is_number(v) or v == NA for v in self.frame[h]) for h in self.headers]

        def line(row: Sequence[str]) -> str:
            return "  ".join(
                str(c).rjust(w) if num else str(c).ljust(w)
                for c, w, num in zip(row, widths, numeric, strict=True)
            ).rstrip()

        return "\n".join([line(self.headers), "  ".join("-" * w for w in widths), *map(line, cells[1:])])


def varied_params(jobs: pd.DataFrame) -> list[str]:
    """Params that differ between jobs and are not implied by the loader/model/dataset or batch columns."""
    keys = sorted(c.removeprefix("params.") for c in jobs if c.startswith("params."))
    differing = [
        k
        for k in keys
        if not k.startswith(IGNORED_PREFIXES) and k not in BATCH_PARAMS and _distinct(jobs[f"params.{k}"]) > 1
    ]
    swept = [k for k in swept_keys(jobs) if k in differing]
    varied = list(swept)
    for key in differing:
        if key in swept:
            continue
        tags = [
            f"tags.{tag}"
            for prefix, tag in GROUP_TAGS.items()
            if key.startswith(prefix) and f"tags.{tag}" in jobs
        ]
        determinants = [f"params.{k}" for k in swept] + tags
        if determinants and _follows_from(jobs, f"params.{key}", determinants):
            continue  # e.g. loader.workers under loader=..., or data.root under data.num_images=...
        varied.append(key)
    return varied


def swept_keys(jobs: pd.DataFrame) -> list[str]:
    """Override keys whose value differs between jobs, read from their `hydra_overrides` tags."""
    per_job = [parse_overrides(text or "") for text in column(jobs, "tags.hydra_overrides").fillna("")]
    keys = list(dict.fromkeys(k for job in per_job for k in job))
    return [k for k in keys if len({job.get(k) for job in per_job}) > 1]


def build_table(sweep: Selection) -> Table:
    """The comparison table: identity, varied params, batch sizes, status and the summary metrics."""
    jobs = sweep.jobs
    frame = pd.DataFrame(
        {
            # Runs that no sweep groups: the run id tells them apart in the MLflow UI.
            **({"run": jobs["run_id"].str[:8]} if sweep.parent is None else {}),
            "loader": column(jobs, "tags.loader").fillna("?"),
            "model": column(jobs, "tags.model").fillna("?"),
            **{k: column(jobs, f"params.{k}").fillna(NA) for k in varied_params(jobs)},
            "batch": column(jobs, "params.batch.train").fillna("?")
            + "/"
            + column(jobs, "params.batch.val").fillna("?"),
            "status": jobs["status"],
            # Jobs of the sweep that ran at once: figures of a job that shared the machine with others
            # are not clean figures of its loader.
            **(
                {"jobs at once": column(jobs, "tags.parallel_jobs").fillna(NA)}
                if "tags.parallel_jobs" in jobs
                else {}
            ),
            **{
                m: column(jobs, f"metrics.{m}").map(lambda v, d=d: fmt(v, d))
                for m, d in {
                    **METRIC_COLUMNS,
                    **{m: d for m, d in OPTIONAL_METRIC_COLUMNS.items() if f"metrics.{m}" in jobs},
                }.items()
            },
        }
    )
    return Table(frame.reset_index(drop=True))


def error_lines(sweep: Selection) -> list[str]:
    """One line per job that did not finish, with its recorded error."""
    lines = []
    for _, job in sweep.jobs[sweep.jobs["status"] != "FINISHED"].iterrows():
        error = job.get("tags.error")
        error = error if isinstance(error, str) else "no error recorded"
        error = error if len(error) <= 300 else error[:297] + "..."
        lines.append(f"{job.get('tags.mlflow.runName')} ({job['run_id'][:8]}) {job['status']}: {error}")
    return lines


def fmt(value: float | None, digits: int) -> str:
    """A metric for the table: 'n/a' when it was not logged."""
    if value is None or not isinstance(value, int | float) or not math.isfinite(value):
        return NA
    return f"{value:.{digits}f}"


def is_number(text: object) -> bool:
    """Whether a value reads as a finite number (commas allowed)."""
    try:
        return math.isfinite(float(str(text).replace(",", "")))
    except ValueError:
        return False


def _distinct(values: pd.Series) -> int:
    return values.nunique(dropna=False)


def _follows_from(jobs: pd.DataFrame, key: str, determinants: list[str]) -> bool:
    """Whether the column's value is the same wherever the determinants' values are."""
    keyed = jobs[[*determinants, key]].astype(str)  # missing values group together as 'None'/'nan'
    return bool((keyed.groupby(determinants)[key].nunique() <= 1).all())
