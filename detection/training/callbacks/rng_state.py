"""Save and restore every random generator with the checkpoint, so a resumed run draws the same
shuffles and augmentations as an uninterrupted one."""

from __future__ import annotations

import logging
import random
from typing import Any

import lightning as L
import numpy as np
import torch

log = logging.getLogger(__name__)


class RngStateCallback(L.Callback):
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "python": random.getstate(),
            "numpy": _numpy_state(),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        random.setstate(_as_python_state(state_dict["python"]))
        np.random.set_state(_numpy_state_from(state_dict["numpy"]))
        torch.set_rng_state(state_dict["torch"])
        _restore_cuda(state_dict.get("cuda") or [])


def _restore_cuda(saved: list[torch.Tensor]) -> None:
    """One saved state per GPU present, in order, up to the number saved: a run resumed on a
    machine with fewer GPUs, or none, goes on and says which generators start afresh."""
    present = torch.cuda.device_count() if torch.cuda.is_available() else 0
    restored = min(present, len(saved))
    for device, state in enumerate(saved[:restored]):
        torch.cuda.set_rng_state(state, device)
    if len(saved) > present:
        log.warning(
            "The checkpoint holds the random generator states of %d CUDA devices, this machine has %d: "
            "restored %d; the states of devices %s are not restored",
            len(saved),
            present,
            restored,
            list(range(restored, len(saved))),
        )
    elif present > len(saved) and saved:
        log.info(
            "CUDA random generators of devices %s keep their seeds: not in the checkpoint",
            list(range(len(saved), present)),
        )


def _numpy_state() -> dict[str, Any]:
    # Tensors and plain numbers only, so the checkpoint loads with torch.load(weights_only=True).
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "name": name,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "gauss": float(gauss),
    }


def _numpy_state_from(state: dict[str, Any]) -> tuple:
    keys = state["keys"].numpy().astype(np.uint32)
    return (state["name"], keys, state["pos"], state["has_gauss"], state["gauss"])


def _as_python_state(state: Any) -> tuple:
    # Checkpoints may turn the inner tuple into a list; random.setstate wants tuples.
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
