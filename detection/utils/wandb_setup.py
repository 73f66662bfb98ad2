"""W&B without surprises: online with credentials and network, otherwise offline, never a prompt."""

from __future__ import annotations

import json
import logging
import netrc
import os
import secrets
import socket
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only

log = logging.getLogger(__name__)

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
