"""The memory plan's optimizer rows hold on a real step: 2 gloo processes, a ~220 M-parameter Qwen2-Audio through
the trainer's parallelize and build_optimizer, one forward, backward and AdamW step per implementation; the host
memory the first step adds (peak RSS: the two fp32 moments and the implementation's scratch) is within 10 % of
the plan's optimizer + step scratch (tests/optimizer_memory/step_memory.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO
from tiny_model import subprocess_env

pytestmark = pytest.mark.slow

SCRIPT = REPO / "tests" / "optimizer_memory" / "step_memory.py"


@pytest.mark.parametrize("implementation", ["fused", "foreach", "forloop"])
def test_the_first_adamw_step_adds_the_planned_moments_and_scratch(tmp_path, implementation):
    out = tmp_path / "step.json"
    # Large blocks straight from mmap and back to the system when freed: RSS then follows what is alive.
    env = {**subprocess_env(), "MALLOC_MMAP_THRESHOLD_": "131072"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(SCRIPT),
               "--optimizer", implementation, "--out", str(out)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-5000:]
    report = json.loads(out.read_text())
    assert report["trained_parameters"] >= 200_000_000
    for added in report["step_added_bytes"]:
        assert added == pytest.approx(report["planned_bytes"], rel=0.10), report
