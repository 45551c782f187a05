"""Corpora with recorded speech on the Hugging Face Hub, read with `datasets.load_dataset`.

`source` is a hub repository id or a local folder laid out the same way (tests use local folders).
Hub files land in `cache_dir`; once `lalm-slu download` has filled it, compute jobs run with
HF_HUB_OFFLINE=1 / HF_DATASETS_OFFLINE=1 and `datasets` reads only the cache.
Audio is decoded with soundfile (not torchcodec) and, when `audio_dir` is given, written once as
checked 16 kHz mono FLAC there (see speech/audio.py); without `audio_dir` the manifest is text-only.

- Speech-MASSIVE (`FBK-MT/Speech-MASSIVE`, one config per locale, e.g. `fr-FR`; test split in
  `FBK-MT/Speech-MASSIVE-test`): MASSIVE columns (id, locale, partition, scenario (ClassLabel),
  scenario_str, intent_idx (ClassLabel), intent_str, utt, annot_utt, audio, path, speaker_id, ...).
  Splits: train → train, validation → dev, test → test. Most locales have no full train split,
  only the 115-shot `train_115` (one or two utterances per intent); its utterances are always in
  the train manifest, and their ids are also listed by `speech_massive_shot_ids` so that
  prepare-corpus writes them as the subset `train_115` (a ready-made speech budget).
- ITALIC (`RiTA-nlp/ITALIC`, gated; configs massive / hard_speaker / hard_noisy): intent-only
  labels (`intent` = MASSIVE scenario_action, `utt`, `audio`, `speaker`/`speaker_id`), entities
  empty. The repository holds a loading script, which `datasets` 4+ no longer runs, so it is read
  from the hub's parquet export (revision `refs/convert/parquet`, one folder per config).
- SLURP audio: a parquet mirror with one row per recording whose `audio.path` is the SLURP recording
  file name (e.g. `marcel-gohsen/slurp`, splits train/devel/test). Labels are not taken from the
  mirror but from the SLURP release jsonl (`annotations`), joined on the recording file name.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from lalm_slu.data.corpora.common import BadRecordPolicy, RecordCollector, split_scenario_action
from lalm_slu.data.corpora.massive import utterance_from_massive_fields
from lalm_slu.data.corpora.slurp import read_slurp_release
from lalm_slu.data.records import DataError, Utterance
from lalm_slu.data.audio import AudioRejected, cache_name, standardize

log = logging.getLogger(__name__)

SPEECH_MASSIVE_TEST_REPO = "FBK-MT/Speech-MASSIVE-test"
ITALIC_REVISION = "refs/convert/parquet"
HUB_SPLITS = {"train": "train", "train_115": "train", "validation": "dev", "devel": "dev", "test": "test"}
SHOT_SPLIT = "train_115"
PROGRESS_EVERY = 2000


class HubAccessError(RuntimeError):
    """The hub refused access (gated dataset, no token); the message says how to get access."""


def gated_message(repo: str) -> str:
    return (
        f"{repo} is a gated dataset on the Hugging Face Hub. To get access: open "
        f"https://huggingface.co/datasets/{repo} while logged in and accept its terms, then authenticate "
        "on this machine with `huggingface-cli login` (or `hf auth login`), or export HF_TOKEN=<your token>; "
        "then run `lalm-slu download` again on a node with network."
    )


def is_gated_error(error: BaseException) -> bool:
    """True for huggingface_hub's GatedRepoError or the DatasetNotFoundError `datasets` wraps it in."""
    from huggingface_hub.errors import GatedRepoError

    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, GatedRepoError) or "gated" in str(error).lower():
            return True
        error = error.__cause__ or error.__context__
    return False


def load_hub(source: str, config: str | None = None, data_dir: str | None = None, revision: str | None = None,
             cache_dir: str | os.PathLike | None = None):
    """All splits of one hub dataset (or local folder) as a DatasetDict, audio left encoded."""
    import datasets

    is_local = Path(source).exists()
    log.info("loading %s (config %s, data_dir %s)%s", source, config, data_dir,
             " offline" if os.environ.get("HF_DATASETS_OFFLINE") == "1" else "")
    try:
        loaded = datasets.load_dataset(
            str(source), name=config, data_dir=data_dir, cache_dir=None if cache_dir is None else str(cache_dir),
            revision=None if is_local else revision,
        )
    except Exception as error:
        if is_gated_error(error):
            raise HubAccessError(gated_message(str(source))) from error
        raise
    for split in loaded:
        if "audio" in loaded[split].column_names:
            loaded[split] = loaded[split].cast_column("audio", datasets.Audio(decode=False))
    return loaded


def label_text(row: dict, features, column: str) -> str:
    """A label column's string: ClassLabel ints map to their names, strings pass through."""
    value = row[column]
    feature = features[column]
    if hasattr(feature, "int2str") and isinstance(value, int):
        return feature.int2str(value)
    return str(value)


def store_audio(utt: Utterance, audio: dict, where: str, audio_dir, max_duration_s) -> Utterance:
    """Write the row's audio as the utterance's cached FLAC (raises AudioRejected)."""
    encoded = audio.get("bytes") or audio.get("path")
    if not encoded:
        raise AudioRejected("missing", f"no audio bytes or path for utterance {utt.id!r}", where)
    destination = Path(audio_dir) / cache_name(utt.id)
    utt.duration_s = standardize(encoded, where, destination, max_duration_s)
    utt.audio = str(destination)
    return utt


def require_columns(dataset, columns, where) -> None:
    missing = [column for column in columns if column not in dataset.column_names]
    if missing:
        raise DataError(f"missing columns {missing} (has {dataset.column_names})", where)


def speaker_of(row: dict) -> str | None:
    for column in ("speaker_id", "speaker"):
        if row.get(column) not in (None, ""):
            return str(row[column])
    return None


def collect_row(collector: RecordCollector, utterance, row: dict, where: str, line: int, audio_dir: str | None,
                max_duration_s: float) -> Utterance | None:
    """Row `line` of a hub split as `utterance(row, line)` builds it, its audio stored when `audio_dir` is given,
    added to the collector; None where the row is bad (the collector's policy has it)."""
    try:
        utt = utterance(row, line)
        if audio_dir:
            store_audio(utt, row["audio"], f"{where} row {line}", audio_dir, max_duration_s)
    except DataError as error:
        collector.reject(error)
        return None
    collector.add(utt, where, line)
    if line % PROGRESS_EVERY == 0:
        log.info("%s: %d rows read", where, line)
    return utt


def read_speech_massive(
    source: str, corpus: str, lang: str, policy: BadRecordPolicy, config: str | None = None,
    test_source: str | None = SPEECH_MASSIVE_TEST_REPO, cache_dir: str | None = None,
    audio_dir: str | None = None, max_duration_s: float = 30.0, revision: str | None = None,
    data_dir: str | None = None,
) -> list[Utterance]:
    """`config` is the locale (default: `lang`, e.g. `fr-FR`).

    Text-only MASSIVE from the hub's parquet export reads the same way: source
    `AmazonScience/massive`, data_dir = locale, revision `refs/convert/parquet`, test_source empty.
    """
    config = None if data_dir else (config or lang)
    collector = RecordCollector(policy)
    loaded = dict(load_hub(source, config=config, data_dir=data_dir, revision=revision, cache_dir=cache_dir))
    if test_source:
        loaded["test"] = load_hub(test_source, config=config, revision=revision, cache_dir=cache_dir)["test"]
    train_ids: set[str] = set()
    # `train` first, so that train_115 rows already in it are not read twice.
    for hub_split in sorted(loaded, key=lambda name: name != "train"):
        if hub_split not in HUB_SPLITS:
            log.warning("%s: ignoring unknown split %r", source, hub_split)
            continue
        dataset, split = loaded[hub_split], HUB_SPLITS[hub_split]
        where = f"{test_source if hub_split == 'test' and test_source else source}[{config or data_dir}/{hub_split}]"
        require_columns(dataset, ("id", "utt", "annot_utt", "scenario") + (("audio",) if audio_dir else ()), where)

        def utterance(row: dict, line: int) -> Utterance:
            record = {
                "id": row["id"], "utt": row["utt"], "annot_utt": row["annot_utt"],
                "scenario": row["scenario_str"] if "scenario_str" in row else label_text(row, dataset.features, "scenario"),
                "intent": row["intent_str"] if "intent_str" in row else label_text(
                    row, dataset.features, "intent_idx" if "intent_idx" in row else "intent"),
            }
            utt = utterance_from_massive_fields(record, corpus, lang, split, where, line)
            utt.voice = speaker_of(row)
            if "audio" in row:
                utt.recordings = [row["audio"].get("path") or row.get("path") or ""]
            return utt

        for index, row in enumerate(dataset):
            if split == "train" and str(row["id"]) in train_ids:
                continue
            utt = collect_row(collector, utterance, row, where, index + 1, audio_dir, max_duration_s)
            if split == "train" and utt is not None:
                train_ids.add(utt.id)
    return collector.utterances


def speech_massive_shot_ids(source: str, lang: str, config: str | None = None, cache_dir: str | None = None,
                            revision: str | None = None, data_dir: str | None = None, **_reader_options) -> list[str]:
    """Ids of Speech-MASSIVE's 115-shot train split (empty if the locale has none)."""
    loaded = load_hub(source, config=None if data_dir else (config or lang), data_dir=data_dir, revision=revision,
                      cache_dir=cache_dir)
    if SHOT_SPLIT not in loaded:
        return []
    return [str(value) for value in loaded[SHOT_SPLIT]["id"]]


def read_italic(
    source: str, corpus: str, lang: str, policy: BadRecordPolicy, config: str = "massive",
    revision: str | None = ITALIC_REVISION, cache_dir: str | None = None, audio_dir: str | None = None,
    max_duration_s: float = 30.0,
) -> list[Utterance]:
    collector = RecordCollector(policy)
    loaded = load_hub(source, data_dir=config, revision=revision, cache_dir=cache_dir)
    for hub_split, dataset in loaded.items():
        if hub_split not in HUB_SPLITS:
            log.warning("%s: ignoring unknown split %r", source, hub_split)
            continue
        where = f"{source}[{config}/{hub_split}]"
        require_columns(dataset, ("id", "utt", "intent", "audio"), where)

        def utterance(row: dict, line: int) -> Utterance:
            scenario, action = split_scenario_action(label_text(row, dataset.features, "intent"), where, line)
            return Utterance(
                id=str(row["id"]), corpus=corpus, lang=lang, split=HUB_SPLITS[hub_split], text=row["utt"],
                scenario=scenario, action=action, entities=[], voice=speaker_of(row),
                recordings=[row["audio"].get("path") or ""],
            )

        for index, row in enumerate(dataset):
            collect_row(collector, utterance, row, where, index + 1, audio_dir, max_duration_s)
    return collector.utterances


def read_slurp_hub(
    source: str, corpus: str, lang: str, policy: BadRecordPolicy, annotations: str, audio_dir: str,
    recording: str = "headset", cache_dir: str | None = None, max_duration_s: float = 30.0,
    revision: str | None = None,
) -> list[Utterance]:
    """SLURP release labels (`annotations` = folder of {train,devel,test}.jsonl) + audio from a hub mirror."""
    wanted = {utt.audio: utt for utt in read_slurp_release(annotations, corpus, lang, policy, recording=recording)}
    found: dict[str, Utterance] = {}
    rejected: set[str] = set()
    loaded = load_hub(source, revision=revision, cache_dir=cache_dir)
    for hub_split, dataset in loaded.items():
        where = f"{source}[{hub_split}]"
        require_columns(dataset, ("audio",), where)
        for index, row in enumerate(dataset):
            name = Path(row["audio"].get("path") or "").name
            if name not in wanted or name in found or name in rejected:
                continue
            try:
                found[name] = store_audio(
                    wanted[name], row["audio"], f"{where} row {index + 1} ({name})", audio_dir, max_duration_s
                )
            except AudioRejected as error:
                rejected.add(name)
                policy.reject(error)
            if (index + 1) % PROGRESS_EVERY == 0:
                log.info("%s: %d rows scanned, %d recordings stored", where, index + 1, len(found))
    for name, utt in wanted.items():
        if name not in found and name not in rejected:
            policy.reject(DataError(f"recording {name!r} of utterance {utt.id!r} is not in the hub dataset", source))
    return list(found.values())
