"""The speed settings every job applies on a GPU: float32 matmul precision (TF32) and cuDNN autotuning.

`configure_performance(cfg)` runs at the start of train / evaluate / predict, before the Trainer
exists. On a CUDA run it sets `torch.set_float32_matmul_precision(extras.float32_matmul_precision)`
(``"high"``: float32 matmuls and convolutions on TensorFloat-32 tensor cores, about 10 mantissa
bits for the products, float32 sums; ``"highest"``: full float32; ``"medium"``: bfloat16). cuDNN's
autotuner is the Trainer's own ``benchmark`` switch, on in every GPU trainer config (gpu, ddp,
multinode): detection batches change shape little, so each shape's fastest kernel is found once.

On the CPU nothing is changed: its results stay those of torch's defaults, bit for bit.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

log = logging.getLogger(__name__)

PRECISIONS = ("highest", "high", "medium")
DEFAULT_PRECISION = "high"
_GPU_ACCELERATORS = ("gpu", "cuda")


def runs_on_cuda(trainer_cfg: Mapping[str, Any] | None) -> bool:
    """Whether a Trainer built from `trainer_cfg` computes on CUDA (``accelerator`` gpu/cuda, or
    auto/absent with a CUDA device present)."""
    accelerator = (trainer_cfg or {}).get("accelerator") or "auto"
    if not isinstance(accelerator, str):  # an Accelerator object or its config: take CUDA's presence
        return torch.cuda.is_available()
    accelerator = accelerator.lower()
    if accelerator in _GPU_ACCELERATORS:
        return True
    return accelerator == "auto" and torch.cuda.is_available()


def configure_performance(cfg: Mapping[str, Any]) -> str | None:
    """Apply the float32 matmul precision of ``cfg.extras`` when ``cfg.trainer`` runs on CUDA.

    Returns the precision set, or None (a CPU run: torch's defaults stay). A value outside
    `PRECISIONS` is a ValueError naming the key.
    """
    extras = cfg.get("extras") or {}
    precision = extras.get("float32_matmul_precision", DEFAULT_PRECISION) or DEFAULT_PRECISION
    if precision not in PRECISIONS:
        raise ValueError(
            f"extras.float32_matmul_precision={precision!r}: choose one of {', '.join(PRECISIONS)}"
        )
    if not runs_on_cuda(cfg.get("trainer")):
        return None
    torch.set_float32_matmul_precision(precision)
    log.debug("float32 matmul precision: %s", precision)
    return precision
