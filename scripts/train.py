"""Train (and test) a model: `python scripts/train.py [experiment=...] [key=value ...]`."""

import hydra
from omegaconf import DictConfig

from detection import pipelines
from detection.runtime import launch  # noqa: F401  (registers ${run_id:})
from detection.runtime.launch import job


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return job(pipelines.train)(cfg)


if __name__ == "__main__":
    main()
