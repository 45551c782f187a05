"""Build the demo model (tokenizer trained on training text; audio tower from Whisper tiny.en)."""

from __future__ import annotations

import json

from lalm_slu.data.records import read_manifest


def add_arguments(parser):
    parser.add_argument("--train-manifests", nargs="+", required=True, help="training-split manifests")
    parser.add_argument("--extra-text", nargs="*", default=[], help="instruction wordings to include")
    parser.add_argument("--architecture-json", default=None, help="override the default architecture")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", required=True)


def tokenizer_corpus(manifest_paths: list[str], extra_text: list[str]) -> list[str]:
    """Training transcripts plus the label vocabulary of training data, so targets tokenize compactly."""
    texts = list(extra_text)
    for path in manifest_paths:
        frame = read_manifest(path)
        if set(frame["split"]) - {"train", "dev"}:
            raise ValueError(f"{path}: the tokenizer may only see training text (found splits {set(frame['split'])})")
        texts += frame["text"].tolist()
        labels = set(frame["scenario"]) | set(frame["action"])
        labels |= {e["type"] for entities in frame["entities"] for e in entities}
        texts += sorted(labels)
    texts.append(json.dumps({"scenario": "", "action": "", "entities": [{"type": "", "filler": ""}]}))
    return texts


def run(args):
    from lalm_slu.demo_model.build import build_demo_model

    architecture = json.loads(args.architecture_json) if args.architecture_json else None
    build_demo_model(tokenizer_corpus(args.train_manifests, args.extra_text), args.out_dir, architecture, args.seed)
