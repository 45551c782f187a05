"""The README's demo block is replaced by pipeline output, and nothing else in the README changes."""

import pytest

from lalm_slu.cli import main
from lalm_slu.report.readme_block import END, START


def test_update_readme_replaces_only_the_marked_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nbefore\n{START}\nold table\n{END}\nafter\n")
    table = tmp_path / "slurp-en.test.md"
    table.write_text("| scheme | intent speech | intent cascade |\n|---|---|---|\n| text_only | 0.5 | 0.4 |\n")
    figure = tmp_path / "budget_curves.png"
    figure.write_bytes(b"\x89PNG fake")
    args = ["update-readme", "--readme", str(readme), "--table", str(table), "--figure", str(figure),
            "--assets-dir", str(tmp_path / "assets")]
    assert main(args) == 0
    text = readme.read_text()
    assert text.startswith("# Title\n\nbefore\n") and text.endswith("after\n")
    assert "old table" not in text and "| text_only | 0.5 | 0.4 |" in text
    assert "from `results/tables/slurp-en.test.md`" in text and "*cascade* the base model's own transcript" in text
    assert (tmp_path / "assets" / "budget_curves.png").read_bytes() == b"\x89PNG fake"
    main(args)
    assert readme.read_text() == text


def test_update_readme_without_markers_fails_naming_the_file(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    (tmp_path / "t.md").write_text("x")
    (tmp_path / "f.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="README.md"):
        main(["update-readme", "--readme", str(readme), "--table", str(tmp_path / "t.md"),
              "--figure", str(tmp_path / "f.png"), "--assets-dir", str(tmp_path / "a")])


def test_update_readme_adds_the_findings_table_after_the_demo_table(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"{START}\nold\n{END}\n")
    (tmp_path / "t.md").write_text("| scheme |\n|---|\n| text_only |\n")
    (tmp_path / "findings.md").write_text("| Paper's claim | SLU-F1: finding |\n|---|---|\n| claim | reversed |\n")
    (tmp_path / "f.png").write_bytes(b"x")
    main(["update-readme", "--readme", str(readme), "--table", str(tmp_path / "t.md"), "--figure", str(tmp_path / "f.png"),
          "--findings", str(tmp_path / "findings.md"), "--assets-dir", str(tmp_path / "a")])  # fmt: skip
    text = readme.read_text()
    assert text.index("| text_only |") < text.index("| claim | reversed |") < text.index(END)
