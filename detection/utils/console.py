"""Rank-zero console output: the resolved config as a Rich tree, and the final metrics table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import rich
import rich.syntax
import rich.table
import rich.tree
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

_FIRST = ("data", "model", "callbacks", "logger", "trainer", "paths", "extras")


@rank_zero_only
def print_config_tree(cfg: DictConfig, save_to: str | Path | None = None, resolve: bool = True) -> None:
    """Print the composed config as a tree, main groups first (unless extras.print_config=false);
    always save the same text to `save_to`."""
    tree = rich.tree.Tree("CONFIG", style="dim", guide_style="dim")
    keys = [k for k in _FIRST if k in cfg] + [k for k in cfg if k not in _FIRST]
    for key in keys:
        branch = tree.add(str(key), style="bold", guide_style="dim")
        node = cfg[key]
        text = OmegaConf.to_yaml(node, resolve=resolve) if isinstance(node, DictConfig) else str(node)
        branch.add(rich.syntax.Syntax(text, "yaml"))
    if (cfg.get("extras") or {}).get("print_config", True):
        rich.print(tree)
    if save_to is not None:
        with open(save_to, "w") as file:
            rich.print(tree, file=file)


@rank_zero_only
def print_metrics_table(metrics: Mapping[str, float], run_dir: str | Path, title: str = "Results") -> None:
    table = rich.table.Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name in sorted(metrics):
        value = metrics[name]
        table.add_row(name, f"{value:.4f}" if isinstance(value, float) else str(value))
    rich.print(table)
    rich.print(f"[bold]Run directory:[/bold] {run_dir}")


def select(metrics: Mapping[str, Any], prefixes: Sequence[str]) -> dict[str, float]:
    """Plain floats of the metrics whose names start with one of `prefixes`."""
    out: dict[str, float] = {}
    for name, value in metrics.items():
        if any(name.startswith(p) for p in prefixes):
            out[name] = float(value.item() if hasattr(value, "item") else value)
    return out
