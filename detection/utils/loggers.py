"""Build the configured Lightning loggers; W&B gets its mode, id and sweep group here."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from detection.utils.wandb_setup import configure_wandb, run_id_for

log = logging.getLogger(__name__)


def build_loggers(group: DictConfig | None, run_dir: Path, resumed_from: Path | None) -> list[Logger]:
    loggers: list[Logger] = []
    if not group:
        return loggers
    for name, conf in group.items():
        if conf is None:
            continue
        if "_target_" not in conf:
            raise ValueError(f"The logger entry {name!r} has no _target_: {conf}")
        if conf._target_.endswith("WandbLogger"):
            conf = _prepare_wandb(conf, run_dir, resumed_from)
        loggers.append(hydra.utils.instantiate(conf))
    return loggers


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
                wandb.finish()
