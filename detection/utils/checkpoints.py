"""Find the checkpoint a run resumes from: a file, a run directory, or "last"."""

from __future__ import annotations

from pathlib import Path


def resolve_ckpt_path(
    ckpt_path: str | None, log_dir: str | Path, task_name: str, exclude: str | Path | None = None
) -> str | None:
    """Turn the `ckpt_path` config value into a checkpoint file, or None.

    - None: start fresh.
    - "last": the newest `checkpoints/last.ckpt` of any run or multirun job of `task_name`
      (the current run directory `exclude` is ignored).
    - a run directory: its `checkpoints/last.ckpt`.
    - a file: itself.
    """
    if ckpt_path in (None, "", "null", "none"):
        return None
    log_dir = Path(log_dir)
    if ckpt_path == "last":
        task_dir = log_dir / task_name
        excluded = Path(exclude).resolve() if exclude is not None else None
        candidates = [
            p
            for p in task_dir.glob("**/checkpoints/last.ckpt")
            if excluded is None or excluded not in p.resolve().parents
        ]
        if not candidates:
            raise FileNotFoundError(
                f"ckpt_path=last: no checkpoints/last.ckpt under {task_dir}. Train once with "
                f"task_name={task_name} first, or pass ckpt_path=<file or run directory>."
            )
        return str(max(candidates, key=lambda p: p.stat().st_mtime))
    path = Path(ckpt_path).expanduser()
    if path.is_dir():
        for candidate in (path / "checkpoints" / "last.ckpt", path / "last.ckpt"):
            if candidate.is_file():
                return str(candidate)
        raise FileNotFoundError(f"ckpt_path={ckpt_path}: the directory holds no checkpoints/last.ckpt")
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path}: no such checkpoint file")
    return str(path)


def run_dir_of(ckpt_file: str | Path) -> Path:
    """The run directory a checkpoint file was written in (`<run>/checkpoints/x.ckpt` -> `<run>`)."""
    ckpt_file = Path(ckpt_file).resolve()
    return ckpt_file.parent.parent if ckpt_file.parent.name == "checkpoints" else ckpt_file.parent
