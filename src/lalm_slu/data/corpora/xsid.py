"""xSID (cross-lingual slot and intent detection): English train text + per-language CoNLL eval files.

`source` is the xSID folder: `train-en/text.en` + `train-en/label.en` (line-aligned: whitespace tokens;
`<BIO tags>\\t<intent>`), and `xSID-0.7/<lang>.{valid,test}.conll` (`# text`, `# intent`, and for
non-English `# id`, `# text-en`, then `idx\\tword\\tintent\\tBIO` rows; a blank line ends a sentence).
Only English has a train split. xSID `valid` becomes our `dev`.

Intents `scenario/action` (e.g. `alarm/set_alarm`) split at the slash; the Snips-style intents of the
English train set map through SNIPS_INTENTS. Entity fillers are the transcript's characters from
the first to the last token of the BIO span.
"""

from __future__ import annotations

import os
from pathlib import Path

from lalm_slu.data.corpora.common import BadRecordPolicy, RecordCollector
from lalm_slu.data.records import DataError, Utterance
from lalm_slu.data.text_lines import read_lines

# Snips intents (train only) → (scenario, action); scenario names hold no underscore.
SNIPS_INTENTS = {
    "AddToPlaylist": ("music", "add_to_playlist"),
    "BookRestaurant": ("restaurant", "book"),
    "GetWeather": ("weather", "get_weather"),
    "PlayMusic": ("music", "play"),
    "RateBook": ("book", "rate"),
    "SearchCreativeWork": ("creativework", "search"),
    "SearchScreeningEvent": ("movies", "search_screening_event"),
}

EVAL_SPLITS = {"valid": "dev", "test": "test"}
TRAIN_FOLDER = "train-en"
EVAL_FOLDER = "xSID-0.7"


def scenario_action(intent: str, path=None, line=None) -> tuple[str, str]:
    if intent in SNIPS_INTENTS:
        return SNIPS_INTENTS[intent]
    scenario, slash, action = intent.partition("/")
    if not slash or not scenario or not action:
        raise DataError(f"unknown xSID intent {intent!r} (neither scenario/action nor a known Snips intent)", path, line)
    return scenario, action


def bio_spans(tags: list[str], path=None, line=None) -> list[tuple[str, int, int]]:
    """BIO tags → (type, first token, last token + 1).

    As in conlleval, an I- tag that does not continue a span of its type starts a new span
    (the English train set has 40 such lines); any tag other than O, B-x, I-x is an error.
    """
    spans: list[tuple[str, int, int]] = []
    current: list = []  # [type, start]
    for index, tag in enumerate(tags + ["O"]):
        if tag != "O" and not (tag[:2] in ("B-", "I-") and len(tag) > 2):
            raise DataError(f"tag {tag!r} at token {index + 1} is not O, B-type or I-type", path, line)
        continues = tag.startswith("I-") and current and current[0] == tag[2:]
        if current and not continues:
            spans.append((current[0], current[1], index))
            current = []
        if tag != "O" and not continues:
            current = [tag[2:], index]
    return spans


def token_offsets(text: str, tokens: list[str], path=None, line=None) -> list[tuple[int, int]]:
    """Character (start, end) of each token, found left to right in the transcript."""
    offsets = []
    position = 0
    for token in tokens:
        start = text.find(token, position)
        if start < 0:
            raise DataError(f"token {token!r} not found in text {text!r} after character {position}", path, line)
        offsets.append((start, start + len(token)))
        position = start + len(token)
    return offsets


def entities_from_bio(text: str, tokens: list[str], tags: list[str], path=None, line=None) -> list[dict]:
    if len(tokens) != len(tags):
        raise DataError(f"{len(tokens)} tokens but {len(tags)} tags", path, line)
    offsets = token_offsets(text, tokens, path, line)
    return [
        {"type": entity_type, "filler": text[offsets[first][0] : offsets[last - 1][1]]}
        for entity_type, first, last in bio_spans(tags, path, line)
    ]


def read_xsid(source: str | os.PathLike, corpus: str, lang: str, policy: BadRecordPolicy) -> list[Utterance]:
    folder = Path(source)
    collector = RecordCollector(policy)
    found = False
    if lang == "en" and (folder / TRAIN_FOLDER).is_dir():
        read_train(folder / TRAIN_FOLDER, corpus, lang, collector)
        found = True
    for xsid_split, split in EVAL_SPLITS.items():
        path = folder / EVAL_FOLDER / f"{lang}.{xsid_split}.conll"
        if path.is_file():
            read_conll(path, corpus, lang, split, collector)
            found = True
    if not found:
        raise DataError(f"no xSID files for language {lang!r} (looked for {TRAIN_FOLDER}/ and {EVAL_FOLDER}/{lang}.*.conll)", folder)
    return collector.utterances


def read_train(folder: Path, corpus: str, lang: str, collector: RecordCollector) -> None:
    text_path, label_path = folder / f"text.{lang}", folder / f"label.{lang}"
    # Line-aligned files: a line that is not UTF-8 would shift every later pair, so it is always an error.
    text_lines = [text for _, text in read_lines(text_path)]
    label_lines = [label for _, label in read_lines(label_path)]
    if len(text_lines) != len(label_lines):
        shorter, longer = sorted([(len(text_lines), text_path), (len(label_lines), label_path)], key=lambda p: p[0])
        raise DataError(
            f"line-aligned files differ in length: {longer[1].name} has {longer[0]} lines, "
            f"{shorter[1].name} ends after {shorter[0]}; this line has no partner",
            longer[1],
            shorter[0] + 1,
        )
    for line_number, (text, label) in enumerate(zip(text_lines, label_lines), start=1):
        try:
            tags_field, tab, intent = label.partition("\t")
            if not tab:
                raise DataError("label line lacks the tab between BIO tags and intent", label_path, line_number)
            scenario, action = scenario_action(intent, label_path, line_number)
            tokens = text.split()
            entities = entities_from_bio(text, tokens, tags_field.split(), label_path, line_number)
        except DataError as error:
            collector.reject(error)
            continue
        utt = Utterance(
            id=f"train-{line_number}", corpus=corpus, lang=lang, split="train", text=text,
            scenario=scenario, action=action, entities=entities,
        )
        collector.add(utt, text_path, line_number)


def read_conll(path: Path, corpus: str, lang: str, split: str, collector: RecordCollector) -> None:
    for ordinal, (block, first_line) in enumerate(conll_blocks(path), start=1):
        try:
            utt = utterance_from_conll_block(block, path, first_line, ordinal, corpus, lang, split)
        except DataError as error:
            collector.reject(error)
            continue
        collector.add(utt, path, first_line)


def conll_blocks(path: Path):
    """Yield (lines of one sentence, line number of its first line)."""
    block: list[str] = []
    first_line = 0
    for line_number, line in read_lines(path):
        if not line.strip():
            if block:
                yield block, first_line
            block = []
            continue
        if not block:
            first_line = line_number
        block.append(line)
    if block:
        yield block, first_line


def utterance_from_conll_block(block: list[str], path, first_line: int, ordinal: int, corpus, lang, split) -> Utterance:
    """Ids are `<valid|test>-<position in file>`: sentence i is the same item in every language."""
    headers: dict[str, str] = {}
    tokens, tags = [], []
    for offset, line in enumerate(block):
        line_number = first_line + offset
        if line.startswith("#"):
            key, equals, value = line[1:].strip().partition(" = ")
            if equals:
                headers[key] = value
            continue
        fields = line.split("\t")
        if len(fields) != 4:
            raise DataError(f"expected 4 tab-separated fields (idx, word, intent, BIO), got {len(fields)}", path, line_number)
        tokens.append(fields[1])
        tags.append(fields[3])
    for key in ("text", "intent"):
        if key not in headers:
            raise DataError(f"sentence lacks the '# {key} = ' header", path, first_line)
    text = headers["text"]
    scenario, action = scenario_action(headers["intent"], path, first_line)
    return Utterance(
        id=f"{path.name.split('.')[1]}-{ordinal}", corpus=corpus, lang=lang, split=split, text=text,
        scenario=scenario, action=action, entities=entities_from_bio(text, tokens, tags, path, first_line),
    )

