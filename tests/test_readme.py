"""The README cannot drift: every command of its ```bash blocks runs, as written, in small settings.

What is a command: each line of a fenced ```bash block of README.md, with a line that ends in `\\`
joined to the next and a `#` comment stripped (shell rules: not inside quotes). Every command must
start with `python scripts/`, `make ` or `torchrun ... scripts/` (one node of several: composed);
anything else in a bash block fails this test, so put other text in another kind of block (```text,
or none).

How each command runs: with `helpers.run_script` (W&B offline, `helpers.subprocess_env`) from a
fresh working directory under tmp, so that relative paths (`logs/`, `data/...`) land there as they
land in the repository root for a user there; `paths.log_dir` is never set (the Optuna study file
must find its place by itself). The command runs as written, then *only* small settings appended:

- training (`python scripts/train.py ...`, also under `-m`): `helpers.tiny` (the small FashionDet
  set written once per session, thin neck, random backbone, 2 batches; with `data=coco|voc|yolo`
  without the generator's keys), one epoch (two when the command resumes: `ckpt_path=`), and
  `helpers.QUIET` (CSV logger only, no dashboards) except for `make train`, which keeps the default
  experiment's W&B and dashboards; the Optuna search gets `hydra.sweeper.n_trials=2`. Backbone
  pretraining (`experiment=pretrain_fashion_mnist`) gets a few Fashion-MNIST images instead; eval
  and predict the small data set.
- `convert_data.py` and `inspect_data.py`: with `data=fashiondet` (their default) the small set,
  with a data set of files (`data=coco|voc|yolo`) nothing; `inspect_data.py` draws `num_images=4`.
- a setting is never appended when the command sets that key itself.

Special rules: `make test ...` is the command running this test: skipped. `make train ARGS="..."`
runs as `python scripts/train.py ...`, the Makefile's recipe (asserted below). Another `make
<target>` (lint, format: they act on the whole checkout) runs as `make -n <target>`: the target
exists. Commands that need hardware or a cluster this machine lacks (`trainer=gpu`, `trainer=ddp`,
`trainer=multinode`, `launcher=submitit_slurm`), and `trainer=ddp_cpu` (tests/test_train_ddp.py and
others run it), are composed in this process as Hydra's `--cfg job` would print them (a sweep: its
first job; a `torchrun` node: its script's overrides): their config still composes, and holds their
overrides. tests/test_slurm.py runs the README's SLURM sweep for real.

Checked without running (`TESTED_ELSEWHERE`, each naming the test that runs it for real, with
assertions on what it makes): every research tool's commands (its own parser takes the flags; the
Hydra overrides after `--` compose), and training commands that a test of their feature runs in the
same settings (data layouts, sweeps, fine-tuning callbacks, resume, eval): composed as above. A process
start and a training each cost the suite time it has not got; a README line that changes runs here
for real until it is mapped again.

Placeholders are replaced by what an earlier command of the test produced:
`logs/<task>/runs/<run>` and `ckpt_path=last` by a run of that task (the one the README's `make
train` made for `fashiondet`, its `experiment=pretrain_fashion_mnist` command for
`pretrain_fashion_mnist`), copied into the command's working directory; `<checkpoint>` by the
pretraining run's `last.ckpt`; `<stamp>` by the newest folder an earlier command of the same
section wrote there; `/path/to/dataset` by the small FashionDet set (a COCO layout); any other
`/path/to/<name>` by the data set that an earlier README command `convert_data.py ...
out=/path/to/<name>` wrote (that command writes it under its own working directory, as
`path/to/<name>`; the later commands read it there); `path/to/images` is created in the working
directory with two test canvases.

Each command must exit with status 0 and produce what it is for: a run with `metrics.json` and a
checkpoint, the sweep's jobs, a table, a data set (`convert_data.py`: every split it names in the
target layout, each image with its annotation; `inspect_data.py`: the summary and its three PNGs).
Independent commands run two at a time (the runs are single-threaded; `README_TEST_WORKERS=1` runs
them one by one).
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import io
import json
import os
import pickle
import re
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import helpers
import pytest
import yaml
from filelock import FileLock
from helpers import QUIET, REPO, SCRIPTS, read_metrics, run_script, small_data, tiny, wandb_offline_runs
from PIL import Image

README = REPO / "README.md"
MAKEFILE = REPO / "Makefile"
WORKERS = int(os.environ.get("README_TEST_WORKERS", "2"))
TIMEOUT = 420  # seconds for one command (a few seconds each when the machine is free)

# Runs that later commands take as placeholders: the task's name -> the README command making it.
PRODUCERS = {
    "fashiondet": "make train",
    "pretrain_fashion_mnist": "python scripts/train.py experiment=pretrain_fashion_mnist",
}
# Data sets the README names by placeholder: `/path/to/dataset` is the small FashionDet set; any other
# `/path/to/<name>` is written by an earlier README `convert_data.py ... out=/path/to/<name>`.
DATA_PLACEHOLDER = re.compile(r"/path/to/[\w.-]+")
SMALL_DATASET = "/path/to/dataset"
FILE_LAYOUTS = ("coco", "voc", "yolo")  # data sets of files: no generator to set
_HYDRA_LOCK = threading.Lock()
# Overrides that ask for hardware or a cluster: composed only (`--cfg job`).
NEEDS_HARDWARE = ("trainer=gpu", "trainer=ddp", "trainer=multinode", "launcher=submitit_slurm")
GPU_TRAINERS = ("trainer=gpu", "trainer=ddp", "trainer=multinode")
# Composed only as well, because other tests run them for real (and the suite's time is bounded):
# two CPU processes under DDP (tests/test_train_ddp.py and five more).
RUN_ELSEWHERE = ("trainer=ddp_cpu",)
# Commands that another test runs for real, with assertions on what they make, are checked here
# without running them (each run costs a process start and a training; the suite's time is
# bounded): a training command's config composes with its overrides, a research tool's flags parse
# with its own parser (its Hydra overrides after `--` compose). Keyed by the command as written, or
# by `scripts/<tool>.py` for every command of a tool; a changed README line runs here for real.
_LAYOUTS = "test_data_convert.py::test_fashiondet_trains_and_scores_the_same_from_every_layout"
_FINETUNING = "test_train_finetuning.py::" + (
    "test_unfreeze_and_ema_run_stopped_mid_schedule_and_resumed_equals_uninterrupted_run"
)
_TOOLS = "test_research_scripts.py::test_"
_PRETRAINED = "test_train_pipeline.py::test_fashion_mnist_pretraining_learns_and_loads_into_every_head"
TESTED_ELSEWHERE = {
    "python scripts/train.py data=coco data.root=/path/to/dataset": _LAYOUTS,
    "python scripts/train.py data=voc data.root=/path/to/voc": _LAYOUTS,
    "python scripts/train.py data=yolo data.root=/path/to/yolo": _LAYOUTS,
    "python scripts/train.py experiment=pretrain_fashion_crops": "test_data_crops.py::"
    "test_pretraining_on_fashion_crops_learns_and_its_backbone_loads_into_every_head",
    'python scripts/train.py "callbacks=[default,ema]" callbacks.ema.decay=0.999': _FINETUNING,
    'python scripts/train.py "callbacks=[default,backbone_unfreeze]" '
    "callbacks.backbone_unfreeze.unfreeze_at_epoch=2": _FINETUNING,
    "python scripts/eval.py ckpt_path=logs/fashiondet/runs/<run>/checkpoints/last.ckpt": (
        "test_train_eval_predict.py::test_eval_repeats_the_training_test"
    ),
    "python scripts/train.py experiment=pretrain_fashion_mnist": _PRETRAINED,
    "python scripts/train.py model/backbone=resnet10t "
    "model.backbone.weights=logs/pretrain_fashion_mnist/runs/<run>/checkpoints/last.ckpt": _PRETRAINED,
    "python scripts/train.py model.task.layer_decay=0.7 model.task.backbone_lr_mult=0.5": (
        "test_train_finetuning.py::test_layer_decay_and_backbone_lr_mult_reach_the_optimizer_of_a_run"
    ),
    "python scripts/train.py ckpt_path=last": "test_reliability_runs.py::"
    "test_kill9_mid_epoch_then_resume_last_matches_uninterrupted_run",
    "python scripts/train.py ckpt_path=logs/fashiondet/runs/<run>": "test_train_resume.py::"
    "test_stopped_and_resumed_run_equals_uninterrupted_run",
    "python scripts/train.py -m model.optimizer.lr=1e-3,3e-3": "test_train_sweeps.py::"
    "test_sweep_over_learning_rates_goes_on_after_a_failing_job",
    "python scripts/train.py -m hparams_search=fashiondet_optuna": "test_train_sweeps.py::"
    "test_optuna_sweep_keeps_its_study_in_a_storage_file",
    "scripts/benchmark.py": _TOOLS + "benchmark_tabulates_heads_and_compares_light_head",
    "scripts/benchmark_heads.py": _TOOLS + "benchmark_heads_prints_both_heads_per_image",
    "scripts/transfer_study.py": _TOOLS + "transfer_study_pretrains_then_compares_backbone_starts",
    "scripts/profile_backbone.py": _TOOLS + "profile_backbone_writes_table_and_plot",
    "scripts/export.py": _TOOLS + "export_fcos_matches_onnxruntime_on_fashiondet_images",
    "scripts/overhead.py": _TOOLS + "overhead_prints_the_ratio_and_both_loops_agree",
    "scripts/precision_check.py": "test_research_precision.py::"
    "test_precision_check_scores_a_checkpoint_per_precision",
}
# Fashion-MNIST pretraining in a few seconds.
PRETRAIN_SMALL = [
    *helpers.PRETRAIN_SMALL,
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
]


# ------------------------------------------------------------------------------------ the README
@dataclass(frozen=True)
class Command:
    section: str
    line: int
    text: str  # as written, continuations joined, comment stripped

    @property
    def id(self) -> str:
        return f"{self.section}: {self.text}"


def readme_commands(text: str | None = None) -> list[Command]:
    """Every command of the README's ```bash blocks, in order, with the `## ` section it is in."""
    lines = (README.read_text() if text is None else text).splitlines()
    commands, section, in_bash, pending, start = [], "", False, "", 0
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not in_bash:
            if line.startswith("## "):
                section = line[3:].strip()
            in_bash = stripped == "```bash"
            continue
        if stripped.startswith("```"):
            assert not pending, f"README.md:{start}: a `\\` continuation runs into the end of its block"
            in_bash = False
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        joined, pending = _strip_comment(pending + stripped), ""
        if joined:
            commands.append(Command(section, start, joined))
    return commands


def _strip_comment(line: str) -> str:
    """`line` without its `#` comment: a `#` at the start or after a blank, outside quotes."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


COMMANDS = readme_commands()


def _tokens(command: Command) -> list[str]:
    return shlex.split(command.text)


def _overrides(tokens: list[str]) -> dict[str, str]:
    """`key=value` arguments (Hydra's `+`, `++`, `~` prefixes dropped): key -> value."""
    found = {}
    for token in tokens:
        if "=" in token and not token.startswith("-"):
            key, value = token.split("=", 1)
            found[key.lstrip("+~")] = value
    return found


def _add_missing(tokens: list[str], settings: list[str]) -> list[str]:
    """`settings` whose key the command does not set itself."""
    taken = set(_overrides(tokens))
    return [s for s in settings if s.split("=", 1)[0].lstrip("+~") not in taken]


def _needed_runs(tokens: list[str]) -> set[str]:
    """The tasks whose run a command's placeholders (or `ckpt_path=last`) stand for."""
    tasks = {m.group(1) for t in tokens for m in re.finditer(r"logs/(\w+)/runs/<run>", t)}
    overrides = _overrides(tokens)
    if overrides.get("ckpt_path") == "last":
        tasks.add(overrides.get("task_name", "fashiondet"))
    if any("<checkpoint>" in t for t in tokens):
        tasks.add("pretrain_fashion_mnist")
    return tasks


def _tested_elsewhere(command: Command) -> str | None:
    """The test (`<file>::<name>` under tests/) that runs `command` for real, if another does."""
    script = next((t for t in _tokens(command) if t.startswith("scripts/")), "")
    return TESTED_ELSEWHERE.get(command.text) or TESTED_ELSEWHERE.get(script)


def _tool_module(script: str) -> ModuleType | None:
    """The `detection.research` module a research tool's shim runs (its first import), else None."""
    tree = ast.parse((SCRIPTS / f"{script}.py").read_text())
    first = next((n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))), None)
    if isinstance(first, ast.ImportFrom) and (first.module or "").startswith("detection.research."):
        return importlib.import_module(first.module)
    return None


def _needs_hardware(tokens: list[str]) -> bool:
    return any(token in NEEDS_HARDWARE + RUN_ELSEWHERE for token in tokens)


def _first_of_sweep(token: str) -> str:
    """`key=a,b` -> `key=a`: the overrides of a sweep's first job (lists and quoted values stay)."""
    key, sep, value = token.partition("=")
    if not sep or "," not in value or value[:1] in "[('\"{":
        return token
    return f"{key}={value.split(',', 1)[0]}"


def _written_data(command: Command) -> str | None:
    """The `/path/to/<name>` placeholder a `convert_data.py` command writes (its `out=`), if any."""
    tokens = _tokens(command)
    if len(tokens) < 2 or Path(tokens[1]).stem != "convert_data":
        return None
    out = _overrides(tokens).get("out", "")
    return out if DATA_PLACEHOLDER.fullmatch(out) and out != SMALL_DATASET else None


def _needed_data(command: Command) -> set[str]:
    """The `/path/to/<name>` data sets a command reads that an earlier command writes."""
    found = {m.group(0) for t in _tokens(command) for m in DATA_PLACEHOLDER.finditer(t)}
    return found - {SMALL_DATASET, _written_data(command)}


# --------------------------------------------------------------------------------- running them
@dataclass
class Outcome:
    command: Command
    argv: list[str] = field(default_factory=list)
    cwd: Path | None = None
    result: subprocess.CompletedProcess[str] | None = None
    seconds: float = 0.0
    skipped: str | None = None
    error: str | None = None  # the runner itself failed (a placeholder without its producer, ...)
    before: set[Path] = field(default_factory=set)  # the run directories before it ran
    given: dict[str, Path] = field(default_factory=dict)  # task -> the run its placeholders stand for
    elsewhere: str | None = None  # the test that runs the command for real (checked here unrun)


def _runs(cwd: Path) -> set[Path]:
    logs = cwd / "logs"
    return set(logs.glob("*/runs/*")) | set(logs.glob("*/multiruns/*")) if logs.is_dir() else set()


def _link_tree(source: Path, target: Path, links: bool = True) -> None:
    """A copy of a run directory, made of hard links unless `links=False` (a command that rewrites
    files in place) or the file system refuses them."""

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link if links else shutil.copy2, symlinks=True)


class Runner:
    """Runs the README's commands, each in a working directory of its own, and hands what earlier
    commands made (the producers' runs, a section's `<stamp>` folders) to the commands that need it."""

    def __init__(self, base: Path, data_root: Path) -> None:
        self.base = base
        self.data_root = data_root
        self.producers: dict[str, Future[Outcome]] = {}  # task -> the producing command's outcome
        self.data_sets: dict[str, tuple[Command, Future[Outcome]]] = {}  # /path/to/<name> -> its writer
        self.started: list[tuple[Command, Future[Outcome]]] = []  # every command, in README order

    # -- placeholders
    def produced_run(self, task: str) -> Path:
        if task not in self.producers:
            raise LookupError(f"no README command produces a run of {task!r} for this placeholder")
        outcome = self.producers[task].result()
        new = [p for p in _runs(outcome.cwd) - outcome.before if p.parent.parent.name == task]
        if outcome.result is None or outcome.result.returncode != 0 or len(new) != 1:
            raise RuntimeError(f"`{outcome.command.text}` (the producer of {task!r}) made no run of it")
        return new[0]

    def produced_data(self, name: str, command: Command) -> Path:
        """The data set an earlier README command wrote for the placeholder `name`."""
        writer = self.data_sets.get(name)
        if writer is None or writer[0].line >= command.line:
            raise LookupError(f"no earlier README command writes {name} (convert_data.py ... out={name})")
        outcome = writer[1].result()
        folder = outcome.cwd / name.lstrip("/") if outcome.cwd else None
        if outcome.result is None or outcome.result.returncode != 0 or folder is None or not folder.is_dir():
            raise RuntimeError(f"`{outcome.command.text}` (the writer of {name}) made no data set")
        return folder

    def _run_of(self, task: str, cwd: Path) -> Path:
        """A run of `task` with a last.ckpt in `cwd`: the newest there, else the producer's, copied in."""
        runs = cwd / "logs" / task / "runs"
        own = sorted(
            (p for p in runs.glob("*") if (p / "checkpoints" / "last.ckpt").is_file()),
            key=lambda p: p.stat().st_mtime,
        )
        if own:
            return own[-1]
        source = self.produced_run(task)
        target = runs / source.name
        _link_tree(source, target)
        return target

    def _stamp(self, command: Command, relative: str, cwd: Path) -> str:
        """The newest folder that an earlier command of `command`'s section wrote in `relative`."""
        found = []
        for earlier, future in self.started:
            if earlier.section == command.section and earlier.line < command.line:
                folder = (future.result().cwd or self.base / "none") / relative
                found += [p for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []
        if not found:
            raise LookupError(f"{relative}/<stamp>: no earlier command of {command.section!r} wrote there")
        newest = max(found, key=lambda p: p.stat().st_mtime)
        if not (cwd / relative / newest.name).exists():
            _link_tree(newest, cwd / relative / newest.name, links=False)  # e.g. tables rewritten
        return f"{relative}/{newest.name}"

    def _substitute(self, command: Command, token: str, cwd: Path) -> str:
        def run(match: re.Match[str]) -> str:
            return f"logs/{match.group(1)}/runs/{self._run_of(match.group(1), cwd).name}"

        def stamp(match: re.Match[str]) -> str:
            return self._stamp(command, match.group(1), cwd)

        token = re.sub(r"logs/(\w+)/runs/<run>", run, token)
        token = re.sub(r"([\w./-]+)/<stamp>", stamp, token)
        if "<checkpoint>" in token:
            pretrain = self._run_of("pretrain_fashion_mnist", cwd)
            token = token.replace("<checkpoint>", str(pretrain / "checkpoints" / "last.ckpt"))

        def data_set(match: re.Match[str]) -> str:
            name = match.group(0)
            if name == SMALL_DATASET:
                return str(self.data_root)
            if name == _written_data(command):  # the data set this command writes
                return str(cwd / name.lstrip("/"))
            return str(self.produced_data(name, command))

        token = DATA_PLACEHOLDER.sub(data_set, token)
        if "path/to/images" in token:
            images = cwd / "path" / "to" / "images"
            images.mkdir(parents=True, exist_ok=True)
            for source in sorted((self.data_root / "test").iterdir())[:2]:
                shutil.copy(source, images / source.name)
        unknown = re.findall(r"<[^<>\s]+>", token)
        if unknown:
            raise LookupError(f"no rule for the placeholder(s) {unknown} in {token!r}")
        return token

    # -- small settings
    def _train_settings(self, arguments: list[str], quiet: bool = True) -> list[str]:
        overrides = _overrides(arguments)
        if overrides.get("experiment") == "pretrain_fashion_mnist":
            settings = [*PRETRAIN_SMALL, "trainer.max_epochs=1"]
        else:
            settings = [
                s
                for s in tiny(self.data_root, self.base)
                if not s.startswith("paths.log_dir=")
                # a data set of one's own files has no generator to set
                and not (overrides.get("data") in FILE_LAYOUTS and s.startswith("data.generate."))
            ]
            settings.append(f"trainer.max_epochs={2 if 'ckpt_path' in overrides else 1}")
        if overrides.get("hparams_search") == "fashiondet_optuna":
            settings.append("hydra.sweeper.n_trials=2")
        return _add_missing(arguments, [*settings, *(QUIET if quiet else [])])

    def _data_settings(self, script: str, arguments: list[str]) -> list[str]:
        """convert_data / inspect_data: the small FashionDet set for `data=fashiondet` (their default)."""
        settings = ["num_images=4"] if script == "inspect_data" else []
        if _overrides(arguments).get("data", "fashiondet") == "fashiondet":
            settings += [
                f"data.root={self.data_root}",
                "data.generate.preset=small",
                "data.generate.workers=1",
            ]
        return _add_missing(arguments, settings)

    # -- one command
    def run(self, command: Command) -> Outcome:
        outcome = Outcome(command)
        tokens = _tokens(command)
        try:
            if tokens[0] == "make" and tokens[1] == "train":
                values = dict(t.split("=", 1) for t in tokens[2:])
                assert set(values) <= {"ARGS"}, f"make train takes ARGS only: {command.text}"
                tokens = ["python", "scripts/train.py", *shlex.split(values.get("ARGS", ""))]
            elif tokens[0] == "make":
                return self._make(outcome, tokens)
            elif tokens[0] == "torchrun":  # one node of several: its script's config is composed
                script_at = next(i for i, t in enumerate(tokens) if t.startswith("scripts/"))
                assert all(t.startswith("--") for t in tokens[1:script_at]), command.text
                tokens = ["python", *tokens[script_at:]]
            assert tokens[0] == "python" and tokens[1].startswith("scripts/"), command.text
            script = Path(tokens[1]).stem
            outcome.elsewhere = _tested_elsewhere(command)
            if _tool_module(script) is not None:  # a research tool: its own test runs it
                if not outcome.elsewhere:
                    raise LookupError(f"scripts/{script}.py: name the test that runs it in TESTED_ELSEWHERE")
                return self._parse(outcome, script, tokens[2:])
            if outcome.elsewhere:  # composed: a sweep's first job, a placeholder `<run>` as `run`
                single = [re.sub(r"<([^<>\s]+)>", r"\1", _first_of_sweep(a)) for a in tokens[2:] if a != "-m"]
                return self._compose(outcome, script, single)
            outcome.cwd = cwd = self.base / f"line{command.line}"
            cwd.mkdir()
            for task in _needed_runs(tokens):
                outcome.given[task] = self._run_of(task, cwd)
            arguments = [self._substitute(command, t, cwd) for t in tokens[2:]]
            if _needs_hardware(arguments):
                # composed only: a sweep's first job (tests/test_slurm.py runs the SLURM sweep for real)
                single = [_first_of_sweep(a) for a in arguments if a not in ("-m", "--multirun")]
                return self._compose(outcome, script, single)
            elif script == "train":
                arguments += self._train_settings(arguments, quiet=command.text != PRODUCERS["fashiondet"])
            elif script in ("eval", "predict"):
                small = [s for s in small_data(self.data_root, self.base) if not s.startswith("paths.")]
                extra = ["data.eval_batch_size=4", "extras.print_config=false"]
                arguments += _add_missing(arguments, [*small, *extra])
            elif script in ("convert_data", "inspect_data"):
                arguments += self._data_settings(script, arguments)
            elif script == "make_dataset":
                arguments += _add_missing(
                    arguments, ["data.generate.preset=small", "data.generate.workers=1"]
                )
            return self._script(outcome, script, arguments)
        except Exception as error:  # reported by the command's test
            outcome.error = f"{type(error).__name__}: {error}"
            return outcome

    def _script(self, outcome: Outcome, script: str, arguments: list[str]) -> Outcome:
        assert (SCRIPTS / f"{script}.py").is_file(), f"README names scripts/{script}.py, which is missing"
        assert outcome.cwd is not None
        outcome.argv = [f"scripts/{script}.py", *arguments]
        outcome.before = _runs(outcome.cwd)
        started = time.perf_counter()
        outcome.result = run_script(script, arguments, outcome.cwd, timeout=TIMEOUT, check=False)
        outcome.seconds = time.perf_counter() - started
        return outcome

    def _compose(self, outcome: Outcome, script: str, arguments: list[str]) -> Outcome:
        """What `scripts/<script>.py arguments --cfg job` prints, composed in this process (a
        subprocess would spend seconds importing torch to print a config)."""
        assert (SCRIPTS / f"{script}.py").is_file(), f"README names scripts/{script}.py, which is missing"
        outcome.argv = [f"scripts/{script}.py", *arguments, "--cfg", "job"]
        started = time.perf_counter()
        outcome.result = _composed(script, arguments, outcome.argv)
        outcome.seconds = time.perf_counter() - started
        return outcome

    def _parse(self, outcome: Outcome, script: str, arguments: list[str]) -> Outcome:
        """A research tool's flags parsed by the tool's own parser (argparse prints its error and exits
        2 on a flag it does not know), and the training overrides after `--` composed."""
        tool = _tool_module(script)
        assert tool is not None
        cut = arguments.index("--") if "--" in arguments else len(arguments)
        outcome.argv = [f"scripts/{script}.py", *arguments]
        errors = io.StringIO()
        with _HYDRA_LOCK, contextlib.redirect_stderr(errors):  # the streams are the process's
            try:
                parsed = tool.parse_args(arguments[:cut])
            except SystemExit as exited:
                code = exited.code if isinstance(exited.code, int) else 1
                outcome.result = subprocess.CompletedProcess(outcome.argv, code, "", errors.getvalue())
                return outcome
        outcome.result = subprocess.CompletedProcess(outcome.argv, 0, f"{parsed}\n", "")
        if arguments[cut + 1 :]:
            composed = _composed("train", arguments[cut + 1 :], outcome.argv)
            if composed.returncode != 0:
                outcome.result = composed
        return outcome

    def _make(self, outcome: Outcome, tokens: list[str]) -> Outcome:
        if tokens[1] == "test":
            outcome.skipped = "`make test` is the command that runs this test"
            return outcome
        outcome.argv = ["make", "-n", *tokens[1:]]
        started = time.perf_counter()
        outcome.result = subprocess.run(outcome.argv, cwd=REPO, capture_output=True, text=True, timeout=60)
        outcome.seconds = time.perf_counter() - started
        return outcome


def _composed(script: str, arguments: list[str], argv: list[str]) -> subprocess.CompletedProcess[str]:
    """The config of `scripts/<script>.py arguments` as YAML (exit status 1 and the error if it does
    not compose)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with _HYDRA_LOCK:  # Hydra's global state: one composition at a time
        try:
            with initialize_config_dir(config_dir=str(helpers.CONF_DIR), version_base="1.3"):
                text = OmegaConf.to_yaml(compose(config_name=script, overrides=arguments))
            return subprocess.CompletedProcess(argv, 0, text, "")
        except Exception as error:  # a composition error, as the script would print it
            return subprocess.CompletedProcess(argv, 1, "", f"{type(error).__name__}: {error}")


def _selected(session: pytest.Session) -> list[Command]:
    """The commands of the tests pytest will run (after -k / node ids), plus their producers."""
    chosen = {
        item.callspec.params["command"]
        for item in session.items
        if getattr(item, "module", None) is not None
        and item.module.__name__ == __name__
        and hasattr(item, "callspec")
        and "command" in item.callspec.params
    }
    needed, todo = set(chosen), list(chosen)
    while todo:  # the producers' own producers too (a converted set converted again)
        command = todo.pop()
        if _tested_elsewhere(command):  # checked unrun: it needs nothing
            continue
        more = {c for c in COMMANDS if c.text in {PRODUCERS.get(t) for t in _needed_runs(_tokens(command))}}
        more |= {c for c in COMMANDS if _written_data(c) in _needed_data(command)}
        if "<stamp>" in command.text:
            more |= {c for c in COMMANDS if c.section == command.section and c.line < command.line}
        todo += more - needed
        needed |= more
    return [c for c in COMMANDS if c in needed]


@pytest.fixture(scope="module")
def outcomes(
    request: pytest.FixtureRequest, fashiondet_small_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[Command, Future[Outcome]]]:
    """Every selected command started in README order, WORKERS at a time; its Outcome when it ends.
    A command waits only for earlier ones, which the pool started first: no wait can block it.

    Under pytest-xdist every worker collects all tests, so each would run all the commands: the
    first worker to get here runs them and leaves their outcomes (pickled) for the others."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        yield from _run_commands(request, fashiondet_small_root, tmp_path_factory)
        return
    shared = tmp_path_factory.getbasetemp().parent
    saved = shared / "readme_outcomes.pickle"
    with FileLock(str(shared / "readme_outcomes.lock")):
        if not saved.is_file():
            for futures in _run_commands(request, fashiondet_small_root, tmp_path_factory):
                # every outcome, whether or not a test failed early (a failed command is an Outcome too)
                saved.write_bytes(pickle.dumps({c: f.result() for c, f in futures.items()}))
    done: dict[Command, Future[Outcome]] = {}
    for command, outcome in pickle.loads(saved.read_bytes()).items():
        done[command] = Future()
        done[command].set_result(outcome)
    yield done


def _run_commands(
    request: pytest.FixtureRequest, fashiondet_small_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[Command, Future[Outcome]]]:
    runner = Runner(tmp_path_factory.mktemp("readme"), fashiondet_small_root)
    futures: dict[Command, Future[Outcome]] = {}
    pool = ThreadPoolExecutor(max_workers=WORKERS)
    try:
        for command in _selected(request.session):
            futures[command] = pool.submit(runner.run, command)
            runner.started.append((command, futures[command]))
            for task, producer in PRODUCERS.items():
                if command.text == producer:
                    runner.producers[task] = futures[command]
            written = _written_data(command)
            if written:
                runner.data_sets[written] = (command, futures[command])
        yield futures
    finally:  # after `pytest -x` stopped early: the commands not started yet never start
        pool.shutdown(wait=True, cancel_futures=True)


# ------------------------------------------------------------------------------------ the checks
def _report(outcome: Outcome) -> str:
    result = outcome.result
    assert result is not None
    return (
        f"README.md:{outcome.command.line} `{outcome.command.text}`\nran as: {' '.join(outcome.argv)}\n"
        f"in {outcome.cwd}, exit status {result.returncode} after {outcome.seconds:.0f} s\n"
        f"--- stdout (tail)\n{result.stdout[-3000:]}\n--- stderr (tail)\n{result.stderr[-6000:]}"
    )


def _expected_jobs(arguments: list[str]) -> int:
    overrides = _overrides(arguments)
    if "hydra.sweeper.n_trials" in overrides:
        return int(overrides["hydra.sweeper.n_trials"])
    count = 1
    for key, value in overrides.items():
        if not key.startswith("hydra.") and "," in value and not value.startswith(("[", "{")):
            count *= len(value.split(","))
    return count


def _new_run(outcome: Outcome) -> Path:
    """The one run (or multirun) directory the command made."""
    new = sorted(_runs(outcome.cwd) - outcome.before)
    assert len(new) == 1, f"expected one new run or multirun directory, found {new}\n{_report(outcome)}"
    return new[0]


def _check_training(outcome: Outcome, arguments: list[str]) -> None:
    report = _report(outcome)
    made = _new_run(outcome)
    if made.parent.name == "multiruns":
        jobs = sorted(p for p in made.iterdir() if p.is_dir() and p.name.isdigit())
        assert len(jobs) == _expected_jobs(arguments), f"jobs {jobs}\n{report}"
        for job in jobs:
            assert not (job / "error.txt").exists(), (job / "error.txt").read_text() + report
            assert "val/mAP" in read_metrics(job), report
        if _overrides(arguments).get("hparams_search"):
            assert (made / "optimization_results.yaml").is_file(), report
            # the study is kept under the launch directory's logs/, not somewhere else
            assert (outcome.cwd / "logs" / "optuna" / "fashiondet.db").is_file(), report
        return
    metrics = read_metrics(made)
    assert (made / "checkpoints" / "last.ckpt").is_file(), report
    assert any(k in metrics for k in ("test/mAP", "test/acc")), f"{sorted(metrics)}\n{report}"
    for task, source in outcome.given.items():
        if "ckpt_path" in _overrides(arguments) and task == made.parent.parent.name:
            resumed_from = read_metrics(source)["global_step"]
            assert metrics["global_step"] > resumed_from, f"no steps after the resumed checkpoint\n{report}"
    if outcome.command.text == PRODUCERS["fashiondet"]:  # the default experiment: W&B offline, dashboards
        assert wandb_offline_runs(made), report
        assert list((made / "plots").glob("*.png")), report


def _check_composed(outcome: Outcome, arguments: list[str]) -> None:
    report = _report(outcome)
    config = yaml.safe_load(outcome.result.stdout)
    assert isinstance(config, dict) and "trainer" in config, report
    # the hardware a trainer config asks for (a CPU-only SLURM sweep names its own accelerator)
    asked = {t: "gpu" for t in GPU_TRAINERS} | {t: "cpu" for t in RUN_ELSEWHERE}
    expected = [asked[t] for t in arguments if t in asked]
    if expected and "trainer.accelerator" not in _overrides(arguments):
        assert config["trainer"]["accelerator"] == expected[-1], report
    for key, value in _overrides(arguments).items():
        if "." in key and not key.startswith("hydra."):
            node: Any = config
            for part in key.split("."):
                node = node[part]
            wanted = yaml.safe_load(value)
            if isinstance(node, float) and isinstance(wanted, str):  # YAML 1.1 reads `1e-3` as text
                wanted = float(wanted)
            assert node == wanted, f"{key}: {node!r} != {value!r}\n{report}"


def _converted_splits(outcome: Outcome, arguments: list[str]) -> tuple[Path, list[str]]:
    """The folder and splits of convert_data's `Wrote <splits> as <layout> to <folder>` line."""
    overrides = _overrides(arguments)
    out = outcome.cwd / overrides["out"]  # an absolute `out` stays itself
    found = re.search(rf"^Wrote (.+) as {re.escape(overrides['to'])} to (.+)$", outcome.result.stdout, re.M)
    assert found and Path(found.group(2)) == out, _report(outcome)
    return out, found.group(1).split(", ")


def _files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _check_converted(outcome: Outcome, arguments: list[str]) -> None:
    """Every split the script names, in the target layout, each image with its annotation."""
    report = _report(outcome)
    out, splits = _converted_splits(outcome, arguments)
    layout = _overrides(arguments)["to"]
    assert splits and all(s in ("train", "val", "test") for s in splits), report
    assert f"Not kept by {layout}: " in outcome.result.stdout, report  # what the layout cannot hold
    for split in splits:
        if layout == "coco":
            index = json.loads((out / "annotations" / f"instances_{split}.json").read_text())
            images = [out / split / r["file_name"] for r in index["images"]]
            assert index["annotations"] and index["categories"], f"{split}\n{report}"
        elif layout == "voc":
            ids = (out / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
            stems = {p.stem: p for p in (out / "JPEGImages").iterdir()}
            assert all((out / "Annotations" / f"{i}.xml").is_file() for i in ids), f"{split}\n{report}"
            assert set(ids) <= set(stems), f"{split}: ids without an image\n{report}"
            images = [stems[i] for i in ids]
        else:
            images = _files_under(out / "images" / split)
            labels = [
                out / "labels" / split / p.relative_to(out / "images" / split).with_suffix(".txt")
                for p in images
            ]
            assert all(label.is_file() for label in labels), f"{split}: images without labels\n{report}"
        assert images and all(p.is_file() for p in images), f"{split}: no images\n{report}"
    if layout == "voc":
        assert (out / "labels.txt").read_text().split(), report
    if layout == "yolo":
        assert yaml.safe_load((out / "data.yaml").read_text())["names"], report


def _check_inspected(outcome: Outcome, arguments: list[str]) -> None:
    """The summary printed, and samples_<split>.png, classes.png and box_sizes.png written."""
    report = _report(outcome)
    overrides = _overrides(arguments)
    folder = outcome.cwd / overrides.get("out_dir", "data_inspection")
    split = overrides.get("split", "null")
    assert "Detection data (" in outcome.result.stdout, report
    data_root = outcome.cwd / overrides["data.root"] if "data.root" in overrides else None
    if data_root is not None and (data_root / "annotations").is_dir():  # a COCO layout: its class names
        index = json.loads(next((data_root / "annotations").glob("instances_*.json")).read_text())
        missing = [c["name"] for c in index["categories"] if c["name"] not in outcome.result.stdout]
        assert not missing, f"classes not in the summary: {missing}\n{report}"
    for name in (f"samples_{'train' if split == 'null' else split}.png", "classes.png", "box_sizes.png"):
        path = folder / name
        assert str(path) in outcome.result.stdout and path.is_file(), f"{name}\n{report}"
        with Image.open(path) as image:
            assert image.format == "PNG", f"{name}\n{report}"


def check(outcome: Outcome) -> None:
    assert outcome.error is None, (
        f"README.md:{outcome.command.line} `{outcome.command.text}`: {outcome.error}"
    )
    if outcome.skipped:
        pytest.skip(outcome.skipped)
    result = outcome.result
    assert result is not None
    print(f"{outcome.seconds:.1f} s: {' '.join(outcome.argv)}")  # shown with -rP, or on failure
    if outcome.elsewhere:
        print(f"checked unrun; run by tests/{outcome.elsewhere}")
    assert result.returncode == 0, _report(outcome)
    script, arguments = Path(outcome.argv[0]).stem, outcome.argv[1:]
    if outcome.argv[0] == "make":
        assert "ruff" in result.stdout, _report(outcome)
    elif "--cfg" in arguments:
        _check_composed(outcome, arguments)
    elif outcome.elsewhere:  # a research tool's parsed flags
        assert result.stdout.startswith("Namespace("), _report(outcome)
    elif script == "train":
        _check_training(outcome, arguments)
    elif script == "eval":
        assert "test/mAP" in read_metrics(_new_run(outcome)), _report(outcome)
    elif script == "predict":
        made = _new_run(outcome)
        records = json.loads((made / "predictions.json").read_text())
        assert len(records) == 2 and len(list((made / "predictions").iterdir())) == 2, _report(outcome)
    elif script == "make_dataset":
        root = outcome.cwd / _overrides(arguments)["data.root"]
        assert f"FashionDet ready at {root.resolve()} (" in result.stdout, _report(outcome)
        for split in ("train", "val", "test"):
            index = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
            assert index["images"] and index["annotations"], f"{split}\n{_report(outcome)}"
    elif script == "convert_data":
        _check_converted(outcome, arguments)
    elif script == "inspect_data":
        _check_inspected(outcome, arguments)
    else:
        raise AssertionError(f"test_readme.py knows no product of scripts/{script}.py: add one")


# ------------------------------------------------------------------------------------- the tests
def test_every_bash_line_is_a_runnable_command() -> None:
    assert COMMANDS, "README.md has no ```bash block"
    for command in COMMANDS:
        tokens = _tokens(command)
        if tokens[0] == "torchrun":  # one node of several: `torchrun --flags... scripts/<script>.py ...`
            tokens = ["python", *[t for t in tokens[1:] if not t.startswith("--")]]
        assert tokens[0] == "make" or (tokens[0] == "python" and tokens[1].startswith("scripts/")), (
            f"README.md:{command.line}: `{command.text}` is neither `python scripts/...`, `torchrun ... "
            "scripts/...` nor `make ...`; put it outside a ```bash block"
        )
        if tokens[0] == "python":
            assert (REPO / tokens[1]).is_file(), f"README.md:{command.line}: no {tokens[1]}"
    texts = {c.text for c in COMMANDS}
    for producer in PRODUCERS.values():
        assert producer in texts, f"later commands take the run of `{producer}`: keep it in the README"
    for command in COMMANDS:
        for name in _needed_data(command):
            assert any(_written_data(c) == name and c.line < command.line for c in COMMANDS), (
                f"README.md:{command.line}: no earlier `convert_data.py ... out={name}` writes {name}"
            )


def test_commands_checked_unrun_name_a_test_that_runs_them() -> None:
    """Each TESTED_ELSEWHERE entry is a README command (or a tool a README command runs) and names
    an existing test (for a tool: one that runs it); every research tool of the README has one."""
    texts = {c.text for c in COMMANDS}
    scripts = {t for c in COMMANDS for t in _tokens(c) if t.startswith("scripts/")}
    for key, test in TESTED_ELSEWHERE.items():
        assert key in texts | scripts, f"TESTED_ELSEWHERE names `{key}`, which the README no longer has"
        file, name = test.split("::")
        source = (REPO / "tests" / file).read_text()
        found = [n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == name]
        assert found, f"TESTED_ELSEWHERE: no test tests/{test}"
        tool = _tool_module(Path(key).stem) if key.startswith("scripts/") else None
        if tool is not None:  # the test runs the script, or calls its module's main
            body = ast.get_source_segment(source, found[0]) or ""
            calls = (f'"{Path(key).name}"', f"{tool.__name__.rsplit('.', 1)[1]}.main(")
            assert any(call in body for call in calls), f"tests/{test} runs no {key}"
    for script in scripts:
        if _tool_module(Path(script).stem) is not None:
            assert script in TESTED_ELSEWHERE, f"{script}: name the test that runs it in TESTED_ELSEWHERE"


def test_make_train_is_train_py() -> None:
    """`make train ARGS=...` is tested as `python scripts/train.py ...`: that is the Makefile's recipe."""
    recipe = re.search(r"^train:.*\n((?:\t.*\n)+)", MAKEFILE.read_text(), re.MULTILINE)
    assert recipe is not None
    assert recipe.group(1).strip().splitlines()[-1] == "$(BIN)/python scripts/train.py $(ARGS)"


def test_readme_links_resolve() -> None:
    text = README.read_text()
    # every Markdown file the README names, linked or not, is one of the repository's (a bare
    # name such as `results.md` is one of its files by that name)
    tracked = subprocess.run(
        ["git", "ls-files", "*.md"], cwd=REPO, capture_output=True, text=True, check=True
    )
    ours = {Path(p) for p in tracked.stdout.split()}
    named = set(re.findall(r"[\w./-]+\.md\b", text))
    outside = sorted(n for n in named if Path(n) not in ours and Path(n).name not in {p.name for p in ours})
    assert outside == [], f"README.md names files outside the repository: {outside}"
    links = re.findall(r"\]\(([^)#\s]+\.md)(?:#([\w-]+))?\)", text)
    assert any(path == "docs/results.md" for path, _ in links)
    for path, anchor in links:
        target = REPO / path
        assert target.is_file(), path
        if anchor:
            headings = re.findall(r"^#+ (.+)$", target.read_text(), re.MULTILINE)
            slugs = {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}
            assert anchor in slugs, f"{path}#{anchor}: no such heading"


def test_parsing_rule() -> None:
    text = (
        "## S\n```bash\npython scripts/a.py x=1 \\\n    y='a b'   # note\n# only a comment\n\nmake t\n```\n"
    )
    assert [c.text for c in readme_commands(text)] == ["python scripts/a.py x=1 y='a b'", "make t"]


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("command", COMMANDS, ids=[c.id for c in COMMANDS])
def test_readme_command(command: Command, outcomes: dict[Command, Future[Outcome]]) -> None:
    check(outcomes[command].result())
