"""A model repository fetched from the hub into a local folder, once, on a node with network.

The files land in OUT_DIR.partial first and the folder is renamed to OUT_DIR only when every file is
there, so a killed download never looks like a model; run again, it resumes in OUT_DIR.partial. The
revision is resolved to a commit first, so the stamp and OUT_DIR/hub_revision.json name exactly what was fetched.
A branch or tag moves: with `require_commit` only a commit is accepted; otherwise the download says which commit
the name stood for.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import httpx2  # huggingface_hub's HTTP client
import huggingface_hub
from huggingface_hub import constants
from huggingface_hub.errors import HfHubHTTPError

from lalm_slu.core.outputs import write_text_atomic

log = logging.getLogger(__name__)

# Kept inside the model folder, so that the commit travels with the weights (and is part of model_identity).
REVISION_FILE = "hub_revision.json"
COMMIT = re.compile(r"[0-9a-f]{40}")


class ModelDownloadError(RuntimeError):
    """The model cannot be fetched into its folder; the message says why and what to do."""


def is_commit(revision: str) -> bool:
    return COMMIT.fullmatch(revision) is not None


def download_model(hub_id: str, revision: str, out_dir: Path, stamp: Path, require_commit: bool = False) -> list[str]:
    """Fetch `hub_id` at `revision` into `out_dir`, then write the stamp; return the files fetched."""
    if require_commit and not is_commit(revision):
        raise ModelDownloadError(
            f"{hub_id} at revision {revision!r}: a branch or tag moves; a paper-scale run "
            "needs model.revision set to a full 40-digit commit hash (the hub's commit history lists them)"
        )
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ModelDownloadError(f"{out_dir} exists; remove it to download again")
    if out_dir.exists():
        out_dir.rmdir()  # an empty folder left for the output is not a model
    partial = out_dir.with_name(out_dir.name + ".partial")
    try:
        commit = huggingface_hub.model_info(hub_id, revision=revision).sha
        if commit != revision:
            log.warning("%s: revision %r is not a commit (a branch or tag moves); it is commit %s now (pin "
                        "that in model.revision to fetch these weights again)", hub_id, revision, commit)
        log.info("fetching %s at %s (commit %s) into %s", hub_id, revision, commit, partial)
        huggingface_hub.snapshot_download(hub_id, revision=commit, local_dir=partial)
    except HfHubHTTPError as error:
        raise ModelDownloadError(f"{hub_id} at {revision}: {error}") from None
    except (httpx2.HTTPError, OSError) as error:  # no network, a proxy, a refused connection
        raise ModelDownloadError(f"cannot fetch {hub_id} at {revision} from {constants.ENDPOINT}/{hub_id} "
                                 f"({type(error).__name__}: {error}); download on a node with network") from None
    if not (partial / "config.json").is_file():
        raise ModelDownloadError(f"{hub_id} has no config.json: not a transformers model")
    resolved = {"hub_id": hub_id, "revision": revision, "commit": commit}
    (partial / REVISION_FILE).write_text(json.dumps(resolved, indent=2) + "\n", encoding="utf-8")
    files = sorted(
        str(path.relative_to(partial))
        for path in partial.rglob("*")
        if path.is_file() and ".cache" not in path.relative_to(partial).parts
    )
    partial.rename(out_dir)
    record = {**resolved, "path": str(out_dir), "files": files, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_text_atomic(stamp, json.dumps(record, indent=2) + "\n")
    return files
