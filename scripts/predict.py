"""Detect objects in a folder of images: `python scripts/predict.py ckpt_path=... input_dir=...`."""

import hydra
from omegaconf import DictConfig

from detection import pipelines
from detection.runtime import launch  # noqa: F401  (registers ${run_id:})
from detection.runtime.launch import job


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    job(pipelines.predict)(cfg)


if __name__ == "__main__":
    main()
