"""Detection heads: one contract (`Detector`), one registry (`register_head`, `head_names`).

Each head is a module of this package that registers its builder; `head_names()` imports them
all, so nothing here lists them.
"""

from detection.models.heads.contract import (
    Detector,
    HeadEntry,
    head_entry,
    head_knobs,
    head_names,
    register_head,
)

__all__ = ["Detector", "HeadEntry", "head_entry", "head_knobs", "head_names", "register_head"]
