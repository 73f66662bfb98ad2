"""A non-finite loss, induced for real: the learning rate jumps by 1e12 halfway through (a multistep
schedule with gamma=1e12), the next update throws the weights far out, and the loss after it is NaN.

- `nonfinite_loss=raise` (default): scripts/train.py stops with one final line naming the global
  step, the epoch and every loss part; no traceback; the last checkpoint (end of epoch 0) stays,
  with finite weights, and loads.
- `nonfinite_loss=skip`: the run goes on; each bad step is logged with its step and parts, and
  skipped: the optimiser never steps on it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from test_reliability_support import hydra_job, load, run_script, tiny_overrides

STEPS_PER_EPOCH = 6


def _diverging(data_root: Path, log_dir: Path, *extra: str) -> list[str]:
    return tiny_overrides(
        data_root,
        log_dir,
        "trainer.max_epochs=2",
        "test=false",
        "model.scheduler.name=multistep",
        "model.scheduler.warmup_steps=0",
        "model.scheduler.milestones=[0.5]",  # after 6 of 12 steps, the start of epoch 1
        "model.scheduler.gamma=1e12",
        *extra,
    )


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_nonfinite_loss_stops_run_naming_step_and_parts(fashiondet_small_root: Path, tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    result = run_script("train", _diverging(fashiondet_small_root, log_dir), tmp_path, timeout=170)
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("FloatingPointError: Non-finite loss at global step 7 (epoch 1): ")
    for part in ("classification=nan", "bbox_regression=", "bbox_ctrness="):  # FCOS's loss parts
        assert part in last_line
    assert "model.task.nonfinite_loss=skip" in last_line  # what to do about it
    assert "Traceback" not in result.stderr + result.stdout

    (run_dir,) = (log_dir / "fashiondet" / "runs").iterdir()
    last = load(run_dir / "checkpoints" / "last.ckpt")  # the last good one: end of epoch 0
    assert last["global_step"] == STEPS_PER_EPOCH
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if isinstance(v, torch.Tensor))


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_nonfinite_loss_skip_leaves_the_step_out(
    fashiondet_small_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from detection import pipelines

    overrides = _diverging(
        fashiondet_small_root,
        tmp_path / "logs",
        "model.task.nonfinite_loss=skip",
        "model.scheduler.milestones=[0.9]",  # blow up at step 10 of 12: steps on wrecked weights are slow
        "trainer.limit_val_batches=0",  # nor validate them
        "optimized_metric=null",
    )
    with (
        caplog.at_level(logging.WARNING, logger="detection.training.detection_task"),
        hydra_job(overrides) as cfg,
    ):
        pipelines.train(cfg)
        run_dir = Path(cfg.paths.output_dir)

    skipped = [r.getMessage() for r in caplog.records if "step skipped" in r.getMessage()]
    # step 10 still had sane weights (its update is the one that wrecked them); step 11 is skipped
    assert len(skipped) == 1
    assert skipped[0].startswith("Non-finite loss at global step 11 (epoch 1): classification=nan")
    assert skipped[0].endswith("step skipped (1 so far)")
    last = load(run_dir / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 2 * STEPS_PER_EPOCH  # the run went on to the end
    adam_steps = {float(s["step"]) for s in last["optimizer_states"][0]["state"].values()}
    assert adam_steps == {11.0}  # the optimiser stepped 11 times in 12 steps: not on the skipped one
