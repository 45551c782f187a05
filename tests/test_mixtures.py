import re
from dataclasses import replace

import pandas as pd
import pytest
from conftest import make_utterances

from lalm_slu.data.interleaving import AUDIO_SPAN
from lalm_slu.data.budgets import write_budget_ids
from lalm_slu.cli import main
from lalm_slu.data.mixtures import (
    LISTING_COLUMNS,
    MIXTURE_COLUMNS,
    SCHEMES,
    ManifestCache,
    MixtureError,
    MixturePart,
    build_mixture,
    with_item_data,
)
from lalm_slu.data.records import DataError, read_manifest, write_manifest
from lalm_slu.config.schemes import BUDGET_FREE_PHASES
from lalm_slu.data.slu_json import format_target
from lalm_slu.config.files import schema_path


def part(lang="en", size=20, speech=5, scarce=True):
    ids = tuple(f"{lang}{i:03d}" for i in range(size))
    return MixturePart(lang, f"text-{lang}.parquet", f"speech-{lang}.parquet", ids, ids[:speech], scarce)


def items(frame, phase=None, modality=None, lang=None):
    mask = pd.Series(True, index=frame.index)
    for column, value in (("phase", phase), ("modality", modality), ("lang", lang)):
        if value is not None:
            mask &= frame[column] == value
    return frame[mask]


def test_text_only_is_every_utterance_as_text_in_one_phase():
    mixture = build_mixture("text_only", [part(speech=0)], seed=0)
    assert list(mixture.columns) == list(LISTING_COLUMNS)
    assert len(mixture) == 20 and set(mixture["modality"]) == {"text"} and set(mixture["phase"]) == {1}
    assert set(mixture["manifest"]) == {"text-en.parquet"}


def test_text_only_refuses_speech():
    with pytest.raises(MixtureError, match="text_only allows no speech"):
        build_mixture("text_only", [part(speech=3)], seed=0)


def test_direct_mixing_adds_the_budgeted_speech_to_all_text_and_shuffles_them_together():
    mixture = build_mixture("direct_mixing", [part(size=20, speech=5)], seed=0)
    assert set(mixture["phase"]) == {1}
    assert len(items(mixture, modality="text")) == 20
    speech = items(mixture, modality="speech")
    assert sorted(speech["id"]) == [f"en{i:03d}" for i in range(5)]
    assert set(speech["manifest"]) == {"speech-en.parquet"}
    positions = mixture.index[mixture["modality"] == "speech"]
    assert positions.max() - positions.min() > 5  # interleaved, not appended as a block


def test_curriculum_trains_text_first_then_text_plus_budgeted_speech():
    mixture = build_mixture("curriculum", [part(size=20, speech=5)], seed=0)
    phase1, phase2 = items(mixture, phase=1), items(mixture, phase=2)
    assert len(phase1) == 20 and set(phase1["modality"]) == {"text"}
    assert len(phase2) == 25 and len(items(phase2, modality="speech")) == 5
    assert mixture.index[mixture["phase"] == 1].max() < mixture.index[mixture["phase"] == 2].min()


def test_oracle_uses_every_utterance_as_speech_only():
    mixture = build_mixture("oracle", [part(size=12, speech=12)], seed=0)
    assert len(mixture) == 12 and set(mixture["modality"]) == {"speech"}


def test_oracle_refuses_a_partial_speech_budget():
    with pytest.raises(MixtureError, match="oracle uses all speech"):
        build_mixture("oracle", [part(size=12, speech=6)], seed=0)


def test_crosslingual_direct_mixing_has_source_speech_and_text_target_text_and_target_budget():
    source, target = part("en", size=20, speech=20, scarce=False), part("de", size=10, speech=2)
    mixture = build_mixture("direct_mixing", [source, target], seed=0)
    counts = mixture.groupby(["lang", "modality"]).size().to_dict()
    assert counts == {("en", "text"): 20, ("en", "speech"): 20, ("de", "text"): 10, ("de", "speech"): 2}


def test_crosslingual_curriculum_adds_only_the_scarce_target_speech_in_phase_two():
    source, target = part("en", size=20, speech=20, scarce=False), part("de", size=10, speech=2)
    mixture = build_mixture("curriculum", [source, target], seed=0)
    phase1 = items(mixture, phase=1).groupby(["lang", "modality"]).size().to_dict()
    phase2 = items(mixture, phase=2).groupby(["lang", "modality"]).size().to_dict()
    assert phase1 == {("en", "text"): 20, ("en", "speech"): 20, ("de", "text"): 10}
    assert phase2 == {**phase1, ("de", "speech"): 2}


def test_crosslingual_run_without_target_text_has_only_the_target_speech_budget():
    source, target = part("en", size=20, speech=20, scarce=False), part("de", size=10, speech=3)
    mixture = build_mixture("direct_mixing", [source, replace(target, use_text=False)], seed=0)
    counts = mixture.groupby(["lang", "modality"]).size().to_dict()
    assert counts == {("en", "text"): 20, ("en", "speech"): 20, ("de", "speech"): 3}


def test_mixture_is_deterministic_for_a_seed_and_reshuffled_by_another():
    parts = [part(size=30, speech=10)]
    first, again = build_mixture("direct_mixing", parts, seed=4), build_mixture("direct_mixing", parts, seed=4)
    other = build_mixture("direct_mixing", parts, seed=5)
    pd.testing.assert_frame_equal(first, again)
    assert list(first["id"]) != list(other["id"])
    assert sorted(zip(first["id"], first["modality"])) == sorted(zip(other["id"], other["modality"]))


@pytest.mark.parametrize("scheme", sorted(BUDGET_FREE_PHASES))
@pytest.mark.parametrize("setting", ["monolingual", "crosslingual", "crosslingual_without_target_text"])
def test_budget_free_first_phases_are_the_same_rows_in_the_same_order_for_every_budget(scheme, setting):
    def parts(budget):
        if setting == "monolingual":
            return [part(size=40, speech=budget)]
        target = part("de", size=20, speech=budget)
        return [part(size=30, speech=30, scarce=False),
                replace(target, use_text=setting == "crosslingual")]

    shared = BUDGET_FREE_PHASES[scheme]
    for seed in (0, 7):
        first = [build_mixture(scheme, parts(budget), seed) for budget in (0, 1, 4, 10)]
        leading = [mixture[mixture["phase"] <= shared].reset_index(drop=True) for mixture in first]
        for other in leading[1:]:
            pd.testing.assert_frame_equal(leading[0], other)
        assert len(leading[0]) and not (leading[0]["modality"] == "speech")[leading[0]["lang"] == "de"].any()
        # The later phases hold the budget: they differ.
        assert len({len(mixture) for mixture in first}) == 4


def test_speech_ids_outside_the_training_pool_are_rejected():
    bad = replace(part(), speech_ids=("en000", "zz999"))
    with pytest.raises(MixtureError, match="not training utterances.*'zz999'"):
        build_mixture("direct_mixing", [bad], seed=0)


def test_schemes_match_the_config_schema():
    import yaml

    from conftest import REPO

    schema = yaml.safe_load(schema_path().read_text())
    assert tuple(schema["$defs"]["scheme"]["enum"]) == SCHEMES


def with_audio(utterances, audio_for):
    """The utterances, those in `audio_for` with a clip (and an entity, so that targets differ in more than intent)."""
    return [replace(u, audio=f"audio/{u.id}.flac", duration_s=1.25 + index / 7,
                    entities=[{"type": "number", "filler": u.text.split()[-1]}]) if u.id in audio_for else u
            for index, u in enumerate(utterances)]  # fmt: skip


def timed(utterances):
    """Speech with word times that are not whole samples (the span's length is counted in samples)."""
    return [replace(u, word_times=[[word, 0.31 * i + 0.01003, 0.31 * i + 0.27777] for i, word in enumerate(
        u.text.split())]) for u in with_audio(utterances, {u.id for u in utterances})]  # fmt: skip


def assert_items_match_their_manifests(mixture):
    """Every row's item data is its manifest row's: transcript, SLU label, clip and its duration (interleaved: the
    transcript around the spoken span, and the span's times and length)."""
    for row in mixture.itertuples(index=False):
        utt = read_manifest(row.manifest).set_index("id").loc[row.id]
        assert row.target == format_target(utt["scenario"], utt["action"], utt["entities"])
        assert pd.isna(row.instruction)
        if row.modality == "text":
            assert row.text == utt["text"]
            assert pd.isna(row.audio) and pd.isna(row.duration_s) and pd.isna(row.span_start_s)
            continue
        assert row.audio == utt["audio"]
        if row.modality == "speech":
            assert row.text == utt["text"] and row.duration_s == utt["duration_s"] and pd.isna(row.span_start)
            continue
        times, start, end = utt["word_times"], row.span_start, row.span_end
        words = [word for word, _, _ in times]
        assert row.text == " ".join(words[:start] + [AUDIO_SPAN] + words[end:])
        assert (row.span_start_s, row.span_end_s) == (times[start][1], times[end - 1][2])
        samples = round(row.span_end_s * 16_000) - round(row.span_start_s * 16_000)
        assert row.duration_s == samples / 16_000 != row.span_end_s - row.span_start_s


def test_an_interleaved_span_lasts_as_long_as_the_audio_training_cuts():
    import numpy as np

    from lalm_slu.data.audio import TARGET_RATE
    from lalm_slu.data.interleaving import span_audio, span_samples

    clip = np.zeros(3 * TARGET_RATE, dtype=np.float32)
    first, last = span_samples(0.01003, 1.27777)
    assert len(span_audio(clip, 0.01003, 1.27777)) == last - first == round(1.27777 * TARGET_RATE) - 160


def test_making_a_mixture_imports_neither_torch_nor_the_model_layer():
    import subprocess
    import sys

    code = "import sys, lalm_slu.data.mixtures; print(sorted({'torch', 'lalm_slu.model'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_mix_training_set_command_writes_a_crosslingual_mixture(tmp_path):
    en, de = make_utterances(10, "en", prefix="en"), make_utterances(8, "de", split="dev", prefix="de")
    paths = {}
    for name, utterances, audio_for in (
        ("en_text", en, set()),
        ("en_speech", en, {u.id for u in en}),
        ("de_text", de, set()),
        ("de_speech", de, {u.id for u in de}),
    ):
        paths[name] = write_manifest(with_audio(utterances, audio_for), tmp_path / f"{name}.parquet")
    write_budget_ids([u.id for u in en], tmp_path / "en.txt")
    write_budget_ids(["de0001", "de0005"], tmp_path / "de.txt")
    out = tmp_path / "mix.parquet"
    main(
        ["mix-training-set", "--scheme", "curriculum", "--text-manifest", str(paths["en_text"]),
         "--speech-manifest", str(paths["en_speech"]), "--speech-ids", str(tmp_path / "en.txt"),
         "--target-text-manifest", str(paths["de_text"]), "--target-speech-manifest", str(paths["de_speech"]),
         "--target-speech-ids", str(tmp_path / "de.txt"), "--seed", "0", "--out", str(out)]
    )  # fmt: skip
    mixture = pd.read_parquet(out)
    assert list(mixture.columns) == list(MIXTURE_COLUMNS)
    phase2_speech = items(mixture, phase=2, modality="speech")
    assert sorted(phase2_speech.loc[phase2_speech["lang"] == "de", "id"]) == ["de0001", "de0005"]
    assert set(items(mixture, phase=1, modality="speech")["lang"]) == {"en"}
    assert set(mixture.loc[mixture["modality"] == "text", "manifest"]) == {str(paths["en_text"]), str(paths["de_text"])}
    assert_items_match_their_manifests(mixture)


def test_mix_training_set_command_carries_each_interleaved_items_span(tmp_path):
    en = make_utterances(12)
    text = write_manifest(en, tmp_path / "text.parquet")
    speech = write_manifest(timed(en), tmp_path / "speech.parquet")
    write_budget_ids([u.id for u in en[:8]], tmp_path / "ids.txt")
    main(["mix-training-set", "--scheme", "interleaving", "--text-manifest", str(text), "--speech-manifest",
          str(speech), "--speech-ids", str(tmp_path / "ids.txt"), "--seed", "1", "--out", str(tmp_path / "mix.parquet"),
          "--interleave", '{"fraction": 0.5, "min_span_words": 1, "max_span_words": 3}'])  # fmt: skip
    mixture = pd.read_parquet(tmp_path / "mix.parquet")
    assert list(mixture.columns) == list(MIXTURE_COLUMNS)
    assert mixture["modality"].value_counts().to_dict() == {"text": 12, "speech": 4, "interleaved": 4}
    assert_items_match_their_manifests(mixture)


def test_mix_training_set_command_keeps_only_the_first_phases_when_asked(tmp_path):
    en = make_utterances(10)
    text = write_manifest(en, tmp_path / "text.parquet")
    speech = write_manifest(with_audio(en, {u.id for u in en}), tmp_path / "speech.parquet")
    write_budget_ids(["utt0001", "utt0003"], tmp_path / "ids.txt")
    arguments = ["mix-training-set", "--scheme", "curriculum", "--text-manifest", str(text), "--speech-manifest",
                 str(speech), "--speech-ids", str(tmp_path / "ids.txt"), "--seed", "3"]  # fmt: skip
    main([*arguments, "--out", str(tmp_path / "all.parquet")])
    main([*arguments, "--phases", "1", "--out", str(tmp_path / "first.parquet")])
    whole, first = pd.read_parquet(tmp_path / "all.parquet"), pd.read_parquet(tmp_path / "first.parquet")
    pd.testing.assert_frame_equal(first, whole[whole["phase"] == 1])


def test_mix_training_set_command_names_the_speech_manifest_when_audio_is_missing(tmp_path, capsys):
    en = make_utterances(4)
    text = write_manifest(en, tmp_path / "text.parquet")
    speech = write_manifest(with_audio(en, {"utt0000"}), tmp_path / "speech.parquet")
    write_budget_ids(["utt0000", "utt0002"], tmp_path / "ids.txt")
    status = main(["mix-training-set", "--scheme", "direct_mixing", "--text-manifest", str(text),
                   "--speech-manifest", str(speech), "--speech-ids", str(tmp_path / "ids.txt"),
                   "--seed", "0", "--out", str(tmp_path / "mix.parquet")])  # fmt: skip
    assert status == 1
    assert re.search(r"speech.parquet: utterance 'utt0002' .*has no audio", capsys.readouterr().err)


def bad_rows(manifest):
    """One listed item of each kind that cannot be trained on, and what its error says."""
    row = {"lang": "en", "phase": 1, "manifest": str(manifest), "span_start": None, "span_end": None}
    return {
        "unknown id": ({**row, "id": "zz9", "modality": "text"}, "id 'zz9' of a mixture item not found"),
        "speech without audio": ({**row, "id": "utt0001", "modality": "speech"}, "speech item 'utt0001' has no audio"),
        "span outside the words": ({**row, "id": "utt0000", "modality": "interleaved", "span_start": 3, "span_end": 9},
                                   r"span \[3, 9\) outside its 7 timed words"),
        "unknown modality": ({**row, "id": "utt0000", "modality": "video"}, "unknown modality 'video'"),
    }  # fmt: skip


@pytest.mark.parametrize("case", ["unknown id", "speech without audio", "span outside the words", "unknown modality"])
def test_an_item_that_cannot_be_trained_on_fails_at_mixing_naming_its_manifest(tmp_path, case):
    en = make_utterances(2)
    manifest = write_manifest(timed(en[:1]) + en[1:], tmp_path / "speech.parquet")
    good = {"id": "utt0000", "lang": "en", "modality": "speech", "phase": 1, "manifest": str(manifest),
            "span_start": None, "span_end": None}  # fmt: skip
    bad, message = bad_rows(manifest)[case]
    listing = pd.DataFrame([good, bad]).astype({"span_start": "Int64", "span_end": "Int64"})
    with pytest.raises(DataError, match=f"^{re.escape(str(manifest))}: .*{message}"):
        with_item_data(listing, ManifestCache())
    assert len(with_item_data(listing.iloc[:1], ManifestCache())) == 1


def test_mix_training_set_command_names_the_speech_manifest_when_a_clip_has_no_duration(tmp_path, capsys):
    en = make_utterances(4)
    text = write_manifest(en, tmp_path / "text.parquet")
    speech = write_manifest([replace(u, duration_s=None) if u.id == "utt0002" else u
                             for u in with_audio(en, {u.id for u in en})], tmp_path / "speech.parquet")  # fmt: skip
    write_budget_ids(["utt0000", "utt0002"], tmp_path / "ids.txt")
    status = main(["mix-training-set", "--scheme", "direct_mixing", "--text-manifest", str(text),
                   "--speech-manifest", str(speech), "--speech-ids", str(tmp_path / "ids.txt"),
                   "--seed", "0", "--out", str(tmp_path / "mix.parquet")])  # fmt: skip
    assert status == 1 and not (tmp_path / "mix.parquet").exists()
    assert re.search(r"speech.parquet: speech item 'utt0002' has audio but no duration_s", capsys.readouterr().err)


def test_write_training_mixture_makes_the_target_the_scarce_part_and_can_leave_its_text_out(tmp_path):
    from lalm_slu.data.mixture_files import write_training_mixture

    source, target = make_utterances(6, prefix="en"), make_utterances(6, lang="de", prefix="de")
    files = {}
    for name, utterances, speech_ids in (("source", source, [u.id for u in source]), ("target", target, ["de0002"])):
        files[name] = (str(write_manifest(utterances, tmp_path / f"{name}-text.parquet")),
                       str(write_manifest(with_audio(utterances, {u.id for u in utterances}),
                                          tmp_path / f"{name}-speech.parquet")),
                       str(tmp_path / f"{name}-ids.txt"))  # fmt: skip
        write_budget_ids(speech_ids, files[name][2])
    out = tmp_path / "mix.parquet"
    mixture = write_training_mixture("direct_mixing", files["source"], 0, str(out), target=files["target"],
                                     target_text=False)  # fmt: skip
    pd.testing.assert_frame_equal(pd.read_parquet(out), mixture.reset_index(drop=True))
    german = items(mixture, lang="de")
    assert list(german["modality"]) == ["speech"] and list(german["id"]) == ["de0002"]
    assert len(items(mixture, lang="en", modality="text")) == 6 and len(items(mixture, lang="en", modality="speech")) == 6
