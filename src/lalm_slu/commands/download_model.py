"""`lalm-slu download-model`: fetch a model repository from the hub into a local folder, once, on a
node with network (rule download_model, a localrule).

The files land in OUT_DIR.partial first and the folder is renamed to OUT_DIR only when every file is
there, so a killed download never looks like a model; run again, it resumes in OUT_DIR.partial. The
revision is resolved to a commit first, so the stamp and OUT_DIR/hub_revision.json name exactly what was fetched.
A branch or tag moves: with --require-commit (the workflow passes it when fine-tuning runs on GPUs, at paper
scale) only a commit is accepted; otherwise the download says which commit the name stood for.
"""

from __future__ import annotations

import argparse
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hub-id", required=True, help="repository, e.g. Qwen/Qwen2-Audio-7B-Instruct")
    parser.add_argument("--revision", default="main", help="branch, tag or commit")
    parser.add_argument("--out-dir", required=True, type=Path)
    parser.add_argument("--stamp", required=True, type=Path, help="JSON record of what was fetched")
    parser.add_argument("--require-commit", action="store_true",
                        help="refuse a branch or tag name: the revision must be a full 40-digit commit hash")


def is_commit(revision: str) -> bool:
    return COMMIT.fullmatch(revision) is not None


def run(args: argparse.Namespace) -> int:
    if args.require_commit and not is_commit(args.revision):
        raise SystemExit(
            f"download-model: {args.hub_id} at revision {args.revision!r}: a branch or tag moves; a paper-scale run "
            "needs model.revision set to a full 40-digit commit hash (the hub's commit history lists them)"
        )
    if args.out_dir.exists() and any(args.out_dir.iterdir()):
        raise SystemExit(f"download-model: {args.out_dir} exists; remove it to download again")
    if args.out_dir.exists():
        args.out_dir.rmdir()  # an empty folder left for the output is not a model
    partial = args.out_dir.with_name(args.out_dir.name + ".partial")
    try:
        commit = huggingface_hub.model_info(args.hub_id, revision=args.revision).sha
        if commit != args.revision:
            log.warning("%s: revision %r is not a commit (a branch or tag moves); it is commit %s now (pin "
                        "that in model.revision to fetch these weights again)", args.hub_id, args.revision, commit)
        log.info("fetching %s at %s (commit %s) into %s", args.hub_id, args.revision, commit, partial)
        huggingface_hub.snapshot_download(args.hub_id, revision=commit, local_dir=partial)
    except HfHubHTTPError as error:
        raise SystemExit(f"download-model: {args.hub_id} at {args.revision}: {error}") from None
    except (httpx2.HTTPError, OSError) as error:  # no network, a proxy, a refused connection
        raise SystemExit(f"download-model: cannot fetch {args.hub_id} at {args.revision} from "
                         f"{constants.ENDPOINT}/{args.hub_id} ({type(error).__name__}: {error}); download on a node "
                         "with network") from None
    if not (partial / "config.json").is_file():
        raise SystemExit(f"download-model: {args.hub_id} has no config.json: not a transformers model")
    resolved = {"hub_id": args.hub_id, "revision": args.revision, "commit": commit}
    (partial / REVISION_FILE).write_text(json.dumps(resolved, indent=2) + "\n", encoding="utf-8")
    files = sorted(
        str(path.relative_to(partial))
        for path in partial.rglob("*")
        if path.is_file() and ".cache" not in path.relative_to(partial).parts
    )
    partial.rename(args.out_dir)
    write_text_atomic(
        args.stamp,
        json.dumps(
            {
                **resolved,
                "path": str(args.out_dir),
                "files": files,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
            indent=2,
        )
        + "\n",
    )
    log.info("wrote %s (%d files) and %s", args.out_dir, len(files), args.stamp)
    return 0
