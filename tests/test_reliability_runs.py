"""Kills and preemption lose nothing but the steps after the last checkpoint.

- Lightning's own mid-epoch restart with a plain DataLoader repeats the epoch's first batches and
  never runs its last ones; the template's ResumableDataLoader runs exactly the rest of the epoch.
- `kill -9` of a training process after a mid-epoch checkpoint, then `ckpt_path=last`: the resumed
  run ends with exactly the weights of an uninterrupted run (same step count, same batches, same
  augmentations).
- SIGTERM writes `last.ckpt` at the end of the current batch and the process exits with status 0.
- On a real SLURM cluster (the `slurm` fixture): a job preempted mid-epoch (`scontrol requeue`) and a
  job given the time-limit warning (USR2: checkpoint, then requeue itself) start again by themselves
  and end with the uninterrupted run's weights.
- Checkpoints load with `torch.load(weights_only=True)`; a planted W&B API key appears nowhere in
  what a run writes.
- `scripts/eval.py trainer=ddp_cpu` on a split of 23 images gives the single-process metrics to 1e-6.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import helpers
import lightning as L
import pytest
import torch
from slurm_support import SLURM_CPU, array_task, finish, slurm_command, start_sweep, wait_until
from test_reliability_support import (
    hydra_job,
    load,
    run_env,
    run_script,
    script,
    tiny_overrides,
    train_here,
)
from torch.utils.data import DataLoader, TensorDataset

from detection.data.loading import EpochRandomSampler, ResumableDataLoader

STEPS_PER_EPOCH = 6  # 48 training canvases of the small preset in batches of 8
EPOCHS = 2
EVERY = 4  # last.ckpt every 4 steps: steps 4 and 8 fall inside an epoch
FAKE_WANDB_KEY = "f4ke5ecret0000111122223333444455556666aa"  # 40 hex digits, like a real key


def _overrides(data_root: Path, log_dir: Path, *extra: str, every: int = EVERY) -> list[str]:
    return tiny_overrides(
        data_root,
        log_dir,
        f"trainer.max_epochs={EPOCHS}",
        "test=false",
        f"callbacks.last_checkpoint.every_n_train_steps={every}",
        # pretrained, no warmup: after 12 steps the model finds a few objects (DDP metric test)
        "model.backbone.weights=imagenet",
        "model.scheduler.warmup_steps=0",
        "model.optimizer.lr=3e-3",
        *extra,
    )


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    return a == b  # modules' extra state (plain data)


def _assert_same_weights(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["global_step"] == b["global_step"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    different = [k for k in a["state_dict"] if not _equal(a["state_dict"][k], b["state_dict"][k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def _start(overrides: Sequence[str], tmp_path: Path, **env: str) -> tuple[subprocess.Popen, Path]:
    out = tmp_path / "train.out"
    proc = subprocess.Popen(
        [*script("train"), *overrides],
        cwd=tmp_path,
        env=run_env(tmp_path, **env),
        stdout=out.open("w"),
        stderr=subprocess.STDOUT,
    )
    return proc, out


def _wait_for(find: Callable[[], Path | None], proc: subprocess.Popen, out: Path, timeout: float) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = find()
        if found is not None:
            return found
        if proc.poll() is not None:
            pytest.fail(
                f"training exited ({proc.returncode}) before its checkpoint:\n{out.read_text()[-4000:]}"
            )
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"no checkpoint within {timeout} s:\n{out.read_text()[-4000:]}")


def _last_ckpt(log_dir: Path) -> Callable[[], Path | None]:
    return lambda: next(iter(log_dir.glob("fashiondet/runs/*/checkpoints/last.ckpt")), None)


@pytest.fixture(scope="module")
def uninterrupted(fashiondet_small_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The reference: the same run, never stopped."""

    def train() -> dict[str, Any]:
        return {
            "run_dir": str(
                train_here(_overrides(fashiondet_small_root, tmp_path_factory.mktemp("uninterrupted")))
            )
        }

    run_dir = Path(helpers.once_per_session(tmp_path_factory, "uninterrupted", train)["run_dir"])
    return {"run_dir": run_dir, "last": load(run_dir / "checkpoints" / "last.ckpt")}


# ------------------------------------------------------------------------------------ the loader
class _Recorder(L.LightningModule):
    """Records the samples each training step sees; learns nothing (lr 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.seen: list[list[int]] = []

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.seen.append(batch[0].flatten().long().tolist())
        return self.layer(batch[0]).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _steps_after_resume(loader_factory: Callable[[], DataLoader], tmp_path: Path) -> tuple[list, list]:
    """(batches of an uninterrupted epoch, batches run after resuming from its step-2 checkpoint)."""
    trainer_kwargs = dict(
        max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu"
    )
    saver = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=tmp_path, filename="{step}", every_n_train_steps=2, save_top_k=-1
    )
    full = _Recorder()
    L.seed_everything(0)
    L.Trainer(callbacks=[saver], **trainer_kwargs).fit(full, loader_factory())
    resumed = _Recorder()
    L.seed_everything(0)
    L.Trainer(enable_checkpointing=False, **trainer_kwargs).fit(
        resumed, loader_factory(), ckpt_path=tmp_path / "step=2.ckpt"
    )
    return full.seen, resumed.seen


def test_mid_epoch_resume_plain_loader_repeats_resumable_loader_continues(tmp_path: Path) -> None:
    data = TensorDataset(torch.arange(12, dtype=torch.float32)[:, None])

    full, resumed = _steps_after_resume(lambda: DataLoader(data, batch_size=2), tmp_path / "plain")
    # Lightning runs the 4 remaining steps, but from the loader's start: batches 0-1 twice, 4-5 never.
    assert resumed == full[:4] and full[2:] != resumed

    def resumable() -> DataLoader:
        return ResumableDataLoader(data, batch_size=2, sampler=EpochRandomSampler(data))

    full, resumed = _steps_after_resume(resumable, tmp_path / "resumable")
    assert resumed == full[2:]  # exactly the rest of the same shuffled epoch


# ------------------------------------------------------------------------------------ kill -9
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_kill9_mid_epoch_then_resume_last_matches_uninterrupted_run(
    fashiondet_small_root: Path, tmp_path: Path, uninterrupted: dict[str, Any]
) -> None:
    log_dir = tmp_path / "logs"
    overrides = _overrides(fashiondet_small_root, log_dir)
    proc, out = _start(overrides, tmp_path)
    ckpt = _wait_for(_last_ckpt(log_dir), proc, out, timeout=150)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    killed = load(ckpt)
    step = killed["global_step"]
    assert step in (EVERY, 2 * EVERY) and step % STEPS_PER_EPOCH != 0, "expected a mid-epoch checkpoint"
    # the loader's place in the epoch travels with the checkpoint
    (loader_state,) = killed["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert loader_state["batches"] == step % STEPS_PER_EPOCH
    assert loader_state["epoch"] == step // STEPS_PER_EPOCH

    resumed_dir = train_here([*overrides, "ckpt_path=last"])
    assert resumed_dir != ckpt.parent.parent
    resumed = load(resumed_dir / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == EPOCHS * STEPS_PER_EPOCH  # the counters continued from `step`
    _assert_same_weights(resumed, uninterrupted["last"])


# ------------------------------------------------------------------------------------ SIGTERM
@pytest.fixture(scope="module")
def preempted(fashiondet_small_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A run (W&B offline + CSV, a W&B API key in its environment) sent SIGTERM after its first
    periodic checkpoint."""

    def stop() -> dict[str, Any]:
        tmp_path = tmp_path_factory.mktemp("preempted")
        log_dir = tmp_path / "logs"
        overrides = _overrides(fashiondet_small_root, log_dir, "logger=default")
        proc, out = _start(overrides, tmp_path, WANDB_API_KEY=FAKE_WANDB_KEY)
        ckpt = _wait_for(_last_ckpt(log_dir), proc, out, timeout=150)
        periodic = ckpt.stat().st_ino
        proc.send_signal(signal.SIGTERM)
        returncode = proc.wait(timeout=90)
        return {
            "returncode": returncode,
            "periodic_inode": periodic,
            "output": out.read_text(),
            "run_dir": str(ckpt.parent.parent),
            "tmp_path": str(tmp_path),
        }

    result = helpers.once_per_session(tmp_path_factory, "preempted", stop)
    return {**result, "run_dir": Path(result["run_dir"]), "tmp_path": Path(result["tmp_path"])}


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sigterm_saves_last_checkpoint_and_exits_cleanly(preempted: dict[str, Any]) -> None:
    assert preempted["returncode"] == 0, preempted["output"][-4000:]
    path = preempted["run_dir"] / "checkpoints" / "last.ckpt"
    # a new file replaced the periodic step-4 checkpoint when the signal came (it may be the same step:
    # the signal is acted on at the end of the batch it arrives in)
    assert path.stat().st_ino != preempted["periodic_inode"]
    last = load(path)
    assert EVERY <= last["global_step"] < EPOCHS * STEPS_PER_EPOCH
    assert f"SIGTERM: saved {path} at global step {last['global_step']}" in preempted["output"]
    assert not (preempted["run_dir"] / "metrics.json").exists()  # stopped, not finished


# ------------------------------------------------------------------------------------ on SLURM
@pytest.fixture(scope="module")
def stopped_on_slurm(
    slurm: dict[str, str], fashiondet_small_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """The uninterrupted run's training as two SLURM jobs of one sweep: job 0 preempted
    (`scontrol requeue`: SIGTERM, back to the queue), job 1 given the time-limit warning (USR2, as
    `--signal=USR2@signal_delay_s` sends it), each once its first checkpoint is written."""

    def stop_two_jobs() -> dict[str, Any]:
        tmp_path = tmp_path_factory.mktemp("stopped_on_slurm")
        sweep_dir = tmp_path / "sweep"
        overrides = [
            # a last.ckpt every step: the signal goes as the first is written and lands within the
            # epoch's six steps however slow the machine (checkpoints do not change the weights)
            *_overrides(fashiondet_small_root, tmp_path / "logs", every=1),
            "launcher=submitit_slurm",
            *(f"{k}={v}" for k, v in SLURM_CPU.items()),
            f"hydra.sweep.dir={sweep_dir}",
            "+slurm_case=preempted,time_limit",  # a label: both train as the uninterrupted run
        ]
        proc = start_sweep(overrides, tmp_path, slurm)
        for index, stop in ((0, ["scontrol", "requeue"]), (1, ["scancel", "--signal=USR2"])):
            checkpoint = sweep_dir / str(index) / "checkpoints" / "last.ckpt"
            wait_until(f"job {index}'s first checkpoint", checkpoint.is_file, sweep_dir, slurm, timeout=240)
            # sent now: slurmctld's own timer would send the warning up to 30 s late
            slurm_command(slurm, *stop, array_task(sweep_dir, index))
        output = finish(proc, timeout=400)
        assert proc.returncode == 0, output[-6000:]
        return {"jobs": [str(sweep_dir / str(i)) for i in range(2)]}

    jobs = [
        Path(job)
        for job in helpers.once_per_session(tmp_path_factory, "stopped_on_slurm", stop_two_jobs)["jobs"]
    ]
    return {
        "jobs": jobs,
        "logs": [(job / "train.log").read_text() for job in jobs],
        "last": [load(job / "checkpoints" / "last.ckpt") for job in jobs],
    }


def _saved_mid_epoch(log: str, run_dir: Path) -> int:
    saved = re.search(
        rf"SIGTERM: saved {re.escape(str(run_dir))}/checkpoints/last.ckpt at global step (\d+)", log
    )
    assert saved, log[-4000:]
    step = int(saved.group(1))
    assert 1 <= step < EPOCHS * STEPS_PER_EPOCH and step % STEPS_PER_EPOCH != 0, f"step {step}: not mid-epoch"
    return step


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_preempted_slurm_job_continues_and_ends_with_the_uninterrupted_weights(
    stopped_on_slurm: dict[str, Any], uninterrupted: dict[str, Any]
) -> None:
    log, run_dir = stopped_on_slurm["logs"][0], stopped_on_slurm["jobs"][0]
    _saved_mid_epoch(log, run_dir)
    assert "(a requeued job): resuming from it" in log  # SLURM started it again, in its own folder
    assert (run_dir / "metrics.json").is_file() and not (run_dir / "error.txt").exists()
    resumed = stopped_on_slurm["last"][0]
    assert resumed["global_step"] == EPOCHS * STEPS_PER_EPOCH
    _assert_same_weights(resumed, uninterrupted["last"])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_slurm_time_limit_warning_checkpoints_then_requeues_and_ends_with_the_uninterrupted_weights(
    stopped_on_slurm: dict[str, Any], uninterrupted: dict[str, Any]
) -> None:
    log, run_dir = stopped_on_slurm["logs"][1], stopped_on_slurm["jobs"][1]
    warned = log.index("SIGUSR2: the SLURM time limit is near")
    step = _saved_mid_epoch(log[warned:], run_dir)
    saved = log.index(f"at global step {step}", warned)
    requeued = log.index("Requeued SLURM job", warned)
    resumed = log.index("(a requeued job): resuming from it", warned)
    assert warned < saved < requeued < resumed  # the checkpoint first, then the requeue, then the restart
    assert stopped_on_slurm["last"][1]["global_step"] == EPOCHS * STEPS_PER_EPOCH
    _assert_same_weights(stopped_on_slurm["last"][1], uninterrupted["last"])


# ------------------------------------------------------------------------------------ safety
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_checkpoints_load_with_weights_only(preempted: dict[str, Any], uninterrupted: dict[str, Any]) -> None:
    paths = [
        *sorted((uninterrupted["run_dir"] / "checkpoints").glob("*.ckpt")),
        preempted["run_dir"] / "checkpoints" / "last.ckpt",  # written by the SIGTERM callback
    ]
    assert len(paths) >= 3
    for path in paths:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        assert {"state_dict", "optimizer_states", "callbacks", "hyper_parameters"} <= checkpoint.keys()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_no_wandb_key_written_by_a_run(preempted: dict[str, Any]) -> None:
    run_dir = preempted["run_dir"]
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files), "the W&B offline run files should be there"
    assert any(p.name == "config.yaml" for p in files)  # Hydra's saved config
    # everything the run wrote: the run directory, W&B's own folders (tmp here), the console output
    written = [p for p in preempted["tmp_path"].rglob("*") if p.is_file()]
    key = FAKE_WANDB_KEY.encode()
    leaking = [p for p in written if key in p.read_bytes()]
    assert not leaking, f"the W&B API key was written to {leaking}"


# ------------------------------------------------------------------------------------ DDP metrics
def _split(source: Path, target: Path, count: int, duplicate_first: bool = False) -> Path:
    """The first `count` images of a COCO file (and their boxes); optionally the first image once
    more under a new id, as a padding sampler would evaluate it twice."""
    data = json.loads(source.read_text())
    images = data["images"][:count]
    ids = {image["id"] for image in images}
    annotations = [a for a in data["annotations"] if a["image_id"] in ids]
    if duplicate_first:
        new_id = max(i["id"] for i in data["images"]) + 1
        images.append({**images[0], "id": new_id})
        next_ann = max(a["id"] for a in data["annotations"]) + 1
        firsts = [a for a in annotations if a["image_id"] == images[0]["id"]]
        annotations += [{**a, "id": next_ann + k, "image_id": new_id} for k, a in enumerate(firsts)]
    target.write_text(json.dumps({**data, "images": images, "annotations": annotations}))
    return target


def _evaluate_here(overrides: Sequence[str]) -> dict[str, float]:
    from detection import pipelines

    with hydra_job(overrides, config_name="eval") as cfg:
        return pipelines.evaluate(cfg)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_ddp_test_metrics_on_odd_split_equal_single_process(
    fashiondet_small_root: Path, tmp_path: Path, uninterrupted: dict[str, Any]
) -> None:
    ckpt = uninterrupted["run_dir"] / "checkpoints" / "last.ckpt"
    source = fashiondet_small_root / "annotations" / "instances_test.json"
    odd = _split(source, tmp_path / "test_23.json", 23)

    def overrides(ann: Path, log_dir: Path, *extra: str) -> list[str]:
        return [
            *helpers.small_data(fashiondet_small_root, log_dir),
            f"ckpt_path={ckpt}",
            f"+data.test_ann={ann}",
            f"+data.test_images={fashiondet_small_root / 'test'}",
            "data.eval_batch_size=4",  # 12 + 11 images: ranks run different numbers of batches
            "logger=csv",
            *extra,
        ]

    single = _evaluate_here(overrides(odd, tmp_path / "single", "trainer=cpu"))
    result = run_script("eval", overrides(odd, tmp_path / "ddp", "trainer=ddp_cpu"), tmp_path, timeout=200)
    assert result.returncode == 0, result.stderr[-4000:]
    (run_dir,) = (tmp_path / "ddp" / "eval" / "runs").iterdir()
    ddp = json.loads((run_dir / "metrics.json").read_text())
    assert single["test/mAP"] > 0 and single["test/mAR_100"] > 0  # the model finds something
    names = sorted(k for k in single if k.startswith("test/"))
    assert names == sorted(k for k in ddp if k.startswith("test/"))
    for name in names:
        assert ddp[name] == pytest.approx(single[name], abs=1e-6), name
    # The comparison can see a duplicate: evaluating image 0 twice (what DistributedSampler's padding
    # to 24 would do) changes the numbers.
    padded = _evaluate_here(
        overrides(_split(source, tmp_path / "test_23_plus_1.json", 23, True), tmp_path / "pad", "trainer=cpu")
    )
    assert max(abs(padded[k] - single[k]) for k in ("test/mAP", "test/mAR_100")) > 1e-5


# ------------------------------------------------------------------------------------ SLURM
def test_slurm_launcher_gives_one_task_per_gpu_and_requeues(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir
    from submitit.slurm.slurm import _make_sbatch_string  # what submitit writes for sbatch
    from test_reliability_support import CONF_DIR

    overrides = ["launcher=submitit_slurm", "trainer=multinode", "trainer.devices=4", "paths.output_dir=/x"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert (cfg.trainer.num_nodes, cfg.trainer.devices) == (2, 4)
    sbatch = _make_sbatch_string(
        command="python scripts/train.py",
        folder=tmp_path,
        job_name="train",
        nodes=launcher.nodes,
        ntasks_per_node=launcher.tasks_per_node,
        gpus_per_node=launcher.gpus_per_node,
        cpus_per_task=launcher.cpus_per_task,
        signal_delay_s=launcher.signal_delay_s,
        additional_parameters=dict(launcher.additional_parameters),
    )
    for line in (
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=4",  # a DDP rank per GPU, as Lightning's SLURM environment expects
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --requeue",
        "#SBATCH --signal=USR2@120",
    ):
        assert line in sbatch.splitlines(), line
