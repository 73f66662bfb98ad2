"""A Hydra sweeper that resumes a sweep: `-m` again in the same sweep directory runs only what is left.

Hydra's basic sweeper starts every job again and numbers them by their place in the sweep, so a
changed sweep list would put a job into another job's folder. This one, before launching, reads
the jobs already in `hydra.sweep.dir` (their `.hydra/overrides.yaml`) and, matching each new job by
its overrides (in any order), not by its number:

- a job whose folder holds `metrics.json` finished: it is not launched again;
- a job whose folder exists without it was interrupted: it runs again in that folder, where it
  continues from `checkpoints/last.ckpt` by itself (`detection.runtime.checkpoints.requeued_checkpoint`);
- any other job runs in a new folder, numbered after the highest one there;
- a job still running elsewhere (`detection.runtime.job_owner`: its SLURM job queued or running, its
  process alive on this machine) stops the sweep with an error instead of being started twice.

It launches through the configured launcher (local or `launcher=submitit_slurm`) and is otherwise
the basic sweeper (its `max_batch_size` and `params`). Hydra looks for sweepers in this namespace
package (`hydra_plugins`); `conf/hydra/sweeper/resumable.yaml` selects it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from detection.runtime.job_owner import live_owner
from detection.runtime.launch import METRICS_FILE

log = logging.getLogger(__name__)


def job_key(overrides: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """A job's identity: its task overrides, order aside."""
    return tuple(sorted(str(o) for o in overrides))


def existing_jobs(sweep_dir: Path) -> dict[tuple[str, ...], Path]:
    """The job folders of `sweep_dir` by their overrides."""
    jobs: dict[tuple[str, ...], Path] = {}
    if not sweep_dir.is_dir():
        return jobs
    for overrides_file in sorted(sweep_dir.glob("*/.hydra/overrides.yaml")):
        overrides = OmegaConf.to_container(OmegaConf.load(overrides_file))
        if not isinstance(overrides, list):
            raise ValueError(
                f"{overrides_file}: expected a list of overrides, found {type(overrides).__name__}"
            )
        key = job_key(overrides)
        job_dir = overrides_file.parent.parent
        if key in jobs:
            raise ValueError(
                f"{sweep_dir}: jobs {jobs[key].name} and {job_dir.name} have the same overrides {list(key)}; "
                "remove one of the folders (the one without metrics.json) and run the sweep again"
            )
        jobs[key] = job_dir
    return jobs


def _next_number(sweep_dir: Path) -> int:
    numbers = (
        [int(p.name) for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()]
        if sweep_dir.is_dir()
        else []
    )
    return max(numbers, default=-1) + 1


class ResumableSweeper(BasicSweeper):
    def __init__(self, max_batch_size: int | None = None, params: dict[str, str] | None = None) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([*self._parse_config(), *arguments])
        self.overrides = self.split_arguments(overrides, self.max_batch_size)

        sweep_dir = Path(self.config.hydra.sweep.dir)
        earlier = existing_jobs(sweep_dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        next_number = _next_number(sweep_dir)

        returns = []
        initial_job_idx = 0
        while not self.is_done():
            batch = self.get_job_batch()
            to_launch: list[list[str]] = []
            for job in batch:
                job_dir = earlier.get(job_key(job))
                if job_dir is not None and (job_dir / METRICS_FILE).is_file():
                    log.info("Job %s finished before (%s): not run again", job_dir.name, " ".join(job))
                    continue
                if job_dir is not None:
                    owner = live_owner(job_dir)
                    if owner is not None:
                        raise ValueError(
                            f"Job {job_dir.name} ({' '.join(job)}) is still running: {owner}. Wait for it to "
                            "end, or stop it, then run the sweep again"
                        )
                    log.info("Job %s was interrupted: continuing it in %s", job_dir.name, job_dir)
                    subdir = job_dir.name
                else:
                    subdir = str(next_number)
                    next_number += 1
                # a hydra.* override: the job's own overrides (.hydra/overrides.yaml) stay as they were
                to_launch.append([*job, f"hydra.sweep.subdir={subdir}"])
            if not to_launch:
                continue
            tic = time.perf_counter()
            self.validate_batch_is_legal(to_launch)
            log.debug("Validated %d jobs in %.2f s", len(to_launch), time.perf_counter() - tic)
            results = self.launcher.launch(to_launch, initial_job_idx=initial_job_idx)
            for result in results:
                _ = result.return_value  # raises where a job failed
            initial_job_idx += len(to_launch)
            returns.append(results)
        if not returns:
            log.info("Every job of %s finished before: nothing to run", sweep_dir)
        return returns
