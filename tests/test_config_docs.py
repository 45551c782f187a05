"""docs/CONFIG.md's tables of defaults are generated from the schema (lalm_slu.config.docs) and kept in step."""

from conftest import REPO

from lalm_slu.config.docs import BEGIN, END, main, render, rewritten


def test_docs_config_md_shows_the_schema_s_defaults():
    text = (REPO / "docs/CONFIG.md").read_text()
    assert rewritten(text) == text, "docs/CONFIG.md is stale: run python -m lalm_slu.config.docs --write"


def test_the_tables_hold_every_block_s_defaults_pretraining_included():
    tables = render()
    assert "| `speech.tts.chunk_size` | `256` |" in tables
    assert "| `resources.synthesize_speech` | `{threads: 2}` |" in tables
    assert "| `training.dev_eval.max_examples` | `200` |" in tables
    assert "| `steps` | `4000` | transcription (and text) steps |" in tables  # the pretraining stage's table
    assert "| `min_span_s` | `0.1` |" in tables


def test_check_fails_on_stale_tables_and_write_brings_them_up_to_date(tmp_path):
    doc = tmp_path / "CONFIG.md"
    doc.write_text(f"# Config\n\n{BEGIN}\n| `speech.tts.chunk_size` | `128` |\n{END}\n\nMore text.\n")
    assert main(["--check", "--doc", str(doc)]) == 1
    assert main(["--write", "--doc", str(doc)]) == 0
    assert main(["--check", "--doc", str(doc)]) == 0
    text = doc.read_text()
    assert "`128`" not in text and text.startswith("# Config\n") and text.endswith("More text.\n")
