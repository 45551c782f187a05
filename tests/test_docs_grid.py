"""The docs' numbers of the paper grid are the dry run's: docs/SLURM.md's generated block equals a fresh dry run of
workflow/configs/paper.yaml in a clean checkout (regenerate: `python benchmarks/paper_grid_jobs.py --write`), and
no page states a rule's job count the dry run does not plan."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from paper_grid_jobs import END, START, grid_jobs, render  # noqa: E402
from planning_time import scratch_workflow  # noqa: E402

pytestmark = pytest.mark.slow  # one dry run of the paper grid (module fixture): 30–60 s on two shared cores
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    return grid_jobs(scratch_workflow(tmp_path_factory.mktemp("checkout")))


def outside_generated_block(text: str) -> str:
    return re.sub(re.escape(START) + ".*?" + re.escape(END), "", text, flags=re.DOTALL)


def test_docs_slurm_shows_the_dry_run_s_own_job_counts(grid):
    doc = (REPO / "docs/SLURM.md").read_text(encoding="utf-8")
    block = re.search(re.escape(START) + r"\n(.*?)\n" + re.escape(END), doc, flags=re.DOTALL)
    assert block, "docs/SLURM.md has no generated dry-run block"
    assert block.group(1) == render(grid), "stale: run `python benchmarks/paper_grid_jobs.py --write`"


def test_a_job_or_run_count_named_with_its_rule_or_scheme_in_the_docs_is_the_dry_run_s(grid):
    schemes = "|".join(grid.trained)
    for page in PAGES:  # a count of the paper grid; say the demo's without the rule's name in code style
        text = outside_generated_block(page.read_text(encoding="utf-8"))
        for count, rule in re.findall(r"\b(\d[\d,]*) `(\w+)`", text):
            if rule in grid.jobs:
                assert int(count.replace(",", "")) == grid.jobs[rule], f"{page}: {count} `{rule}`"
        for count, scheme in re.findall(rf"\b(\d[\d,]*) ({schemes}) runs\b", text):
            assert int(count.replace(",", "")) == grid.trained[scheme], f"{page}: {count} {scheme} runs"


def test_docs_slurm_names_every_rule_that_asks_for_a_gpu(grid):
    doc = (REPO / "docs/SLURM.md").read_text(encoding="utf-8")
    paragraph = re.search(r"^GPUs: the GPU rules are (.*?)\n\n", doc, flags=re.DOTALL | re.MULTILINE)
    assert paragraph, "docs/SLURM.md: no 'GPUs: the GPU rules are' paragraph"
    named = set(re.findall(r"`(\w+)`", paragraph.group(1).split(". ")[0]))
    assert {rule for rule, asked in grid.gpus.items() if max(asked) > 0} <= named
