import json
from pathlib import Path

import pytest

from lalm_slu.cli import main
from lalm_slu.evaluation.scoring import read_gold, read_predictions, score_files
from lalm_slu.data.records import DataError, Utterance, write_manifest
from lalm_slu.data.slu_json import format_target, parse_prediction

SLURP_DEVEL = Path(__file__).resolve().parents[1] / "data" / "slurp" / "devel.jsonl"  # vendored

# Two SLURP release records: the first has two recordings and a tokenized possessive.
SLURP_GOLD = [
    {
        "slurp_id": 101,
        "sentence": "how's the restaurant's delivery going",
        "sentence_annotation": "how's the [business_type : restaurant's] [order_type : delivery] going",
        "scenario": "takeaway",
        "action": "query",
        "tokens": [{"surface": s} for s in ["how", "'s", "the", "restaurant", "'s", "delivery", "going"]],
        "entities": [{"span": [3, 4], "type": "business_type"}, {"span": [5], "type": "order_type"}],
        "recordings": [{"file": "audio-1-headset.flac"}, {"file": "audio-1.flac"}],
    },
    {
        "slurp_id": 102,
        "sentence": "wake me up at six am",
        "sentence_annotation": "wake me up at [time : six am]",
        "scenario": "alarm",
        "action": "set",
        "tokens": [{"surface": s} for s in ["wake", "me", "up", "at", "six", "am"]],
        "entities": [{"span": [4, 5], "type": "time"}],
        "recordings": [{"file": "audio-2.flac"}],
    },
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def run_score(*args, capsys):
    assert main(["score", *map(str, args)]) == 0
    return capsys.readouterr().out


@pytest.fixture
def slurp_gold(tmp_path):
    return write_jsonl(tmp_path / "gold.jsonl", SLURP_GOLD)


@pytest.fixture
def manifest_gold(tmp_path):
    utterances = [
        Utterance(
            "u1", "slurp", "en", "test", "wake me up at six am", "alarm", "set", [{"type": "time", "filler": "six am"}]
        ),
        Utterance("u2", "slurp", "en", "test", "what is the weather", "weather", "query", []),
        Utterance(
            "u3",
            "slurp",
            "en",
            "test",
            "play jazz in the kitchen",
            "play",
            "music",
            [{"type": "music_genre", "filler": "Jazz"}, {"type": "house_place", "filler": "kitchen"}],
        ),
    ]
    return write_manifest(utterances, tmp_path / "test.parquet")


def our_prediction_line(utterance_id, raw):
    """A line as the decoder writes it: the raw output plus what the one parser read from it."""
    parsed = parse_prediction(raw)
    return {
        "id": utterance_id,
        "raw": raw,
        "scenario": parsed.scenario,
        "action": parsed.action,
        "entities": parsed.entities,
        "parsed": parsed.parsed,
    }


def test_our_format_round_trip_scores_perfectly(tmp_path, manifest_gold, capsys):
    lines = [
        our_prediction_line("u1", format_target("alarm", "set", [{"type": "time", "filler": "six am"}])),
        our_prediction_line("u2", format_target("weather", "query", [])),
        our_prediction_line(
            "u3",
            format_target(
                "play",
                "music",
                [{"type": "music_genre", "filler": "jazz"}, {"type": "house_place", "filler": "kitchen"}],
            ),
        ),
    ]
    pred = write_jsonl(tmp_path / "pred.jsonl", lines)
    result = json.loads(
        run_score("--gold", manifest_gold, "--pred", pred, "--json", "--bootstrap", "50", capsys=capsys)
    )
    assert result["granularity"] == "utterance"
    assert {name: metric["value"] for name, metric in result["metrics"].items()} == dict.fromkeys(
        result["metrics"], 1.0
    )
    assert result["counts"] == {
        "n_gold": 3,
        "n_gold_utterances": 3,
        "n_pred": 3,
        "n_missing": 0,
        "n_extra": 0,
        "n_bad_lines": 0,
        "n_parse_failures": 0,
        "parse_failure_rate": 0.0,
    }
    assert result["confusion"]["span_exact"] == {"tp": 3, "fp": 0, "fn": 0}


def test_missing_extra_and_unparsed_predictions_are_counted(tmp_path, manifest_gold, capsys):
    lines = [
        our_prediction_line("u1", format_target("alarm", "set", [{"type": "time", "filler": "six am"}])),
        our_prediction_line("u2", "the weather, I think"),  # unparsed: scores as wrong
        our_prediction_line("u9", format_target("alarm", "set", [])),  # no such gold utterance
    ]
    pred = write_jsonl(tmp_path / "pred.jsonl", lines)
    result = json.loads(run_score("--gold", manifest_gold, "--pred", pred, "--json", "--bootstrap", "0", capsys=capsys))
    counts = result["counts"]
    assert (counts["n_gold"], counts["n_pred"], counts["n_missing"], counts["n_extra"]) == (3, 3, 1, 1)
    assert counts["n_parse_failures"] == 1
    assert counts["parse_failure_rate"] == pytest.approx(1 / 3)
    # u1 right; u2 unparsed; u3 missing: its two entities are false negatives.
    assert result["metrics"]["intent_accuracy"]["value"] == pytest.approx(1 / 3)
    assert result["confusion"]["span_exact"] == {"tp": 1, "fp": 0, "fn": 2}
    assert result["metrics"]["span_exact_f1"]["value"] == pytest.approx(0.5)


def test_decoder_lines_with_only_raw_output_are_parsed(tmp_path, manifest_gold):
    pred = write_jsonl(tmp_path / "pred.jsonl", [{"id": "u2", "raw": 'x {"scenario": "weather", "action": "query"}'}])
    predictions = read_predictions(pred)
    assert predictions.by_key["u2"].scenario == "weather"
    assert predictions.n_parse_failures == 0


def test_slurp_gold_fillers_are_built_from_tokens_like_slurps_scorer(slurp_gold):
    gold = read_gold(slurp_gold)
    assert [g.key for g in gold] == ["101", "102"]
    assert gold[0].labels.entities == (("business_type", "restaurant 's"), ("order_type", "delivery"))
    assert gold[0].recordings == ("audio-1-headset.flac", "audio-1.flac")


def test_slurp_gold_without_tokens_reads_the_inline_annotation(tmp_path):
    record = {key: value for key, value in SLURP_GOLD[0].items() if key not in ("tokens", "entities")}
    gold = read_gold(write_jsonl(tmp_path / "gold.jsonl", [record]))
    assert gold[0].labels.entities == (("business_type", "restaurant's"), ("order_type", "delivery"))


def test_slurp_recording_predictions_are_scored_per_recording(tmp_path, slurp_gold, capsys):
    pred = write_jsonl(
        tmp_path / "pred.jsonl",
        [
            {
                "file": "audio-1-headset.flac",
                "scenario": "takeaway",
                "action": "query",
                "entities": [
                    {"type": "business_type", "filler": "restaurant 's"},
                    {"type": "order_type", "filler": "delivery"},
                ],
            },
            {
                "file": "audio-1.flac",
                "scenario": "takeaway",
                "action": "order",
                "entities": [{"type": "order_type", "filler": "delivery"}],
            },
            {
                "file": "audio-2.flac",
                "scenario": "alarm",
                "action": "set",
                "entities": [{"type": "time", "filler": "six pm"}],
            },
            {"file": "audio-404.flac", "scenario": "alarm", "action": "set", "entities": []},
        ],
    )
    result = json.loads(run_score("--gold", slurp_gold, "--pred", pred, "--json", "--bootstrap", "0", capsys=capsys))
    assert result["granularity"] == "recording"
    assert (result["counts"]["n_gold"], result["counts"]["n_gold_utterances"]) == (3, 2)
    assert result["counts"]["n_extra"] == 1
    assert result["metrics"]["intent_accuracy"]["value"] == pytest.approx(2 / 3)
    assert result["metrics"]["scenario_accuracy"]["value"] == 1.0
    # exact: rec 1 TP 2; rec 2 TP 1, FN 1; rec 3 FP 1, FN 1.
    assert result["confusion"]["span_exact"] == {"tp": 3, "fp": 1, "fn": 2}
    # word: "six pm" is a hit at WER 0.5; char: at 1/6.
    assert result["confusion"]["span_word"] == {"tp": 4, "fp": 0.5, "fn": 1.5}
    assert result["confusion"]["span_char"]["fp"] == pytest.approx(1 / 6)


def test_gold_transcript_predictions_by_slurp_id_are_scored_per_utterance(tmp_path, slurp_gold, capsys):
    pred = write_jsonl(
        tmp_path / "pred.jsonl",
        [
            {"slurp_id": 101, "scenario": "takeaway", "action": "query", "entities": []},
            {"slurp_id": 102, "scenario": "alarm", "action": "set", "entities": [{"type": "time", "filler": "Six AM"}]},
        ],
    )
    result = json.loads(run_score("--gold", slurp_gold, "--pred", pred, "--json", "--bootstrap", "0", capsys=capsys))
    assert result["granularity"] == "utterance"
    assert result["confusion"]["span_exact"] == {"tp": 1, "fp": 0, "fn": 2}


def test_utterance_predictions_at_recording_granularity_repeat_per_recording(tmp_path, slurp_gold):
    pred = write_jsonl(
        tmp_path / "pred.jsonl",
        [
            {"slurp_id": 101, "scenario": "takeaway", "action": "query", "entities": []},
            {"slurp_id": 102, "scenario": "weather", "action": "query", "entities": []},
        ],
    )
    result = score_files(read_gold(slurp_gold), read_predictions(pred), "recording", bootstrap_resamples=0)
    assert result["counts"]["n_gold"] == 3
    assert result["metrics"]["intent_accuracy"]["value"] == pytest.approx(2 / 3)


def test_recording_predictions_cannot_be_scored_per_utterance(tmp_path, slurp_gold):
    pred = write_jsonl(
        tmp_path / "pred.jsonl", [{"file": "audio-2.flac", "scenario": "a", "action": "b", "entities": []}]
    )
    with pytest.raises(DataError, match="--granularity recording"):
        score_files(read_gold(slurp_gold), read_predictions(pred), "utterance")


def test_malformed_prediction_line_is_an_error_naming_file_and_line(tmp_path):
    pred = tmp_path / "pred.jsonl"
    pred.write_text('{"id": "u1", "scenario": "a", "action": "b", "entities": []}\n\n{"id": "u2", "scen\n')
    with pytest.raises(DataError, match=rf"{pred}:3: malformed JSON"):
        read_predictions(pred)


def test_malformed_prediction_line_can_be_counted_as_a_miss(tmp_path, manifest_gold, capsys):
    pred = tmp_path / "pred.jsonl"
    pred.write_text(
        '{"id": "u1", "scenario": "alarm", "action": "set", "entities": []}\n{"id": "u2", "scen\n'
        '{"id": "u3", "scenario": 5, "action": "music"}\n'
    )
    result = json.loads(
        run_score(
            "--gold",
            manifest_gold,
            "--pred",
            pred,
            "--on-bad-line",
            "count",
            "--json",
            "--bootstrap",
            "0",
            capsys=capsys,
        )
    )
    assert result["counts"]["n_bad_lines"] == 2
    assert (result["counts"]["n_pred"], result["counts"]["n_missing"]) == (1, 2)


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"scenario": "a", "action": "b"}', "needs one of"),
        ('{"id": "u1", "action": "b"}', "'scenario' must be given"),
        ('{"id": "u1", "scenario": "a", "action": "b", "entities": "none"}', "'entities' must be a list"),
        ("[1, 2]", "must be a JSON object"),
    ],
)
def test_prediction_lines_with_wrong_shape_are_errors(tmp_path, line, message):
    pred = tmp_path / "pred.jsonl"
    pred.write_text(line + "\n")
    with pytest.raises(DataError, match=rf"pred.jsonl:1: .*{message}"):
        read_predictions(pred)


def test_duplicate_prediction_is_an_error(tmp_path):
    line = json.dumps({"id": "u1", "scenario": "a", "action": "b", "entities": []})
    pred = tmp_path / "pred.jsonl"
    pred.write_text(line + "\n" + line + "\n")
    with pytest.raises(DataError, match=r"pred.jsonl:2: duplicate prediction for 'u1'"):
        read_predictions(pred)


def test_bad_gold_record_names_file_and_line(tmp_path):
    gold = write_jsonl(tmp_path / "gold.jsonl", [SLURP_GOLD[1], {"slurp_id": 5, "scenario": "a"}])
    with pytest.raises(DataError, match=r"gold.jsonl:2: not a SLURP release record"):
        read_gold(gold)


def test_gold_of_unknown_format_is_an_error(tmp_path):
    path = tmp_path / "gold.csv"
    path.write_text("id\n")
    with pytest.raises(DataError, match="gold.csv: gold must be a manifest"):
        read_gold(path)


def test_meta_block_and_out_file(tmp_path, manifest_gold, capsys):
    pred = write_jsonl(tmp_path / "pred.jsonl", [our_prediction_line("u2", format_target("weather", "query", []))])
    out = tmp_path / "metrics" / "test.speech.json"
    meta = {"run": "slurp-en_curriculum_b10_s0", "seed": 0}
    assert (
        run_score(
            "--gold",
            manifest_gold,
            "--pred",
            pred,
            "--json",
            "--out",
            out,
            "--meta",
            json.dumps(meta),
            "--bootstrap",
            "20",
            capsys=capsys,
        )
        == ""
    )
    result = json.loads(out.read_text())
    assert result["meta"] == meta
    assert result["bootstrap"] == {"resamples": 20, "seed": 0, "confidence": 0.95}


def test_default_output_is_a_readable_table(tmp_path, manifest_gold, capsys):
    pred = write_jsonl(tmp_path / "pred.jsonl", [our_prediction_line("u2", format_target("weather", "query", []))])
    text = run_score("--gold", manifest_gold, "--pred", pred, "--bootstrap", "0", capsys=capsys)
    assert "intent_accuracy" in text and "33.33" in text
    assert "n_missing=2" in text


def test_same_seed_gives_identical_output(tmp_path, manifest_gold, capsys):
    pred = write_jsonl(
        tmp_path / "pred.jsonl",
        [
            our_prediction_line("u1", format_target("alarm", "set", [])),
            our_prediction_line("u3", format_target("play", "music", [])),
        ],
    )
    args = ("--gold", manifest_gold, "--pred", pred, "--json", "--bootstrap", "100", "--seed", "3")
    assert run_score(*args, capsys=capsys) == run_score(*args, capsys=capsys)


def test_release_file_scored_against_itself_is_perfect_per_recording(tmp_path):
    gold = read_gold(SLURP_DEVEL)
    lines = [
        {
            "file": recording,
            "scenario": g.labels.scenario,
            "action": g.labels.action,
            "entities": [{"type": t, "filler": f} for t, f in g.labels.entities],
        }
        for g in gold
        for recording in g.recordings
    ]
    result = score_files(gold, read_predictions(write_jsonl(tmp_path / "pred.jsonl", lines)), bootstrap_resamples=0)
    assert result["counts"]["n_gold"] == len(lines) > len(gold)
    assert result["metrics"]["slu_f1"]["value"] == 1.0
    assert result["metrics"]["intent_accuracy"]["value"] == 1.0


def test_bootstrap_default_is_the_config_schemas(tmp_path, manifest_gold, capsys):
    from lalm_slu.config.settings import block_properties

    pred = write_jsonl(tmp_path / "pred.jsonl", [{"id": "u1", "raw": "{}"}])
    result = json.loads(run_score("--gold", manifest_gold, "--pred", pred, "--json", capsys=capsys))
    assert result["bootstrap"]["resamples"] == block_properties("scoring")["bootstrap"]["default"]


def test_the_scoring_library_is_importable_without_the_command():
    import subprocess
    import sys

    code = "import sys, lalm_slu.evaluation.scoring; print('lalm_slu.commands' in ' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_score_report_puts_the_meta_block_first_and_counts_bad_lines_when_asked(tmp_path, manifest_gold):
    from lalm_slu.evaluation.scoring import score_report

    pred = tmp_path / "pred.jsonl"
    pred.write_text(json.dumps(our_prediction_line("u2", format_target("weather", "query", []))) + "\n{not json\n")
    report = json.loads(score_report(manifest_gold, pred, bootstrap_resamples=0, on_bad_line="count",
                                     meta={"run": "r"}, as_json=True))  # fmt: skip
    assert list(report)[0] == "meta" and report["meta"] == {"run": "r"}
    assert report["counts"]["n_bad_lines"] == 1 and report["counts"]["n_gold"] == 3
    table = score_report(manifest_gold, pred, bootstrap_resamples=0, on_bad_line="count")
    assert table.startswith("metric") and "n_bad_lines=1" in table
