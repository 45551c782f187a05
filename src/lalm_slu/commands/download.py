"""`lalm-slu download`: fetch hub corpora into a cache once, on a node with network
(lalm_slu.data.corpora.hub_download; later jobs read the cache offline)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from lalm_slu.data.corpora.hub import HubAccessError
from lalm_slu.data.corpora.hub_download import HUB_CORPORA, NEEDS_LOCALES, download_hub_corpus

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", required=True, choices=sorted(HUB_CORPORA))
    parser.add_argument("--locales", nargs="*", default=[],
                        help="locales (speech_massive, massive: e.g. fr-FR de-DE) or configs (italic: massive)")
    parser.add_argument("--cache-dir", required=True, type=Path)
    parser.add_argument("--repo", help="fetch this repository instead of the corpus's default one")
    parser.add_argument("--stamp", type=Path, help="stamp file (default: CACHE_DIR/download-<corpus>.json)")


def run(args: argparse.Namespace) -> int:
    if args.corpus in NEEDS_LOCALES and not args.locales:
        raise SystemExit(f"download: --corpus {args.corpus} needs --locales (e.g. fr-FR de-DE)")
    try:
        stamp = download_hub_corpus(args.corpus, args.locales, args.cache_dir, args.repo, args.stamp)
    except HubAccessError as error:
        raise SystemExit(f"download: {error}") from None
    log.info("wrote %s", stamp)
    return 0
