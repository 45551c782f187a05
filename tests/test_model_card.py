"""The demo model's card, filled from a template: the same bytes as the f-string it replaced.

The expected cards in tests/fixtures/ were written by the old `pretrain.write_model_card` (before it moved to
`model_card.py`). The shipped models/demo-qwen2-audio/README.md is not one of them: it was rewritten by hand
after pretraining (four stages, transfer tables), so it cannot serve as the expected text.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lalm_slu.demo_model.model_card import write_model_card

MODEL = Path(__file__).resolve().parents[1] / "models" / "demo-qwen2-audio"
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# One stage, no continued_from, no alignment, no instruction stage, tower frozen, wall_time_s_total present:
# the branches the shipped (continued) summary does not take.
SINGLE_STAGE = {
    "finished": True,
    "steps": 4000,
    "wall_time_s_this_session": 1200.5,
    "wall_time_s_total": 6224.0,
    "final_wer": {"en": 0.4431, "de": 0.7449, "it": 0.8862},
    "eval_utterances": {"de": 200, "en": 200, "it": 200},
    "train_clips": 20752,
    "train_texts": 17990,
    "config": {
        "steps": 4000, "batch_size": 16, "learning_rate": 0.001, "warmup_steps": 200, "min_lr_ratio": 0.1,
        "text_fraction": 0.25, "seed": 0, "trainable": ["multi_modal_projector", "language_model", "lm_head"],
        "alignment_start_step": None, "instruction_steps": 0, "keep_language_model_layers": None,
    },
}


def _model_dir(tmp_path: Path) -> Path:
    shutil.copy(MODEL / "config.json", tmp_path / "config.json")
    return tmp_path


@pytest.mark.parametrize("summary, expected", [
    ("shipped", "model_card_shipped.md"),
    ("single_stage", "model_card_single_stage.md"),
])
def test_card_matches_the_old_f_string_byte_for_byte(tmp_path, summary, expected):
    if summary == "shipped":
        summary = json.loads((MODEL / "pretraining_summary.json").read_text())
    else:
        summary = SINGLE_STAGE
    path = write_model_card(_model_dir(tmp_path), summary)
    assert path == tmp_path / "README.md"
    assert path.read_bytes() == (FIXTURES / expected).read_bytes()


@pytest.mark.parametrize("drop, field", [
    (("summary", "train_clips"), "train_clips"),
    (("config", "num_mel_bins"), "audio_num_mel_bins"),
])
def test_a_missing_field_raises_key_error_naming_it(tmp_path, drop, field):
    model_dir = _model_dir(tmp_path)
    summary = json.loads(json.dumps(SINGLE_STAGE))
    where, key = drop
    if where == "summary":
        del summary[key]
    else:
        config = json.loads((model_dir / "config.json").read_text())
        del config["audio_config"][key]
        (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(KeyError) as raised:
        write_model_card(model_dir, summary)
    assert raised.value.args == (field,)
    assert not (model_dir / "README.md").exists()


def test_a_behaviour_alignment_stage_is_described_with_its_weights(tmp_path):
    summary = json.loads(json.dumps(SINGLE_STAGE))
    summary["config"].update(distill_weight=1.0, hidden_weight=0.5)
    card = write_model_card(_model_dir(tmp_path), summary).read_text()
    assert "Behaviour alignment on every speech step" in card
    assert "(KL, weight 1.0)" in card and "weight 0.5)" in card
    plain = tmp_path / "plain"
    plain.mkdir()
    assert "Behaviour alignment" not in write_model_card(_model_dir(plain), SINGLE_STAGE).read_text()
