"""`lalm-slu download-slurp-release`: SLURP's release text (train/devel/test.jsonl) at a pinned commit, checked
and retried (lalm_slu.data.corpora.slurp_release), then a stamp (JSON) written last."""

from __future__ import annotations

import argparse
from pathlib import Path

from lalm_slu.data.corpora.slurp_release import URL_BASE, download_slurp_release


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out-dir", required=True, type=Path, help="folder for train/devel/test.jsonl")
    parser.add_argument("--stamp", required=True, type=Path, help="JSON record of what was fetched (written last)")
    parser.add_argument("--url-base", default=URL_BASE, help="where the three files are (a mirror, a file:// copy)")
    parser.add_argument("--attempts", type=int, default=4, help="tries per file before the job fails")
    parser.add_argument("--pause-s", type=float, default=5.0, help="pause after a failed try (grows with each)")


def run(args: argparse.Namespace) -> int:
    download_slurp_release(args.url_base, args.out_dir, args.stamp, args.attempts, args.pause_s)
    return 0
