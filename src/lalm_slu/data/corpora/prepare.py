"""One raw corpus read into DIR/{train,dev,test}.parquet manifests and its reader's named train subsets into
DIR/subsets/<name>.txt (one id a line). A split the corpus lacks is written empty (same columns)."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

from lalm_slu.core.outputs import write_text_atomic
from lalm_slu.data.corpora import READERS, read_corpus, read_subsets
from lalm_slu.data.records import SPLITS, write_manifest

log = logging.getLogger(__name__)


def prepare_corpus(
    reader: str, source: str, corpus: str, lang: str, out_dir: Path, options: dict[str, str],
    on_bad_record: str = "error", max_utterances: dict[str, int | None] | None = None, seed: int = 0,
) -> None:
    """`options`: the reader's keyword arguments as text (converted by convert_option)."""
    options = {key: convert_option(reader, key, value) for key, value in options.items()}
    splits = read_corpus(
        reader, source, corpus, lang, on_bad_record=on_bad_record, max_utterances=max_utterances or {}, seed=seed,
        **options,
    )
    for split in SPLITS:
        path = write_manifest(splits[split], out_dir / f"{split}.parquet")
        if splits[split]:
            log.info("wrote %d %s utterances to %s", len(splits[split]), split, path)
        else:
            log.warning("%s/%s has no %s split: wrote an empty manifest %s", corpus, lang, split, path)
    train_ids = {utt.id for utt in splits["train"]}
    for name, ids in read_subsets(reader, source, lang, train_ids, **options).items():
        path = out_dir / "subsets" / f"{name}.txt"
        write_text_atomic(path, "".join(f"{i}\n" for i in ids))
        log.info("wrote subset %s (%d ids) to %s", name, len(ids), path)


def convert_option(reader: str, key: str, value: str):
    """Reader options arrive as text; numbers are converted where the reader's default is a number."""
    default = inspect.signature(READERS[reader]).parameters[key].default
    if isinstance(default, float):
        return float(value)
    if isinstance(default, int) and not isinstance(default, bool):
        return int(value)
    return value
