"""Peak memory of a block of code: CUDA's allocator counters, or the process's peak RSS on CPU."""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

import torch

from detection.research.timing import synchronize


class PeakMemory:
    """Peak memory of a block of code above what was in use when it started (``.bytes`` after it).

    On CUDA ``torch.cuda.max_memory_allocated``; on CPU the growth of the process's peak resident
    set (Linux VmHWM, reset through /proc/self/clear_refs), which allocator caching makes rough.
    ``.name`` says which of the two was measured.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.name = "CUDA max allocated" if device.type == "cuda" else "peak RSS growth (CPU)"
        self.bytes = 0
        self._start = 0
        self._libc = None
        if device.type != "cuda":
            try:
                self._libc = ctypes.CDLL("libc.so.6")
            except OSError:
                self._libc = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            if self._libc is not None:
                self._libc.malloc_trim(0)  # give freed heap back, so the peak below is this block's
            self._reset_hwm()
            self._start = status_kb("VmRSS") * 1024
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self._start
        else:
            self.bytes = max(status_kb("VmHWM") * 1024 - self._start, 0)

    def _reset_hwm(self) -> None:
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.name = "peak RSS growth (CPU, not reset: upper bound)"


def status_kb(field: str) -> int:
    """A kB field of /proc/self/status (VmRSS, VmHWM); 0 where there is none (not Linux)."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return 0
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else 0
