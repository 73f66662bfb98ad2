"""Shared fixtures: the `small` FashionDet preset, generated once per test session; one `trainer=ddp_cpu`
run that two tests read; a one-node SLURM cluster (scripts/slurm_cluster.sh), one per pytest worker;
`gpu` tests skip without CUDA."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest workers on two cores: one thread each, as the subprocess runs have
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` skip, saying why, where CUDA is missing (`make test PYTEST_ARGS="-m gpu"`)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def fashiondet_small_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A FashionDet set of the `small` preset (48/24/24 canvases, seed 0), ~1 s to write. Read-only:
    tests that change files must copy it first."""
    from detection.data import make_fashiondet

    return make_fashiondet(tmp_path_factory.mktemp("fashiondet_small"), preset="small", seed=0, workers=1)


@pytest.fixture(scope="session")
def ddp_cpu_run(fashiondet_small_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """`trainer=ddp_cpu` (two processes, gloo): one epoch of two steps with `DDP_RUN`, the default
    loggers (W&B offline, CSV) and dashboards, once per session. tests/test_train_ddp.py checks it
    and resumes it (in `log_dir`, as a second run); tests/test_train_multinode.py trains the same on
    two torchrun "nodes". Its run directory, log folder, probe folder and output (stdout, stderr)."""
    from helpers import DDP_RUN, batch_norm_probe, once_per_session, run_script, single_run_dir, tiny

    def train() -> dict[str, str]:
        base = tmp_path_factory.mktemp("ddp_cpu_run")
        log_dir = base / "logs"
        result = run_script(
            "train",
            [
                *tiny(fashiondet_small_root, log_dir),
                *DDP_RUN,
                *batch_norm_probe(base / "probe"),  # EfficientNet-Lite0 with trained BatchNorm (norm: bn)
                "trainer=ddp_cpu",
                "trainer.max_epochs=1",
                "task_name=ddp",
            ],
            base,
            timeout=500,
        )
        return {
            "run_dir": str(single_run_dir(log_dir, "ddp")),  # rank 1 made no directory of its own
            "log_dir": str(log_dir),
            "probe": str(base / "probe"),
            "output": result.stdout + result.stderr,
        }

    return once_per_session(tmp_path_factory, "ddp_cpu_run", train)


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A one-node SLURM cluster for this session (each pytest worker its own: free ports, own
    folder); yields the environment its clients need. Skips, saying why, where it cannot run
    (not root and SLURM missing, no apt-get)."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "slurm_cluster.sh"
    folder = tmp_path_factory.mktemp("slurm")
    up = subprocess.run(["bash", str(script), "up", str(folder)], capture_output=True, text=True, timeout=900)
    if up.returncode == 3:
        pytest.skip(up.stderr.strip())
    assert up.returncode == 0, f"the SLURM cluster did not start:\n{up.stderr}"
    try:
        yield {"SLURM_CONF": str(folder / "slurm.conf"), "PATH": f"{folder / 'bin'}:{os.environ['PATH']}"}
    finally:
        subprocess.run(["bash", str(script), "down", str(folder)], timeout=120, check=False)
