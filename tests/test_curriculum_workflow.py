"""A curriculum run through Snakemake itself: the prefix job writes the checkpoint of the shared first phases as a
directory output (which Snakemake marks with its own timestamp file once the job ends), and the run's job continues
from that checkpoint. The smoke config keeps it to a few dozen utterances."""

from __future__ import annotations

import json
import os

import pytest

from conftest import REPO, WorkflowCopy

pytestmark = pytest.mark.slow

SMOKE = "workflow/configs/smoke.yaml"
PREFIX = "results/prefixes/slurp-en_curriculum_phase1_s0/checkpoint"
RUN = "slurp-en_curriculum_b10_s0"


def test_a_curriculum_run_continues_from_its_prefix_checkpoint_written_by_another_job(tmp_path):
    copy = WorkflowCopy(tmp_path)
    for shipped in ("data", "models"):  # read only by the jobs
        os.symlink(REPO / shipped, tmp_path / shipped)

    copy.snakemake(PREFIX, "--configfile", SMOKE)
    assert (tmp_path / PREFIX / ".snakemake_timestamp").exists()  # the condition a run must accept
    copy.snakemake(f"results/runs/{RUN}/model", "--configfile", SMOKE)

    summary = json.loads((tmp_path / "results" / "runs" / RUN / "model" / "summary.json").read_text())
    assert summary["continued_from"] == PREFIX
    log = (tmp_path / "logs" / "finetune_model" / f"{RUN}.log").read_text()
    assert "phase 2" in log and "damaged" not in log
