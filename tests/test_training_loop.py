"""The shared schedule: warm-up then cosine, as transformers defines it, with an optional floor."""

import pytest
import torch
from transformers import get_cosine_schedule_with_warmup

from lalm_slu.training_loop import Segment, warmup_steps


@pytest.mark.parametrize("total, ratio", [(1, 0.0), (7, 0.04), (120, 0.02), (300, 0.25)])
def test_a_segment_without_floor_follows_transformers_cosine_with_warmup(total, ratio):
    segment = Segment("phase 1", total, 5e-6, warmup_steps(total, ratio))
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=5e-6)
    reference = get_cosine_schedule_with_warmup(optimizer, segment.warmup_steps, total)
    expected = []
    for _ in range(total):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        reference.step()
    warmup = segment.warmup_steps
    # After warm-up the same curve; during it the trainer is one step ahead (its first step is 1/warm-up of the
    # peak, transformers' is 0).
    assert [segment.lr_at(step) for step in range(warmup, total)] == pytest.approx(expected[warmup:], rel=1e-12)
    assert [segment.lr_at(step) for step in range(warmup)] == pytest.approx(expected[1 : warmup + 1], rel=1e-12)

def test_a_floor_keeps_the_learning_rate_above_its_share_of_the_peak():
    segment = Segment("instructions", 100, 4e-4, 10, min_lr_ratio=0.1)
    rates = [segment.lr_at(step) for step in range(100)]
    assert rates[9] == pytest.approx(4e-4)  # the end of warm-up is the peak
    assert min(rates) >= 4e-5 and rates[-1] == pytest.approx(4e-5, rel=1e-2)
    assert all(a >= b for a, b in zip(rates[9:], rates[10:]))  # then only decays
