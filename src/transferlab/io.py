"""Files written so that nothing is ever half there: atomic writes, and JSON in and out."""

from __future__ import annotations

import json
import os
import secrets
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
