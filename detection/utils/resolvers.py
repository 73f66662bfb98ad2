"""OmegaConf resolvers used by the configs; registered on import of `detection.utils.resolvers`."""

from __future__ import annotations

import secrets
from pathlib import Path

from omegaconf import OmegaConf


def _run_id() -> str:
    # Cached by OmegaConf: one id per process and config, so run.dir and sweep.dir agree, and
    # runs started in the same second still get their own directory.
    return secrets.token_hex(3)


def _ensure_dir(path: str) -> str:
    # For paths that a tool opens before anything else creates them (the Optuna storage file).
    Path(path).mkdir(parents=True, exist_ok=True)
    return path


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", _run_id, use_cache=True)
    if not OmegaConf.has_resolver("ensure_dir"):
        OmegaConf.register_new_resolver("ensure_dir", _ensure_dir)


register_resolvers()
