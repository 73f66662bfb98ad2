"""Mistakes users make end a script with one line naming the problem, not a traceback.

The pipelines raise exceptions whose messages say what is wrong and what to change (bad data,
a diverged loss, a missing checkpoint, an unknown head or backbone). Printed through Hydra they
come with some fifty lines of Lightning and Hydra frames above them; for these errors the entry
points print the message alone, last, and exit with status 1. `HYDRA_FULL_ERROR=1` restores the
full traceback. Anything else (a bug) keeps its traceback.
"""

from __future__ import annotations

import os
import sys

from hydra.errors import InstantiationException
from lightning.fabric.utilities.exceptions import MisconfigurationException

__all__ = ["USER_ERRORS", "is_user_error", "user_message", "exit_on_user_error"]

# CocoFormatError is a ValueError; FloatingPointError is the non-finite loss.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    FloatingPointError,
    MisconfigurationException,
)


def _root_cause(error: InstantiationException) -> BaseException | None:
    """What a constructor raised under (possibly nested) Hydra instantiation; None if nothing."""
    cause = error.__cause__
    while isinstance(cause, InstantiationException):
        cause = cause.__cause__
    return cause


def is_user_error(error: BaseException) -> bool:
    if isinstance(error, InstantiationException):
        # Hydra wraps what a constructor raised, or the ImportError of a `_target_` it cannot find.
        cause = _root_cause(error)
        return cause is None or isinstance(cause, (*USER_ERRORS, ImportError))
    return isinstance(error, USER_ERRORS)


def user_message(error: BaseException) -> str:
    """`<Type>: <message>` on one line (a DataLoader worker's error carries its traceback in the
    message; only its last line is kept)."""
    text = str(error)
    if "Original Traceback" in text:  # re-raised from a DataLoader worker process
        # its last line is "<module>.<Type>: <message>" (or the type alone)
        name, sep, message = text.rstrip().splitlines()[-1].strip().partition(": ")
        return f"{name.rsplit('.', 1)[-1]}{sep}{message}"
    cause = _root_cause(error) if isinstance(error, InstantiationException) else None
    if cause is not None:
        # "Error in call to target 'x':\nValueError('...')\nfull_key: model.task" -> the cause, and where
        where = [line.strip() for line in text.splitlines() if line.strip().startswith("full_key:")]
        text = f"{type(cause).__name__}: {cause}" + (f" ({where[0]})" if where else "")
        return " ".join(text.split())
    return " ".join(f"{type(error).__name__}: {text}".split())


def exit_on_user_error(error: BaseException) -> None:
    """For a user error (and HYDRA_FULL_ERROR unset): print its message last and exit with status 1.

    Returns for anything else, so the caller re-raises it with its traceback.
    """
    if not is_user_error(error) or os.environ.get("HYDRA_FULL_ERROR") == "1":
        return
    print("Error (HYDRA_FULL_ERROR=1 shows the traceback):", file=sys.stderr)
    print(user_message(error), file=sys.stderr, flush=True)
    raise SystemExit(1) from None
