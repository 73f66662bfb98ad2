"""Look at a data set before training: python scripts/inspect_data.py data=<any> [data.root=DIR]

Prints the per-split summary and writes samples_<split>.png, classes.png and box_sizes.png into
`out_dir` (conf/inspect_data.yaml). A bad file ends it with one line naming the file and record.
"""

import hydra
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig

from detection.runtime.launch import job


def run(cfg: DictConfig) -> None:
    from detection.data.inspection import inspect_data

    datamodule = instantiate(cfg.data, _convert_="all", print_summary=False)
    anchors = list(cfg.anchor_sizes) if cfg.anchor_sizes else None
    pictures = inspect_data(
        datamodule, to_absolute_path(cfg.out_dir), cfg.split, cfg.num_images, cfg.seed, anchors
    )
    print("Pictures:", *(f"  {path}" for path in pictures.values()), sep="\n")


@hydra.main(config_path="../conf", config_name="inspect_data", version_base="1.3")
def main(cfg: DictConfig) -> None:
    job(run)(cfg)


if __name__ == "__main__":
    main()
