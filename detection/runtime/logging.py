"""Loggers, the W&B mode, and what the run prints on the console.

- `instantiate_group`: every ``_target_`` entry of a config group (callbacks, loggers).
- `build_loggers`: the configured Lightning loggers; W&B gets its mode, run id and sweep group.
  W&B without surprises: online with credentials and network, otherwise offline, never a prompt.
- `print_config_tree` / `print_metrics_table`: rank-zero Rich output of the composed config and
  of the final metrics.
"""

from __future__ import annotations

import json
import logging
import netrc
import os
import secrets
import socket
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
import rich
import rich.syntax
import rich.table
import rich.tree
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)


def instantiate_group(
    group: DictConfig | None,
    what: str = "object",
    prepare: Callable[[DictConfig], DictConfig] | None = None,
) -> list[Any]:
    """Instantiate every `_target_` entry of a config group (callbacks, loggers); skip null entries.

    `prepare` may return a changed copy of an entry's config before it is instantiated.
    """
    objects: list[Any] = []
    if not group:
        return objects
    if not isinstance(group, DictConfig):
        raise TypeError(f"The {what} config must be a mapping of name -> config, got {type(group).__name__}")
    for name, conf in group.items():
        if conf is None:
            continue
        if not isinstance(conf, DictConfig) or "_target_" not in conf:
            raise ValueError(f"The {what} entry {name!r} has no _target_: {conf}")
        log.debug("Instantiating %s %s <%s>", what, name, conf._target_)
        objects.append(hydra.utils.instantiate(prepare(conf) if prepare is not None else conf))
    return objects


RUN_FILE = "run.json"  # per run directory: the W&B run id, so a resumed run continues it


def _has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        rc = netrc.netrc(os.environ.get("NETRC", str(Path.home() / ".netrc")))
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    return rc.authenticators(host) is not None


def _reachable(timeout: float = 2.0) -> bool:
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    host, _, port = host.partition(":")
    try:
        with socket.create_connection((host, int(port or 443)), timeout=timeout):
            return True
    except OSError:
        return False


def choose_wandb_mode(requested: str | None = None) -> tuple[str, str]:
    """(mode, reason). An explicit request or WANDB_MODE wins; otherwise online needs both a key
    and a reachable server, so a machine without either logs offline instead of prompting or hanging."""
    if requested:
        return requested, "requested"
    env = os.environ.get("WANDB_MODE")
    if env:
        return env, "WANDB_MODE"
    if not _has_credentials():
        return "offline", "no W&B credentials (WANDB_API_KEY or `wandb login`)"
    if not _reachable():
        return "offline", "the W&B server is not reachable"
    return "online", "credentials and network"


def configure_wandb(requested: str | None = None) -> str:
    mode, reason = choose_wandb_mode(requested)
    os.environ["WANDB_MODE"] = mode
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")
    if mode != "online" and rank_zero_only.rank == 0:
        log.warning(
            "W&B logs %s (%s); upload later with `wandb sync <run dir>/wandb/offline-run-*`.", mode, reason
        )
    return mode


def _saved_id(run_dir: Path | None) -> str | None:
    if run_dir is None or not (run_dir / RUN_FILE).is_file():
        return None
    return json.loads((run_dir / RUN_FILE).read_text()).get("wandb_id")


def run_id_for(run_dir: Path, resumed_from: Path | None) -> str:
    """The W&B id of this run: the resumed run's id when resuming, else a new one; saved in run.json.

    Only rank 0 writes run.json; DDP ranks > 0 start after it and read the same id from the run
    directory they share (they never open the W&B run, but must not overwrite its id either).
    """
    run_id = _saved_id(resumed_from) or _saved_id(run_dir) or secrets.token_hex(4)
    if rank_zero_only.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / RUN_FILE).write_text(json.dumps({"wandb_id": run_id}))
    return run_id


def build_loggers(group: DictConfig | None, run_dir: Path, resumed_from: Path | None) -> list[Logger]:
    """The configured loggers; a W&B logger gets its mode, run id and sweep group."""

    def prepare(conf: DictConfig) -> DictConfig:
        return _prepare_wandb(conf, run_dir, resumed_from) if conf._target_.endswith("WandbLogger") else conf

    return instantiate_group(group, "logger", prepare)


def _prepare_wandb(conf: DictConfig, run_dir: Path, resumed_from: Path | None) -> DictConfig:
    conf = conf.copy()
    with open_dict(conf):
        mode = configure_wandb(conf.pop("mode", None))
        conf.offline = mode == "offline"
        conf.id = run_id_for(run_dir, resumed_from)
        conf.resume = "allow"
        if (
            conf.get("group") is None
            and HydraConfig.initialized()
            and HydraConfig.get().mode == RunMode.MULTIRUN
        ):
            # All jobs of one sweep share a group named after the sweep directory.
            conf.group = Path(HydraConfig.get().sweep.dir).name
    return conf


@rank_zero_only
def log_config(loggers: list[Logger], cfg: DictConfig) -> None:
    """Log the whole composed config, nested, to every logger."""
    params: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    for logger in loggers:
        logger.log_hyperparams(params)


def finish_loggers(loggers: list[Logger]) -> None:
    """Each job ends its own W&B run (a multirun starts the next job in the same process)."""
    for logger in loggers:
        if isinstance(logger, WandbLogger) and rank_zero_only.rank == 0:
            import wandb

            if wandb.run is not None:
                try:
                    wandb.finish()
                except ConnectionError as error:
                    # SLURM signals every process of a stopped job, W&B's service too: finishing then
                    # fails, and must not turn a clean preemption (SIGTERM, last.ckpt saved) into a failure.
                    log.error(
                        "W&B's service ended before this run was finished (%s: %s); its W&B run may lack "
                        "the last records (the CSV log and the checkpoints are complete)",
                        type(error).__name__,
                        error,
                    )


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


def select_metrics(metrics: Mapping[str, Any], prefixes: Sequence[str]) -> dict[str, float]:
    """Plain floats of the metrics whose names start with one of `prefixes`."""
    out: dict[str, float] = {}
    for name, value in metrics.items():
        if any(name.startswith(p) for p in prefixes):
            out[name] = float(value.item() if hasattr(value, "item") else value)
    return out
