"""`lalm-slu download-model`: fetch a model repository from the hub into a local folder, once, on a
node with network (rule download_model, a localrule; lalm_slu.model.hub_snapshot does it).

--require-commit (the workflow passes it when fine-tuning runs on GPUs, at paper scale) accepts only a commit.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from lalm_slu.model.hub_snapshot import ModelDownloadError, download_model

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hub-id", required=True, help="repository, e.g. Qwen/Qwen2-Audio-7B-Instruct")
    parser.add_argument("--revision", default="main", help="branch, tag or commit")
    parser.add_argument("--out-dir", required=True, type=Path)
    parser.add_argument("--stamp", required=True, type=Path, help="JSON record of what was fetched")
    parser.add_argument("--require-commit", action="store_true",
                        help="refuse a branch or tag name: the revision must be a full 40-digit commit hash")


def run(args: argparse.Namespace) -> int:
    try:
        files = download_model(args.hub_id, args.revision, args.out_dir, args.stamp, args.require_commit)
    except ModelDownloadError as error:
        raise SystemExit(f"download-model: {error}") from None
    log.info("wrote %s (%d files) and %s", args.out_dir, len(files), args.stamp)
    return 0
