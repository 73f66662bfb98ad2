"""Test a checkpoint: `python scripts/eval.py ckpt_path=<file | run dir | last> [data=...]`."""

import hydra
from omegaconf import DictConfig

from detection import pipelines
from detection.runtime import launch  # noqa: F401  (registers ${run_id:})
from detection.runtime.launch import job


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    job(pipelines.evaluate)(cfg)


if __name__ == "__main__":
    main()
