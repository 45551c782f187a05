"""Hub corpora fetched into a cache once, on a node with network; later jobs read the cache with
HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1. A stamp file (JSON) lists what was fetched: repository, config, revision,
and rows per split."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from lalm_slu.core.outputs import write_text_atomic
from lalm_slu.data.corpora.hub import ITALIC_REVISION, SPEECH_MASSIVE_TEST_REPO, load_hub

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


def download_hub_corpus(corpus: str, configs: list[str], cache_dir: Path, repo: str | None = None,
                        stamp: Path | None = None) -> Path:
    """Fetch `corpus` (its configs, or its default ones) into `cache_dir`; `repo` replaces its first repository.
    Returns the stamp written (default: CACHE_DIR/download-<corpus>.json). Raises HubAccessError."""
    configs = configs or DEFAULT_CONFIGS.get(corpus, [])
    fetched = []
    for default_repo, selector, revision in HUB_CORPORA[corpus]:
        fetched_repo = repo if repo and default_repo == HUB_CORPORA[corpus][0][0] else default_repo
        for config in configs if selector else [None]:
            selection = {"config": config} if selector == "config" else {"data_dir": config}
            loaded = load_hub(fetched_repo, revision=revision, cache_dir=cache_dir, **selection)
            splits = {name: loaded[name].num_rows for name in loaded}
            log.info("fetched %s %s: %s", fetched_repo, config or "", splits)
            fetched.append({"repo": fetched_repo, "config": config, "revision": revision, "splits": splits})
    stamp = stamp or cache_dir / f"download-{corpus}.json"
    write_text_atomic(stamp, json.dumps({
        "corpus": corpus, "cache_dir": str(cache_dir), "fetched": fetched,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }, indent=2) + "\n")
    return stamp
