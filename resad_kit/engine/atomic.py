"""Atomic file writes for a run's result files, and the cleanup of killed writers' leftovers.

:func:`atomic_write` writes a whole file or nothing: the bytes go to a temporary file in
the destination's folder (``.<name>.tmp<pid>-<random>``), created with the permissions of
any new file, which is flushed, ``os.fsync``-ed and
moved over the destination with ``os.replace`` (atomic on POSIX and Windows within one file
system); the folder is then synced where the platform allows it. A write that fails
(a full disk, a killed job) leaves the previous file as it was. The checkpoints of
:mod:`resad_kit.engine.checkpoint` use the same ``.<name>.tmp…`` naming.

A process killed between creating and renaming its temporary file leaves it behind;
:func:`remove_stale_temp_files` deletes such leftovers at the start of the next run. Only
one writer may use an output folder at a time.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from pathlib import Path

__all__ = ["atomic_write", "is_temp_name", "remove_stale_temp_files"]


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is the name of a writer's temporary file or folder (``.<x>.tmp…``).

    Example:
        >>> from resad_kit.engine.atomic import is_temp_name
        >>> is_temp_name(".metrics.json.tmpk2x9"), is_temp_name(".checkpoint.safetensors.tmp42")
        (True, True)
        >>> is_temp_name("metrics.json"), is_temp_name(".hidden"), is_temp_name("a.tmp")
        (False, False, False)
    """
    return name.startswith(".") and ".tmp" in name[1:]


def _sync_folder(folder: Path) -> None:
    """Persist the rename in ``folder``'s entry list (POSIX; a no-op where unsupported)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | Path, data: str | bytes, *, encoding: str = "utf-8") -> Path:
    """Replace ``path`` with ``data`` atomically (temp file + flush + fsync + ``os.replace``).

    Args:
        path: the destination; its folder must exist.
        data: the whole content: ``str`` (encoded with ``encoding``, newlines kept as
            given) or ``bytes``.
        encoding: text encoding of a ``str``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        TypeError: ``data`` neither ``str`` nor ``bytes``.
        OSError: the write failed (the destination is unchanged and the temporary file is
            removed).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from resad_kit.engine.atomic import atomic_write
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = atomic_write(Path(tmp) / "a.json", '{"x": 1}\\n')
        ...     _ = atomic_write(path, '{"x": 2}\\n')
        ...     print(path.read_text(), end=""), sorted(p.name for p in Path(tmp).iterdir())
        {"x": 2}
        (None, ['a.json'])
    """
    if isinstance(data, str):
        payload = data.encode(encoding)
    elif isinstance(data, bytes | bytearray | memoryview):
        payload = bytes(data)
    else:
        raise TypeError(f"atomic_write: `data` must be str or bytes; got {type(data).__name__}")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}-{secrets.token_hex(4)}")
    # Created like any new file (mode 0o666 less the umask), unlike mkstemp's 0o600.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _sync_folder(path.parent)
    return path


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete the temporary files and folders (``.<x>.tmp…``) of killed writers under ``folder``.

    Searches ``folder`` and its subfolders; a temporary folder is removed with its content.
    Call it when no other process writes into ``folder``.

    Args:
        folder: the output folder; a missing folder has nothing to clean.

    Returns:
        The removed paths, sorted.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from resad_kit.engine.atomic import remove_stale_temp_files
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     (Path(tmp) / "ckpt").mkdir()
        ...     _ = (Path(tmp) / "ckpt" / ".checkpoint.safetensors.tmp77").write_bytes(b"par")
        ...     _ = (Path(tmp) / "metrics.json").write_text("{}")
        ...     removed = [p.relative_to(tmp).as_posix() for p in remove_stale_temp_files(tmp)]
        ...     kept = (Path(tmp) / "metrics.json").exists()
        >>> removed, kept
        (['ckpt/.checkpoint.safetensors.tmp77'], True)
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    removed: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        for name in filenames:
            if is_temp_name(name):
                with contextlib.suppress(FileNotFoundError):
                    (here / name).unlink()
                removed.append(here / name)
        for name in [d for d in dirnames if is_temp_name(d)]:
            dirnames.remove(name)  # do not descend into what is deleted
            shutil.rmtree(here / name, ignore_errors=True)
            removed.append(here / name)
    return sorted(removed)
