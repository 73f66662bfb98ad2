"""Research instruments: multirun tables, plots, timing and detection diagnostics.

Shared by scripts/benchmark.py, scripts/transfer_study.py, scripts/profile_backbone.py,
scripts/export.py, scripts/overhead.py and the dashboards callback. Plots use matplotlib's
object API with the Agg canvas (no pyplot, no display needed).
"""
