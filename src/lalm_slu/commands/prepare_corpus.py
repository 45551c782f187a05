"""`lalm-slu prepare-corpus`: read one raw corpus into DIR/{train,dev,test}.parquet manifests.

A split the corpus lacks is written empty (same columns). Reader-specific options come as
`--option KEY=VALUE` (e.g. `recording=headset`, `cache_dir=...`, `audio_dir=...`); a reader's
named train subsets (Speech-MASSIVE's `train_115`) are written as DIR/subsets/<name>.txt, one id a line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lalm_slu.data.corpora import BAD_RECORD_MODES, READERS, reader_options
from lalm_slu.data.corpora.prepare import prepare_corpus
from lalm_slu.data.records import SPLITS


def key_value(text: str) -> tuple[str, str]:
    key, equals, value = text.partition("=")
    if not equals or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def split_limit(text: str) -> tuple[str, int | None]:
    split, value = key_value(text)
    if split not in SPLITS:
        raise argparse.ArgumentTypeError(f"{split!r} is not a split {SPLITS}")
    if value.lower() in ("none", "all"):
        return split, None
    try:
        limit = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"limit for {split} must be an integer or 'none', got {value!r}") from None
    if limit < 0:
        raise argparse.ArgumentTypeError(f"limit for {split} must be >= 0, got {limit}")
    return split, limit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reader", required=True, choices=sorted(READERS))
    parser.add_argument("--source", required=True, help="corpus file/folder, or hub repository id")
    parser.add_argument("--corpus", required=True, help="corpus name written into every record")
    parser.add_argument("--lang", required=True, help="language (or locale) written into every record")
    parser.add_argument("--out-dir", required=True, type=Path)
    parser.add_argument("--max-utterances", nargs="*", type=split_limit, default=[], metavar="SPLIT=N",
                        help="cap per split (stratified by intent, seeded), e.g. train=2000 test=300")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--on-bad-record", choices=BAD_RECORD_MODES, default="error",
                        help="error: stop at the first bad record; drop: skip and count bad records")
    parser.add_argument("--option", nargs="*", type=key_value, default=[], metavar="KEY=VALUE",
                        help="reader option, e.g. recording=headset (see the reader's keyword arguments)")


def run(args: argparse.Namespace) -> int:
    options = dict(args.option)
    accepted = reader_options(args.reader)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise SystemExit(f"prepare-corpus: reader {args.reader!r} has no option(s) {unknown}; it accepts {accepted}")
    prepare_corpus(args.reader, args.source, args.corpus, args.lang, args.out_dir, options, args.on_bad_record,
                   dict(args.max_utterances), args.seed)
    return 0
