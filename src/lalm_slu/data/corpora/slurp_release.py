"""SLURP's release text (train/devel/test.jsonl) at a pinned commit.

Each file is fetched whole, checked against the git blob id GitHub lists for it at that commit, and
only then renamed into place; a dropped connection, a short body or a wrong checksum is retried with
a growing pause, and after the last attempt the job fails leaving no file a later stage could take
as complete. A file already in place with the right checksum is kept. The stamp (JSON: commit, URL,
per-file blob id, sha256 and size) is written last, so it exists only when all three files do.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import time
import urllib.request
from pathlib import Path

from lalm_slu.core.outputs import atomic_output, write_text_atomic
from lalm_slu.data.records import DataError

log = logging.getLogger(__name__)

SLURP_COMMIT = "8eb16545762be97ace75334109d73824217311f1"
URL_BASE = f"https://raw.githubusercontent.com/pswietojanski/slurp/{SLURP_COMMIT}/dataset/slurp"
# `git ls-tree <commit> dataset/slurp/`: the blob ids are sha1 checksums of the file contents.
RELEASE_BLOBS = {
    "train.jsonl": "c7568b5661ea802c9e41204af3d30ef892dcd5c9",
    "devel.jsonl": "de034fadea8caa5a3c08c387b2a750f37737729d",
    "test.jsonl": "d98a6962767dd6a03cae20c31d03c7bf7e4c36af",
}


def download_slurp_release(url_base: str, out_dir: Path, stamp_path: Path, attempts: int = 4,
                           pause_s: float = 5.0) -> None:
    """The three release files into `out_dir`, then the stamp."""
    files = download_release(url_base, out_dir, RELEASE_BLOBS, attempts, pause_s)
    stamp = {"commit": SLURP_COMMIT, "url_base": url_base, "out_dir": str(out_dir), "files": files,
             "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}  # fmt: skip
    write_text_atomic(stamp_path, json.dumps(stamp, indent=2) + "\n")
    log.info("wrote %s", stamp_path)


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def download_release(
    url_base: str, out_dir: Path, expected_blobs: dict[str, str], attempts: int = 4, pause_s: float = 5.0
) -> dict[str, dict]:
    """Fetch every file of `expected_blobs` into `out_dir`; return each one's checksums and size."""
    out_dir = Path(out_dir)
    fetched = {}
    for name, blob in expected_blobs.items():
        target = out_dir / name
        data = target.read_bytes() if target.is_file() else None
        if data is not None and git_blob_id(data) == blob:
            log.info("%s is already complete (blob %s)", target, blob)
        else:
            data = fetch_checked(f"{url_base.rstrip('/')}/{name}", blob, attempts, pause_s)
            with atomic_output(target) as tmp:
                tmp.write_bytes(data)
            log.info("fetched %s (%d bytes)", target, len(data))
        fetched[name] = {"git_blob": blob, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    return fetched


def fetch_checked(url: str, blob: str, attempts: int, pause_s: float) -> bytes:
    """The body at `url` whose blob id is `blob`, trying up to `attempts` times."""
    problem = "no attempt made"
    for attempt in range(1, attempts + 1):
        try:
            data = fetch(url)
        except (OSError, http.client.HTTPException) as error:  # URLError and timeouts are OSErrors
            problem = f"{type(error).__name__}: {error}"
        else:
            if git_blob_id(data) == blob:
                return data
            problem = f"checksum mismatch: got blob {git_blob_id(data)} ({len(data)} bytes), expected {blob}"
        log.warning("%s: attempt %d/%d failed (%s)", url, attempt, attempts, problem)
        if attempt < attempts:
            time.sleep(pause_s * attempt)
    raise DataError(f"download failed after {attempts} attempts; last: {problem}", url)


def fetch(url: str) -> bytes:
    """The whole body; a body shorter than its Content-Length is an error, not a file."""
    with urllib.request.urlopen(url, timeout=120) as response:
        data = response.read()
        length = response.headers.get("Content-Length")
    if length is not None and len(data) != int(length):
        raise http.client.IncompleteRead(data, int(length) - len(data))
    return data
