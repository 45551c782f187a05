"""`lalm-slu download`: fetch hub corpora into a cache once, on a node with network.

Later jobs read the cache with HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1. A stamp file (JSON) lists
what was fetched: repository, config, revision, and rows per split.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from lalm_slu.data.corpora.hub import ITALIC_REVISION, SPEECH_MASSIVE_TEST_REPO, HubAccessError, load_hub
from lalm_slu.core.outputs import write_text_atomic

log = logging.getLogger(__name__)

# corpus: (repository, how a locale/config is selected, revision, default configs)
HUB_CORPORA = {
    "speech_massive": [("FBK-MT/Speech-MASSIVE", "config", None), (SPEECH_MASSIVE_TEST_REPO, "config", None)],
    "italic": [("RiTA-nlp/ITALIC", "data_dir", ITALIC_REVISION)],
    "massive": [("AmazonScience/massive", "data_dir", "refs/convert/parquet")],
    "slurp": [("marcel-gohsen/slurp", None, None)],
}
DEFAULT_CONFIGS = {"italic": ["massive"]}
NEEDS_LOCALES = ("speech_massive", "massive")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", required=True, choices=sorted(HUB_CORPORA))
    parser.add_argument("--locales", nargs="*", default=[],
                        help="locales (speech_massive, massive: e.g. fr-FR de-DE) or configs (italic: massive)")
    parser.add_argument("--cache-dir", required=True, type=Path)
    parser.add_argument("--repo", help="fetch this repository instead of the corpus's default one")
    parser.add_argument("--stamp", type=Path, help="stamp file (default: CACHE_DIR/download-<corpus>.json)")


def run(args: argparse.Namespace) -> int:
    configs = args.locales or DEFAULT_CONFIGS.get(args.corpus, [])
    if args.corpus in NEEDS_LOCALES and not configs:
        raise SystemExit(f"download: --corpus {args.corpus} needs --locales (e.g. fr-FR de-DE)")
    fetched = []
    try:
        for repo, selector, revision in HUB_CORPORA[args.corpus]:
            repo = args.repo if args.repo and repo == HUB_CORPORA[args.corpus][0][0] else repo
            for config in configs if selector else [None]:
                selection = {"config": config} if selector == "config" else {"data_dir": config}
                loaded = load_hub(repo, revision=revision, cache_dir=args.cache_dir, **selection)
                splits = {name: loaded[name].num_rows for name in loaded}
                log.info("fetched %s %s: %s", repo, config or "", splits)
                fetched.append({"repo": repo, "config": config, "revision": revision, "splits": splits})
    except HubAccessError as error:
        raise SystemExit(f"download: {error}") from None
    stamp = args.stamp or args.cache_dir / f"download-{args.corpus}.json"
    write_text_atomic(stamp, json.dumps({
        "corpus": args.corpus, "cache_dir": str(args.cache_dir), "fetched": fetched,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }, indent=2) + "\n")
    log.info("wrote %s", stamp)
    return 0
