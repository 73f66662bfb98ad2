"""`trainer=multinode` without SLURM: two "nodes" on this machine, each a `torchrun` of one CPU
process (gloo), against `trainer=ddp_cpu` (one node, two processes: the session's run of
conftest.ddp_cpu_run, the same training). Same final weights and step, and one run directory that
only global rank 0 fills: one set of checkpoints, one CSV log, one W&B run.

What each node runs (the user's commands, with `--master_addr` the first node's address):

    torchrun --nnodes=2 --node_rank=<0|1> --nproc_per_node=1 --master_addr=127.0.0.1 \\
        --master_port=<port> scripts/train.py trainer=multinode trainer.num_nodes=2 \\
        trainer.devices=1 trainer.accelerator=cpu trainer.precision=32-true hydra.run.dir=<shared dir>
    # and on node 1 also: hydra.job.name=train_node1 hydra.output_subdir=null

`trainer.precision=32-true`: multinode's 16-mixed (a GPU setting) becomes bf16-mixed on the CPU
(Lightning warns), which would not train as ddp_cpu does. The backend needs no override: DDPStrategy
picks gloo for CPU devices. The node-1 overrides are what Lightning itself gives the local ranks > 0
it launches: its own Hydra log file and no second `.hydra/` write into the shared run directory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import (
    DDP_RUN,
    SCRIPTS,
    batch_norm_probe,
    csv_rows,
    load_checkpoint,
    read_metrics,
    single_run_dir,
    subprocess_env,
    tiny,
    wandb_offline_runs,
)
from lightning.fabric.plugins.environments.lightning import find_free_network_port


def _process_tree(root: int) -> list[int]:
    """`root` and all its descendants, from /proc. torchrun starts its worker in a session of its own,
    out of reach of a killpg on the torchrun process."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:  # "pid (name) state ppid ...": the name may hold spaces and parentheses
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the process ended meanwhile
    tree: list[int] = []
    pending = [root]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending.extend(child for child, parent in parents.items() if parent == pid)
    return tree


def _run_together(commands: Mapping[str, Sequence[str]], cwd: Path, timeout: float) -> dict[str, str]:
    """Start all commands at once and wait for all; each one's output (stdout and stderr) by name.

    A node whose peer failed would wait for it until the rendezvous times out, so the first failure
    (or the timeout) ends the others, with their whole process trees.
    """
    env = subprocess_env(cwd)
    outputs = {name: cwd / f"{name}.out" for name in commands}
    processes: dict[str, subprocess.Popen[bytes]] = {}
    deadline = time.monotonic() + timeout
    try:
        for name, command in commands.items():
            with open(outputs[name], "wb") as output:
                processes[name] = subprocess.Popen(
                    list(command),
                    cwd=cwd,
                    env=env,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        while True:
            codes = [p.poll() for p in processes.values()]  # every one polled: any() would stop early
            if None not in codes or any(codes) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:  # also when pytest-timeout interrupts the wait
        for process in processes.values():
            if process.poll() is None:
                for pid in _process_tree(process.pid):  # collected first: a killed parent orphans them
                    with contextlib.suppress(ProcessLookupError):  # ended since the listing
                        os.kill(pid, signal.SIGKILL)
                process.wait()
    texts = {name: path.read_text(errors="replace") for name, path in outputs.items()}
    report = "\n".join(
        f"--- {name}: exit {p.returncode} (-9: killed after a failure or {timeout} s), tail\n"
        f"{texts[name][-6000:]}"
        for name, p in processes.items()
    )
    assert all(p.returncode == 0 for p in processes.values()), report
    return texts


def _flat(state: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    # a state_dict holds tensors and, for timm's backbone, an `_extra_state` dict of plain values
    flat: dict[str, Any] = {}
    for key, value in state.items():
        if isinstance(value, Mapping):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _files(run_dir: Path) -> list[str]:
    """The run's files, but W&B's (their names hold the clock and a random id)."""
    files = (p.relative_to(run_dir) for p in run_dir.rglob("*") if p.is_file())
    return sorted(str(p) for p in files if p.parts[0] != "wandb")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_torchrun_nodes_train_as_one_node_with_two_processes(
    ddp_cpu_run: dict[str, str], fashiondet_small_root: Path, tmp_path: Path
) -> None:
    log_dir = tmp_path / "logs"
    # what the ddp_cpu run trains: two steps (two batches per rank, one epoch), one batch of
    # validation and of test, the default loggers
    common = [
        *tiny(fashiondet_small_root, log_dir),
        *DDP_RUN,
        *batch_norm_probe(tmp_path / "probe"),
        "trainer.max_epochs=1",
    ]
    # both nodes must name it: the default run.dir holds the clock and a random id of each process
    shared = log_dir / "multinode" / "runs" / "shared"
    port = find_free_network_port()

    def node(rank: int, *extra: str) -> list[str]:
        return [
            *(sys.executable, "-m", "torch.distributed.run"),  # torchrun, of this interpreter
            "--nnodes=2",
            f"--node_rank={rank}",
            "--nproc_per_node=1",
            "--master_addr=127.0.0.1",
            f"--master_port={port}",
            str(SCRIPTS / "train.py"),
            *common,
            "trainer=multinode",
            "trainer.num_nodes=2",
            "trainer.devices=1",
            "trainer.accelerator=cpu",
            "trainer.precision=32-true",
            "task_name=multinode",
            f"hydra.run.dir={shared}",
            *extra,
        ]

    output = _run_together(
        {"node0": node(0), "node1": node(1, "hydra.job.name=train_node1", "hydra.output_subdir=null")},
        tmp_path,
        timeout=240,
    )
    # one process group of two, over gloo, across the two torchrun invocations
    assert "distributed_backend=gloo" in output["node0"]
    assert "Starting with 2 processes" in output["node0"]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in output["node1"]

    # nothing but the shared run directory: node 1 made none of its own
    reference = Path(ddp_cpu_run["run_dir"])
    assert sorted(p.name for p in log_dir.iterdir()) == ["multinode"]
    assert single_run_dir(log_dir, "multinode") == shared
    # what the one-node run writes, once (checkpoints, CSV, metrics, detections, plots, one W&B run),
    # with node 1's Hydra log in place of Lightning's local rank 1's
    assert _files(shared) == sorted(
        "train_node1.log" if f == "train_ddp_process_1.log" else f for f in _files(reference)
    )
    assert len(wandb_offline_runs(shared)) == len(wandb_offline_runs(reference)) == 1
    assert (shared / "train_node1.log").read_text()  # node 1 logged, into the shared directory
    assert csv_rows(shared) == csv_rows(reference)  # the same steps and (rank 0's) values

    # the same training: step and every weight and buffer, bit for bit
    expected = load_checkpoint(reference / "checkpoints" / "last.ckpt")
    got = load_checkpoint(shared / "checkpoints" / "last.ckpt")
    assert got["global_step"] == expected["global_step"] == 2
    assert read_metrics(shared)["global_step"] == read_metrics(reference)["global_step"] == 2
    want, have = _flat(expected["state_dict"]), _flat(got["state_dict"])
    assert have.keys() == want.keys() and len(want) > 300
    different = [
        key
        for key, value in want.items()
        if not (torch.equal(have[key], value) if isinstance(value, torch.Tensor) else have[key] == value)
    ]
    assert different == [], f"{len(different)} of {len(want)} entries differ, e.g. {different[:5]}"
