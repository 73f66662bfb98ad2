"""Multirun results as rows, and rows as CSV and Markdown."""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from omegaconf import OmegaConf

from detection.runtime import launch  # noqa: F401  (${run_id:} and friends resolve)
from detection.runtime.launch import METRICS_FILE

Column = tuple[str, str, str]  # (row key, header, format spec such as ".3f"; "" for str())


@dataclass
class Job:
    """One job directory of a Hydra multirun: what it was asked to do and what it wrote."""

    path: Path
    number: int
    overrides: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] | None = None
    timing: dict[str, Any] | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.metrics is not None and self.error is None

    def get(self, dotted: str, default: Any = None) -> Any:
        """A value of the job's composed config by dotted key (``model.detector.head``), resolved.

        Hydra saves the config unresolved; interpolations that need Hydra's runtime
        (``${hydra:...}``) cannot be resolved afterwards and come back as their raw text.
        """
        config = OmegaConf.create(self.config)
        try:
            value = OmegaConf.select(config, dotted, default=default)
        except Exception:  # e.g. ${hydra:runtime.cwd} outside a Hydra run: the raw text
            node: Any = self.config
            for part in dotted.split("."):
                if not isinstance(node, dict) or part not in node:
                    return default
                node = node[part]
            return node
        return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def read_multirun(sweep_dir: str | Path) -> list[Job]:
    """The jobs of a multirun directory (``<sweep dir>/<job number>/``), in job order.

    A job without ``metrics.json`` is kept with its ``error.txt`` (or "no metrics.json") so a
    table can show that it failed instead of silently leaving it out.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir}: no such multirun directory")
    jobs = []
    for path in sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=_number):
        job = Job(path=path, number=int(path.name))
        hydra_dir = path / ".hydra"
        if (hydra_dir / "overrides.yaml").is_file():
            job.overrides = list(yaml.safe_load((hydra_dir / "overrides.yaml").read_text()) or [])
        if (hydra_dir / "config.yaml").is_file():
            job.config = yaml.safe_load((hydra_dir / "config.yaml").read_text()) or {}
        if (path / METRICS_FILE).is_file():
            job.metrics = json.loads((path / METRICS_FILE).read_text())
        if (path / "timing.json").is_file():
            job.timing = json.loads((path / "timing.json").read_text())
        if (path / "error.txt").is_file():
            lines = (path / "error.txt").read_text().strip().splitlines()
            job.error = lines[-1] if lines else "failed"
        elif job.metrics is None:
            job.error = "no metrics.json (still running, killed, or not started)"
        jobs.append(job)
    if not jobs:
        raise FileNotFoundError(f"{sweep_dir} holds no job directories (0/, 1/, ...)")
    return jobs


def _number(path: Path) -> int:
    return int(path.name)


def format_value(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if spec and isinstance(value, (int, float)):
        return format(value, spec)
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    header = "| " + " | ".join(h for _, h, _ in columns) + " |"
    align = "|" + "|".join(("---:" if spec else ":---") for _, _, spec in columns) + "|"
    body = [
        "| " + " | ".join(format_value(row.get(k), spec) for k, _, spec in columns) + " |" for row in rows
    ]
    return "\n".join([header, align, *body])


def write_tables(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[Column],
    stem: str | Path,
    note: str = "",
    markdown_columns: Sequence[Column] | None = None,
) -> tuple[Path, Path]:
    """Write ``<stem>.csv`` (raw values, every key of `columns`) and ``<stem>.md`` (formatted).

    `markdown_columns` (default `columns`) lets the Markdown show fewer, composed cells (a value
    with its interval in one cell) while the CSV keeps each number in a column of its own.
    """
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = stem.with_suffix(".csv"), stem.with_suffix(".md")
    with csv_path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow([k for k, _, _ in columns])
        for row in rows:
            writer.writerow(["" if row.get(k) is None else row.get(k) for k, _, _ in columns])
    text = markdown_table(rows, columns if markdown_columns is None else markdown_columns)
    md_path.write_text(text + ("\n\n" + note.strip() if note.strip() else "") + "\n")
    return csv_path, md_path


def read_csv(path: str | Path) -> list[dict[str, str]]:
    with Path(path).open(newline="") as file:
        return list(csv.DictReader(file))


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value; NaN for none)."""
    values = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


class MeanInterval(NamedTuple):
    """The mean of `n` values (one per seed, say) and its confidence interval [`low`, `high`];
    `std` is their sample standard deviation. With fewer than two values the interval and the
    standard deviation are undefined (NaN), not zero: one seed says nothing about the next."""

    mean: float
    low: float
    high: float
    std: float
    n: int

    def text(self, spec: str = ".3f") -> str:
        """``mean [low, high]``; with one value ``mean (n=1)``; with none "-"."""
        if self.n == 0:
            return "-"
        if self.n == 1:
            return f"{self.mean:{spec}} (n=1)"
        return f"{self.mean:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"


def t_interval(values: Sequence[float | None], confidence: float = 0.95) -> MeanInterval:
    """Mean and Student t confidence interval, mean ± t_{(1+c)/2, n-1} · s/√n, of `values`
    (None and NaN left out). The t quantile, not the normal 1.96: with 3 seeds it is 4.30, and
    the normal one would claim an interval half as wide as the data support."""
    kept = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(kept)
    if n < 2:
        return MeanInterval(kept[0] if kept else math.nan, math.nan, math.nan, math.nan, n)
    from scipy import stats  # imported here: a second of start-up that only seed tables need

    mean, std = statistics.fmean(kept), statistics.stdev(kept)
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n)
    return MeanInterval(mean, mean - half, mean + half, std, n)


def without_seed(overrides: Sequence[str]) -> tuple[str, ...]:
    """A job's overrides less its seed (``seed=3``, ``+seed=3``): the key that groups a
    multirun's jobs into the seeds of one configuration."""
    return tuple(o for o in overrides if o.lstrip("+~").split("=", 1)[0] != "seed")


def group_by(items: Sequence[Any], key: Callable[[Any], Any]) -> dict[Any, list[Any]]:
    groups: dict[Any, list[Any]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return groups
