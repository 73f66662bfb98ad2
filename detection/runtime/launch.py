"""How an entry point runs as a Hydra job: resolvers, extras, user errors, multirun failures, DDP ranks.

- `register_resolvers` adds ``${run_id:}``, ``${launch_dir:}`` and ``${ensure_dir:...}`` (on import).
- `job(pipeline)` wraps a pipeline: extras first; a user's mistake ends a single run with its
  one-line message (`exit_on_user_error`); inside a multirun a failing job is reported and returns
  NaN so the sweep goes on.
- `job_processes()` surrounds one job's Trainer: Lightning re-runs ``sys.argv`` for DDP ranks > 0,
  which are pinned here to this job's overrides and run directory, and afterwards the process
  group and the launcher's environment are as before, so the next job of a multirun starts clean.

Nothing here knows about detection.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import secrets
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, read_write

from detection.runtime import job_owner

log = logging.getLogger(__name__)


def _run_id() -> str:
    # Cached by OmegaConf: one id per process and config, so run.dir and sweep.dir agree, and
    # runs started in the same second still get their own directory.
    return secrets.token_hex(3)


def _ensure_dir(path: str) -> str:
    # For paths that a tool opens before anything else creates them (the Optuna storage file).
    Path(path).mkdir(parents=True, exist_ok=True)
    return path


def _launch_dir() -> str:
    # Hydra never changes the working directory here (hydra.job.chdir=false), so this is where the
    # command was started, in every job and DDP rank; unlike ${hydra:runtime.cwd} it resolves
    # before a job exists (a sweeper's storage path).
    return os.getcwd()


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", _run_id, use_cache=True)
    if not OmegaConf.has_resolver("ensure_dir"):
        OmegaConf.register_new_resolver("ensure_dir", _ensure_dir)
    if not OmegaConf.has_resolver("launch_dir"):
        OmegaConf.register_new_resolver("launch_dir", _launch_dir)


register_resolvers()


# CocoFormatError is a ValueError; FloatingPointError is the non-finite loss.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    FloatingPointError,
    MisconfigurationException,
)


def _root_cause(error: InstantiationException) -> BaseException | None:
    """What a constructor raised under (possibly nested) Hydra instantiation; None if nothing."""
    cause = error.__cause__
    while isinstance(cause, InstantiationException):
        cause = cause.__cause__
    return cause


def is_user_error(error: BaseException) -> bool:
    if isinstance(error, InstantiationException):
        # Hydra wraps what a constructor raised, or the ImportError of a `_target_` it cannot find.
        cause = _root_cause(error)
        return cause is None or isinstance(cause, (*USER_ERRORS, ImportError))
    return isinstance(error, USER_ERRORS)


def user_message(error: BaseException) -> str:
    """`<Type>: <message>` on one line (a DataLoader worker's error carries its traceback in the
    message; only its last line is kept)."""
    text = str(error)
    if "Original Traceback" in text:  # re-raised from a DataLoader worker process
        # its last line is "<module>.<Type>: <message>" (or the type alone)
        name, sep, message = text.rstrip().splitlines()[-1].strip().partition(": ")
        return f"{name.rsplit('.', 1)[-1]}{sep}{message}"
    cause = _root_cause(error) if isinstance(error, InstantiationException) else None
    if cause is not None:
        # "Error in call to target 'x':\nValueError('...')\nfull_key: model.task" -> the cause, and where
        where = [line.strip() for line in text.splitlines() if line.strip().startswith("full_key:")]
        text = f"{type(cause).__name__}: {cause}" + (f" ({where[0]})" if where else "")
        return " ".join(text.split())
    return " ".join(f"{type(error).__name__}: {text}".split())


def exit_on_user_error(error: BaseException) -> None:
    """For a user error (and HYDRA_FULL_ERROR unset): print its message last and exit with status 1.

    Returns for anything else, so the caller re-raises it with its traceback.
    """
    if not is_user_error(error) or os.environ.get("HYDRA_FULL_ERROR") == "1":
        return
    print("Error (HYDRA_FULL_ERROR=1 shows the traceback):", file=sys.stderr)
    print(user_message(error), file=sys.stderr, flush=True)
    raise SystemExit(1) from None


# What a finished job leaves in its run directory (its summary); a resumed sweep skips such jobs.
METRICS_FILE = "metrics.json"

# Set for the DDP ranks > 0 of a multirun job: they run as single jobs but belong to a sweep (see job.py).
MULTIRUN_JOB_ENV = "DETECTION_MULTIRUN_JOB"
# What Lightning's subprocess launcher writes into the launching process's environment.
_LAUNCHER_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def pin_job_for_subprocesses() -> None:
    """Lightning re-launches `sys.argv` for ranks > 0 with `hydra.run.dir=<HydraConfig run.dir>`.

    Inside a multirun that would start the whole sweep again in each child, in the wrong folder.
    Pin the children to this job: argv becomes the job's own overrides (no `-m`, no sweep lists,
    `hydra.mode=RUN` against configs that ask for a multirun, e.g. `hparams_search=...`) and run.dir
    this job's output directory, so every rank writes into the same run directory.
    """
    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    sys.argv = [sys.argv[0], *[str(o) for o in hydra_cfg.overrides.task], "hydra.mode=RUN"]
    if hydra_cfg.mode == RunMode.MULTIRUN:
        os.environ[MULTIRUN_JOB_ENV] = str(hydra_cfg.runtime.output_dir)
    with read_write(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir


@contextlib.contextmanager
def job_processes() -> Iterator[None]:
    """Around the Trainer of one job: ranks > 0 join this job (see `pin_job_for_subprocesses`);
    afterwards the process group is gone and the launcher's environment variables are as before.

    Without this the next job of a multirun in the same process would find LOCAL_RANK set (so
    Lightning launches no ranks > 0) and the finished job's process group (whose peers have exited).
    """
    saved_env = {name: os.environ.get(name) for name in (*_LAUNCHER_ENV, MULTIRUN_JOB_ENV)}
    saved_argv = list(sys.argv)
    pin_job_for_subprocesses()
    try:
        yield
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        sys.argv = saved_argv


T = TypeVar("T")


def apply_extras(cfg: DictConfig) -> None:
    extras = cfg.get("extras") or {}
    if extras.get("ignore_warnings"):
        warnings.filterwarnings("ignore")
    if extras.get("num_threads"):
        torch.set_num_threads(int(extras.num_threads))


def _in_multirun() -> bool:
    # Ranks > 0 of a DDP multirun job run as single jobs; the environment says they belong to a sweep.
    if os.environ.get(MULTIRUN_JOB_ENV):
        return True
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def job(pipeline: Callable[[DictConfig], T]) -> Callable[[DictConfig], T | float]:
    """Run a pipeline as a Hydra job.

    In a multirun a failing job is reported (log and `<run dir>/error.txt`) and returns NaN, so the
    sweep goes on and an Optuna study records the trial as failed; a single run raises as usual.
    DDP ranks > 0 of a multirun job also end normally: Lightning's launcher kills the whole sweep
    when one of them exits with an error.
    """

    @functools.wraps(pipeline)
    def wrapped(cfg: DictConfig) -> T | float:
        apply_extras(cfg)
        # a resumed sweep must not start a job again while it still runs (see job_owner)
        marked = _in_multirun() and rank_zero_only.rank == 0
        try:
            with job_owner.running(cfg.paths.output_dir) if marked else contextlib.nullcontext():
                return pipeline(cfg)
        except Exception as error:
            if not _in_multirun():
                exit_on_user_error(error)  # a user's mistake: its message, no traceback
                raise
            run_dir = Path(cfg.paths.output_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            rank = rank_zero_only.rank
            error_file = run_dir / ("error.txt" if rank == 0 else f"error_rank{rank}.txt")
            error_file.write_text(traceback.format_exc())
            log.error(
                "Job %s failed: %s: %s (traceback in %s)",
                run_dir.name,
                type(error).__name__,
                error,
                error_file,
            )
            return math.nan

    return wrapped
