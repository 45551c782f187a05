"""How every reader takes a text file line by line.

Lines end at "\\n" only: an unusual Unicode line break inside a line stays in it, so line numbers
match `wc -l` and every editor. A line that is not UTF-8, a line longer than MAX_LINE_BYTES, or a
file that cannot be read, is a DataError naming the file and line. Memory stays bounded whatever the file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from lalm_slu.data.records import DataError

# A corpus record, gold line or prediction is a few KB at most; a longer "line" is not text lines at all.
MAX_LINE_BYTES = 1 << 20


def open_binary(path: str | os.PathLike):
    """The file for reading, or a DataError naming it (missing, a folder, unreadable)."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise DataError("file not found", path) from None
    except IsADirectoryError:
        raise DataError("is a folder, not a file", path) from None
    except OSError as error:
        raise DataError(f"cannot read ({error.strerror})", path) from None


def skip_rest_of_line(handle) -> None:
    while (chunk := handle.readline(MAX_LINE_BYTES)) and not chunk.endswith(b"\n"):
        pass


def read_lines(
    path: str | os.PathLike, reject: Callable[[DataError], None] | None = None
) -> Iterator[tuple[int, str]]:
    """(line number, text without its line ending) for every line of a UTF-8 file.

    A line that is not UTF-8 raises a DataError naming file, line and byte, or, when `reject` is
    given, goes to `reject` and is skipped (a bad-record policy decides).
    """
    with open_binary(path) as handle:
        number = 0
        while raw := handle.readline(MAX_LINE_BYTES + 1):
            number += 1
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                skip_rest_of_line(handle)
                problem = DataError(
                    f"line longer than {MAX_LINE_BYTES >> 20} MiB: no record is this long"
                    " (is the file compressed, binary, or one JSON document rather than JSON lines?)",
                    path,
                    number,
                )
                if reject is None:
                    raise problem
                reject(problem)
                continue
            raw = raw.removesuffix(b"\n").removesuffix(b"\r")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                problem = DataError(
                    f"not UTF-8 text: byte 0x{raw[error.start]:02x} at column {error.start + 1}"
                    " (convert the file to UTF-8, e.g. with iconv)",
                    path,
                    number,
                )
                if reject is None:
                    raise problem from None
                reject(problem)
                continue
            yield number, text
