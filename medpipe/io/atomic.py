"""Atomic file output: write to a temporary name in the destination folder, then rename.

A crash, a full disk or a failed check never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from medpipe.errors import OutputError


def _suffix(path: Path) -> str:
    name = path.name
    for double in (".nii.gz", ".tar.gz"):
        if name.endswith(double):
            return double
    return path.suffix


@contextlib.contextmanager
def atomic_path(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``dest`` (same suffix); rename it onto ``dest`` if the block succeeds.

    The temporary file is removed if the block raises. The rename is atomic on POSIX file systems.
    """
    dest = Path(dest)
    ensure_writable_dir(dest.parent)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=f".tmp{_suffix(dest)}", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
        os.replace(tmp, dest)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        reason = "disk full" if err.errno == errno.ENOSPC else (err.strerror or str(err))
        code = f"errno {err.errno} {errno.errorcode.get(err.errno, '')}: ".replace(" :", ":") if err.errno else ""
        raise OutputError(f"could not write output: {code}{reason}", path=dest) from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(dest: str | Path, data: bytes) -> None:
    """Write ``data`` to ``dest`` atomically."""
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(dest: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``dest`` atomically."""
    write_bytes_atomic(dest, text.encode("utf-8"))


def write_json_atomic(dest: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``dest`` atomically."""
    write_text_atomic(dest, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_with(dest: str | Path, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` and rename the result onto ``dest``."""
    with atomic_path(dest) as tmp:
        writer(tmp)


def ensure_writable_dir(folder: str | Path) -> Path:
    """Create ``folder`` if needed and check that files can be created in it (pre-flight before long work)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(
            f"cannot create output folder: {err.strerror or err}", path=folder, hint="choose a writable folder"
        ) from err
    if not folder.is_dir():
        raise OutputError("output path exists and is not a folder", path=folder)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError("output folder is not writable", path=folder, hint="check its permissions")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".medpipe-probe-"):
            pass
    except OSError as err:
        raise OutputError(f"output folder is not writable: {err.strerror or err}", path=folder) from err
    return folder
