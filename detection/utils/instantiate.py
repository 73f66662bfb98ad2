"""Instantiate the lists of callbacks and loggers that Hydra config groups describe."""

from __future__ import annotations

import logging
from typing import Any

import hydra
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def instantiate_group(group: DictConfig | None, what: str = "object") -> list[Any]:
    """Instantiate every `_target_` entry of a config group (callbacks, loggers); skip null entries."""
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
        objects.append(hydra.utils.instantiate(conf))
    return objects
