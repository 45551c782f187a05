"""How every stage writes an output file.

Into a temporary file next to the output, renamed over it when complete and removed on any failure,
so a crash or a full disk never leaves a half-written output or a stray `*.tmp`. An output gets the mode the
umask gives an ordinary file (mkstemp's own 0600 would hide results from colleagues on a shared cluster).
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


# Errors of the disk rather than of what is written.
WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS}


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path to write; it becomes `path` when the block ends, and is removed if it fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    except OSError as error:  # a read-only folder or disk: name the output, not the temporary file
        raise OSError(error.errno, f"cannot write the output ({error.strerror})", str(path)) from None
    os.close(handle)
    try:
        os.chmod(tmp, 0o666 & ~current_umask())
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as error:
        if error.errno in WRITE_ERRORS or error.filename == tmp:  # a full disk: name the output, not the writer's tmp
            raise OSError(error.errno, f"cannot write the output ({error.strerror})", str(path)) from error
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def current_umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
