"""FashionDet: real Fashion-MNIST items composed on crops of real photographs, written as COCO.

`params` holds the generator's knobs and presets, `compose` draws one canvas, `writer` writes the
splits (in parallel, byte-identical for any number of workers) and reuses a set already on disk.
"""

from detection.data.fashiondet.compose import render_records
from detection.data.fashiondet.params import DEFAULT_PARAMS, FASHIONDET_PRESETS, resolve_params
from detection.data.fashiondet.writer import PARAMS_FILE, is_cached, make_fashiondet

__all__ = [
    "DEFAULT_PARAMS",
    "FASHIONDET_PRESETS",
    "PARAMS_FILE",
    "is_cached",
    "make_fashiondet",
    "render_records",
    "resolve_params",
]
