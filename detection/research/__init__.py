"""Research instruments: multirun tables, timing, and one module per research tool.

The tools, each with ``main(argv)`` and run as ``python scripts/<script>.py``:

- benchmark (scripts/benchmark.py): heads x backbones under one training budget, with the
  Light-Head vs Faster R-CNN timing split;
- heads (scripts/benchmark_heads.py): Light-Head vs Faster R-CNN inference time, freshly built;
- transfer (scripts/transfer_study.py): ImageNet vs Fashion-MNIST vs no backbone pretraining;
- profile (scripts/profile_backbone.py): backbone parameters, FLOPs, memory and speed;
- export (scripts/export.py): ONNX and TorchScript export with a parity check (export_check);
- overhead (scripts/overhead.py): Lightning's training loop against a plain PyTorch one.
- precision (scripts/precision_check.py): one checkpoint in float32 and under autocast on large inputs;
- compare (scripts/compare.py): differences between runs or seed groups, with bootstrap intervals
  and a TIDE-style error breakdown.

Helpers: runs (a job's detector and images), sweeps (launching train.py, a job's results),
tables (CSV and Markdown), timing, memory. Plots use detection.training.figures (matplotlib's
object API on the Agg canvas: no display needed).
"""

import os

# Spinning OpenMP threads starve each other on a shared, oversubscribed CPU (a 2-thread step ran
# ~300x slower); passive waiting costs little on a free machine. Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
