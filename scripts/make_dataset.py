"""Write the FashionDet benchmark: python scripts/make_dataset.py data=fashiondet data.root=DIR

Any generator knob: data.generate.<knob>=VALUE (e.g. data.generate.preset=small). Skipped when DIR
already holds the set with the same parameters; `force=true` writes it again.
"""

from __future__ import annotations

import time

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf


@hydra.main(config_path="../conf", config_name="make_dataset", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from detection.data.fashiondet import PARAMS_FILE, make_fashiondet

    generate = cfg.data.get("generate")
    if not generate:
        choice = HydraConfig.get().runtime.choices.get("data", "?")
        raise SystemExit(f"data={choice} has no `generate` section: nothing to write. Use data=fashiondet")
    kwargs = OmegaConf.to_container(generate, resolve=True)
    if kwargs.get("data_dir"):
        kwargs["data_dir"] = to_absolute_path(kwargs["data_dir"])
    start = time.perf_counter()
    root = make_fashiondet(to_absolute_path(cfg.data.root), force=bool(cfg.get("force", False)), **kwargs)
    seconds = time.perf_counter() - start
    print(f"FashionDet ready at {root} ({seconds:.1f} s); parameters in {root / PARAMS_FILE}")


if __name__ == "__main__":
    main()
