"""Files written so that nothing is ever half there: atomic writes, and JSON in and out."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import secrets
import sys
from pathlib import Path

from lightning.fabric.utilities.rank_zero import rank_zero_only

from transferlab.errors import RunError


def atomic_write(path: Path, write, *, durable: bool = False) -> None:
    """Write through a temporary file in the same folder and rename, so readers never see half a
    file (and a full disk leaves the previous version intact); `durable` also syncs it to disk
    first (run state, checkpoints, models). The temporary file is created with mode 0o666 and the
    process umask applies, like any file the user's tools write."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with open(fd, "wb") as handle:
            write(handle)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


@rank_zero_only
def write_json(path: str | Path, data) -> None:
    """`data` as JSON (never NaN: a value that is not finite is a bug to surface), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False, default=str)
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")), durable=True)


def read_json(path: str | Path) -> dict:
    """A JSON file of a run; a missing or damaged one is a RunError naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(f"{path} is missing: the run is incomplete or was edited") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise RunError(f"{path} is damaged (not valid JSON: {str(exc)[:80]}): restore it from a backup, "
                       "or train again") from None


def digest_key(parts: dict) -> str:
    """A short stable key for a mapping of what decides a cached result."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


class _SignalStack(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


@contextlib.contextmanager
def signal_stack_kept():
    """Put back the thread's alternate signal stack after OpenVINO compiles a model. Its CPU plugin
    installs a stack of its own there and, when the model is freed, restores the one it found; freed
    in another order than created, a stack already freed stays installed, and the next signal Python
    handles (a DataLoader worker's SIGCHLD) kills the process with SIGSEGV. Restored at once, every
    model finds, and later restores, the stack that was there before."""
    if not sys.platform.startswith("linux"):
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    before = _SignalStack()
    libc.sigaltstack(None, ctypes.byref(before))
    try:
        yield
    finally:
        libc.sigaltstack(ctypes.byref(before), None)


SIGNAL_STACK = ctypes.create_string_buffer(1 << 16)


def own_signal_stack() -> None:
    """Install a signal stack this process owns (before starting worker processes whose SIGCHLD
    Python handles on it): whatever a library left installed may already be freed."""
    if sys.platform.startswith("linux"):
        stack = _SignalStack(ctypes.cast(SIGNAL_STACK, ctypes.c_void_p), 0, len(SIGNAL_STACK))
        ctypes.CDLL(None, use_errno=True).sigaltstack(ctypes.byref(stack), None)
