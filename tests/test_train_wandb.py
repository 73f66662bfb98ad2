"""W&B: offline without credentials (never a prompt), and the offline run files of a training run
hold the nested config, the val/mAP history and the box overlays, read with wandb's own protobufs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from helpers import csv_rows, reference_run, wandb_offline_runs, wandb_records, wandb_run_file, wandb_run_info
from omegaconf import OmegaConf

from detection.runtime.logging import choose_wandb_mode


def test_mode_is_offline_without_credentials_or_server(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    empty_netrc = tmp_path / "netrc"
    empty_netrc.write_text("")
    monkeypatch.setenv("NETRC", str(empty_netrc))
    mode, reason = choose_wandb_mode()
    assert mode == "offline" and "credentials" in reason
    # a key but no server (a closed local port, so no network is touched): offline again
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    assert choose_wandb_mode() == ("offline", "the W&B server is not reachable")
    assert choose_wandb_mode("disabled") == ("disabled", "requested")
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert choose_wandb_mode()[0] == "offline"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_offline_run_holds_nested_config_and_val_map_history(
    fashiondet_small_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    run_dir = reference_run(fashiondet_small_root, tmp_path_factory)
    (offline_run,) = wandb_offline_runs(run_dir)
    info = wandb_run_info(wandb_run_file(offline_run))
    assert info["id"] == json.loads((run_dir / "run.json").read_text())["wandb_id"]
    assert offline_run.name.endswith(f"-{info['id']}")

    config = info["config"]
    # nested as composed: groups are mappings, not flattened "model/optimizer/lr" keys
    composed = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    assert config["model"]["optimizer"]["lr"] == composed.model.optimizer.lr
    assert config["model"]["detector"]["head"] == "faster_rcnn"
    assert config["model"]["detector"]["backbone"]["name"] == "efficientnet_lite0"
    assert config["data"]["batch_size"] == 4 and config["trainer"]["max_epochs"] == 2
    assert config["seed"] == 7 and config["task_name"] == "reference"
    assert config["paths"]["output_dir"] == str(run_dir)  # resolved
    assert not any("/" in key or "." in key for key in config if not key.startswith("_wandb"))
    assert "detector" not in config  # the task's hyper-parameters are not logged a second time, flat

    # one val/mAP point per validation, the values the CSV logger saw
    csv_map = [float(row["val/mAP"]) for row in csv_rows(run_dir) if row.get("val/mAP")]
    assert len(csv_map) == 2
    history = info["history"]
    assert all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9) for a, b in zip(history["val/mAP"], csv_map))
    assert len(history["val/mAP"]) == 2 and len(history["test/mAP"]) == 1
    assert history["val/predictions/_type"] == ["images/separated", "images/separated"]  # box overlays
    assert list(offline_run.glob("files/media/metadata/boxes2D/**/*.boxes2D.json"))
    assert [r.WhichOneof("record_type") for r in wandb_records(wandb_run_file(offline_run))][-1] == "exit"
