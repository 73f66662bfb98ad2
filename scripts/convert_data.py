"""Convert a data set between layouts: python scripts/convert_data.py data=voc data.root=SRC to=coco out=DST

Any of coco, voc, yolo (and data=fashiondet) in, any of coco, voc, yolo out; every split found is
validated on the way. What each layout cannot hold is listed in detection/data/convert.py.
"""

import hydra
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig

from detection.runtime.launch import job


def run(cfg: DictConfig) -> None:
    from detection.data.convert import NOT_KEPT, convert_data

    datamodule = instantiate(cfg.data, _convert_="all")
    out = convert_data(datamodule, cfg.to, to_absolute_path(cfg.out))
    print(f"Wrote {', '.join(datamodule.datasets)} as {cfg.to} to {out}")
    print(f"Not kept by {cfg.to}: {NOT_KEPT[cfg.to]}")


@hydra.main(config_path="../conf", config_name="convert_data", version_base="1.3")
def main(cfg: DictConfig) -> None:
    job(run)(cfg)


if __name__ == "__main__":
    main()
