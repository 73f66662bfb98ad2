"""Shared by the training-system tests: tiny overrides, in-process Hydra jobs, script subprocesses,
run-directory lookups and a reader for W&B's offline `.wandb` files."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import pytest
from filelock import FileLock
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
SCRIPTS = REPO / "scripts"
TESTS = REPO / "tests"


def small_data(data_root: Path, log_dir: Path) -> list[str]:
    """The small-setting overrides every short run shares: the `small` FashionDet preset, logs under
    `log_dir`, no progress bar or data summary, one thread."""
    return [
        f"data.root={data_root}",
        "data.generate.preset=small",
        "data.print_summary=false",
        f"paths.log_dir={log_dir}",
        "trainer.enable_progress_bar=false",
        "extras.num_threads=1",
    ]


def tiny(data_root: Path, log_dir: Path, limits: bool = True, batch_size: int = 4) -> list[str]:
    """Overrides for runs of a few seconds: `small_data`, thin neck, random backbone, two batches
    (`limits=False` leaves the number of batches to the config, e.g. a debug preset)."""
    limit_overrides = [
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
    ]
    return [
        *small_data(data_root, log_dir),
        f"data.batch_size={batch_size}",
        f"data.eval_batch_size={batch_size}",
        "model.backbone.weights=null",
        "model.detector.neck.out_channels=32",
        *(limit_overrides if limits else []),
    ]


# Fashion-MNIST pretraining (experiment=pretrain_fashion_mnist) in a few seconds.
PRETRAIN_SMALL = [
    "data.train_size=64",
    "data.val_size=32",
    "data.test_size=32",
    "data.image_size=32",
    "data.batch_size=16",
    "data.eval_batch_size=16",
    "trainer.enable_progress_bar=false",
    "extras.num_threads=1",
]

# What the shared ddp_cpu run (conftest.ddp_cpu_run) trains with besides `tiny`: weight EMA, which
# must run under DDP too.
DDP_RUN = ["callbacks=[default,ema]", "callbacks.ema.decay=0.5", "callbacks.ema.warmup_steps=0"]


def batch_norm_probe(folder: Path) -> list[str]:
    """Overrides adding tests/batch_norm_probe.py: each rank's BatchNorm layers and statistics, into
    files in `folder`."""
    return ["+callbacks.probe._target_=batch_norm_probe.BatchNormProbe", f"+callbacks.probe.dirpath={folder}"]


# Runs whose tests are not about logging or plots: the CSV logger only, no config tree, no dashboards.
QUIET = ["extras.print_config=false", "logger=csv", "++callbacks.dashboards=null"]


def offline_env(tmp_path: Path) -> dict[str, str]:
    """W&B offline, its files and caches under tmp, never the network or the home folder."""
    wandb_home = tmp_path / "wandb_home"
    return {
        "WANDB_MODE": "offline",
        "WANDB_CONFIG_DIR": str(wandb_home / "config"),
        "WANDB_CACHE_DIR": str(wandb_home / "cache"),
        "WANDB_DATA_DIR": str(wandb_home / "data"),
        "DETECTION_ROOT": str(tmp_path),
    }


def subprocess_env(tmp_path: Path) -> dict[str, str]:
    """`offline_env`; PYTHONPATH lets a config name a callback of this module (`helpers.<name>`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PL_")}  # no seed from an earlier test
    env.update(
        offline_env(tmp_path),
        HYDRA_FULL_ERROR="1",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(p for p in (str(TESTS), env.get("PYTHONPATH", "")) if p),
    )
    return env


@contextlib.contextmanager
def isolated_environ(tmp_path: Path) -> Iterator[None]:
    """For in-process runs: `offline_env`, and afterwards os.environ exactly as before (the pipelines
    and Lightning set WANDB_*, PL_GLOBAL_SEED, ...)."""
    saved = dict(os.environ)
    os.environ.update(offline_env(tmp_path))
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_script(
    script: str,
    overrides: Sequence[str],
    tmp_path: Path,
    timeout: float,
    multirun: bool = False,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """`python scripts/<script>.py [-m] overrides...` from `tmp_path`; output kept for the assertions.

    The script runs in a process group of its own: on a timeout the whole group goes (DDP ranks > 0
    and W&B's service are its children), so a hang cannot leave processes behind.
    """
    command = [sys.executable, str(SCRIPTS / f"{script}.py"), *(["-m"] if multirun else []), *overrides]
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=subprocess_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        raise AssertionError(
            f"{' '.join(command)} ran over {timeout} s and was killed\n"
            f"--- stdout (tail)\n{stdout[-4000:]}\n--- stderr (tail)\n{stderr[-8000:]}"
        ) from None
    finally:
        if process.poll() is None:  # e.g. pytest-timeout interrupted communicate()
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    result = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} exited with {result.returncode}\n"
            f"--- stdout (tail)\n{result.stdout[-4000:]}\n--- stderr (tail)\n{result.stderr[-8000:]}"
        )
    return result


@contextlib.contextmanager
def hydra_job(overrides: Sequence[str], config_name: str = "train") -> Iterator[DictConfig]:
    """Compose a config as `@hydra.main` would and set up the job around it, in this process.

    Like Hydra's `run_job`: HydraConfig is set (for `${hydra:...}` and the pipelines' multirun
    checks), `hydra.runtime.output_dir` is the created run directory, and the `hydra` node is
    removed from the job's config. Everything is undone on exit.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from detection.runtime import launch  # noqa: F401  (registers ${run_id:})

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    try:
        output_dir = Path(str(OmegaConf.select(cfg, "hydra.run.dir"))).resolve()
        output_dir.mkdir(
            parents=True, exist_ok=True
        )  # an existing run.dir is reused, as a SLURM requeue does
        with read_write(cfg.hydra.runtime):
            cfg.hydra.runtime.output_dir = str(output_dir)
            cfg.hydra.runtime.cwd = os.getcwd()
        HydraConfig.instance().set_config(cfg)
        job_cfg = cfg.copy()
        with read_write(job_cfg), open_dict(job_cfg):
            del job_cfg["hydra"]
        yield job_cfg
    finally:
        HydraConfig.instance().cfg = None


def train_in_process(overrides: Sequence[str]) -> tuple[Path, float | None]:
    """One training job through the same wrapper as scripts/train.py; (run directory, return value)."""
    from detection import pipelines
    from detection.runtime.launch import job

    with hydra_job(overrides) as cfg:
        value = job(pipelines.train)(cfg)
        return Path(cfg.paths.output_dir), value


def single_run_dir(log_dir: Path, task_name: str) -> Path:
    runs = sorted((log_dir / task_name / "runs").iterdir())
    assert len(runs) == 1, f"expected one run directory, found {runs}"
    return runs[0]


def read_metrics(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "metrics.json").read_text())


def csv_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


def load_checkpoint(path: Path) -> dict[str, Any]:
    import torch

    # weights_only=True on purpose: checkpoints must hold plain data only.
    return torch.load(path, map_location="cpu", weights_only=True)


# The reference run several test modules read (resume, eval, predict, W&B files), trained once per session.
_REFERENCE: dict[str, Path] = {}


def reference_overrides(data_root: Path, log_dir: Path) -> list[str]:
    """Faster R-CNN, two epochs of two batches, seeded. A score threshold of 0, COCO's 1000 test
    proposals (not the 100 a 128 px input gets) and one 4 x stride anchor per level: this barely
    trained detector's boxes are near its anchors, some of which overlap objects, so the mAP
    figures that tests compare between runs are not all zero."""
    return [
        "model=faster_rcnn",
        *tiny(data_root, log_dir),
        "task_name=reference",
        "seed=7",
        "trainer.max_epochs=2",
        "trainer.limit_test_batches=null",
        "data.eval_batch_size=8",
        "++model.detector.box_score_thresh=0.0",
        "++model.detector.rpn_pre_nms_top_n_test=1000",
        "++model.detector.rpn_post_nms_top_n_test=1000",
        "model.detector.anchor_sizes=null",
        "model.detector.scales_per_octave=1",
    ]


def reference_run(data_root: Path, tmp_path_factory: Any) -> Path:
    """The run directory of an uninterrupted reference training (subprocess), made once per session
    (for all pytest workers)."""
    if "run_dir" not in _REFERENCE:

        def train() -> dict[str, Any]:
            base = tmp_path_factory.mktemp("reference")
            run_script("train", reference_overrides(data_root, base / "logs"), base, timeout=300)
            return {"run_dir": str(single_run_dir(base / "logs", "reference"))}

        _REFERENCE["run_dir"] = Path(once_per_session(tmp_path_factory, "reference_run", train)["run_dir"])
    return _REFERENCE["run_dir"]


class StopAfterEpoch(L.Callback):
    """Stop training gracefully at the end of epoch `epoch` (0-based), after its checkpoint: a run
    interrupted at an epoch boundary, with the config of the full run."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # ModelCheckpoint runs after the other callbacks, so last.ckpt still holds this epoch.
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


class OptimizerProbe(L.Callback):
    """Before every optimiser step, record to `path` (JSON, at the end of training): the epoch,
    the step, how many backbone parameters have a non-zero gradient and how many the optimiser
    holds, and each parameter group's name and lr."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = []

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any
    ) -> None:
        backbone = list(pl_module.backbone.parameters())
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        self.records.append(
            {
                "epoch": trainer.current_epoch,
                "step": trainer.global_step,
                "backbone_params": len(backbone),
                "backbone_with_grad": sum(
                    p.grad is not None and bool(p.grad.abs().sum() > 0) for p in backbone
                ),
                "backbone_in_optimizer": sum(id(p) in held for p in backbone),
                "lr": {group["name"]: group["lr"] for group in optimizer.param_groups},
            }
        )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        Path(self.path).write_text(json.dumps(self.records))


# ---------------------------------------------------------------------------- W&B offline files
_WANDB_HEADER = b":W&B"
_BLOCK = 32768  # the LevelDB log format that W&B's transaction log (run-<id>.wandb) follows
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def wandb_records(path: Path) -> list[Any]:
    """The `wandb.proto.wandb_internal_pb2.Record`s of an offline run's `.wandb` file.

    This wandb version writes the file from its Go core and ships no Python reader (the old
    `wandb.sdk.internal.datastore` is gone), so the framing is read here and each record is parsed
    with wandb's own protobuf classes: 7-byte header (":W&B", magic, version), then 32 KiB blocks
    of chunks, each `crc32 (4) | length (2, LE) | type (1) | data`.
    """
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if not data.startswith(_WANDB_HEADER):
        raise ValueError(f"{path} is not a W&B transaction log")
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        room = _BLOCK - pos % _BLOCK
        if room < 7:
            pos += room  # block trailer: zero padding
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += room
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == _FIRST:
            pending = chunk
            continue
        if kind == _MIDDLE:
            pending += chunk
            continue
        if kind == _LAST:
            chunk, pending = pending + chunk, b""
        record = wandb_internal_pb2.Record()
        record.ParseFromString(chunk)
        records.append(record)
    return records


def wandb_offline_runs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def wandb_run_file(offline_run: Path) -> Path:
    (path,) = offline_run.glob("run-*.wandb")
    return path


def _item_key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def wandb_run_info(path: Path) -> dict[str, Any]:
    """id, group, the last config (nested, as logged) and the history of every metric, from the records."""
    info: dict[str, Any] = {"id": None, "group": None, "config": {}, "history": {}}
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            info["id"] = record.run.run_id
            info["group"] = record.run.run_group
            for item in record.run.config.update:
                info["config"][_item_key(item)] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                info["config"][_item_key(item)] = json.loads(item.value_json)
        elif kind == "history":
            for item in record.history.item:
                info["history"].setdefault(_item_key(item), []).append(json.loads(item.value_json))
    return info


def once_per_session(
    tmp_path_factory: pytest.TempPathFactory, name: str, compute: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """`compute()` once for the whole test session, whichever pytest worker asks first; the others
    wait for it and get the same result (plain JSON data: paths as strings). pytest-xdist runs a
    module's fixture once in every worker that runs one of its tests; for a run of a minute that
    doubles the cost."""
    shared = tmp_path_factory.getbasetemp().parent  # the session's folder, above each worker's own
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return compute()
    result_file = shared / f"{name}.json"
    with FileLock(str(shared / f"{name}.lock")):
        if result_file.is_file():
            return json.loads(result_file.read_text())
        result = compute()
        result_file.write_text(json.dumps(result))
    return result
