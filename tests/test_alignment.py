"""CTC forced alignment (word times of recorded speech), on synthetic emissions: no model, no network."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from lalm_slu.speech.alignment import (
    forced_align,
    target_frames,
    transcript_targets,
    word_times_from_path,
)


def emissions_for(path_labels: list[int], classes: int, noise: float = 0.0, seed: int = 0) -> torch.Tensor:
    """Log-probabilities that favour `path_labels` (one class per frame)."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(len(path_labels), classes, generator=generator) * noise
    logits[torch.arange(len(path_labels)), torch.tensor(path_labels)] += 5.0
    return logits.log_softmax(-1)


def brute_force(log_probs: torch.Tensor, targets: list[int], blank: int = 0) -> tuple[float, list[int]]:
    """The best CTC path by enumerating every frame labelling that collapses to `targets`."""
    best, best_path = -math.inf, None
    for labels in itertools.product(range(log_probs.shape[1]), repeat=log_probs.shape[0]):
        collapsed = [label for i, label in enumerate(labels) if label != blank and (i == 0 or labels[i - 1] != label)]
        if collapsed == targets:
            score = sum(float(log_probs[t, label]) for t, label in enumerate(labels))
            if score > best:
                best, best_path = score, list(labels)
    return best, best_path


def path_score(log_probs, path, targets, blank=0):
    return sum(float(log_probs[t, blank if j < 0 else targets[j]]) for t, j in enumerate(path))


def test_the_planted_path_is_recovered():
    # blank a a blank b b b blank c : targets a b c
    planted = [0, 1, 1, 0, 2, 2, 2, 0, 3]
    path = forced_align(emissions_for(planted, 4, noise=0.5), [1, 2, 3])
    assert path == [-1, 0, 0, -1, 1, 1, 1, -1, 2]
    assert target_frames(path, 3) == [(1, 3), (4, 7), (8, 9)]


def test_a_repeated_target_gets_a_blank_between_its_two_occurrences():
    planted = [1, 1, 1, 1, 1]  # the emissions ignore the rule; the alignment must not
    path = forced_align(emissions_for(planted, 3), [1, 1])
    assert -1 in path[path.index(0) : path.index(1)]


@pytest.mark.parametrize("seed", range(6))
def test_viterbi_finds_the_best_of_all_alignments(seed):
    generator = torch.Generator().manual_seed(seed)
    log_probs = torch.randn(6, 3, generator=generator).log_softmax(-1)
    targets = [[1, 2], [2, 2], [1], [1, 2, 1]][seed % 4]
    best, _ = brute_force(log_probs, targets)
    assert path_score(log_probs, forced_align(log_probs, targets), targets) == pytest.approx(best, abs=1e-5)


def test_too_many_targets_for_the_frames_is_an_error():
    with pytest.raises(ValueError, match="cannot be aligned"):
        forced_align(torch.zeros(3, 3).log_softmax(-1), [1, 1, 2])


def test_word_times_span_their_characters_frames():
    vocabulary = {"<pad>": 0, "|": 1, "A": 2, "B": 3, "C": 4}
    targets, owners = transcript_targets("ab c!", vocabulary)
    assert targets == [2, 3, 1, 4] and owners == [0, 0, -1, 1]
    # frames: blank a a b blank | blank c c blank (20 ms each)
    planted = [0, 2, 2, 3, 0, 1, 0, 4, 4, 0]
    path = forced_align(emissions_for(planted, 5, noise=0.3), targets)
    times = word_times_from_path("ab c!", owners, path, 0.02, 0.2)
    assert times == [["ab", 0.02, 0.08], ["c!", 0.14, 0.18]]


def test_a_word_the_model_cannot_spell_sits_at_the_next_words_start():
    vocabulary = {"<pad>": 0, "|": 1, "a": 2}
    targets, owners = transcript_targets("a 42 a", vocabulary)
    planted = [0, 2, 0, 1, 0, 2, 0]
    path = forced_align(emissions_for(planted, 3), targets)
    times = word_times_from_path("a 42 a", owners, path, 0.02, 0.14)
    assert times[1] == ["42", times[2][1], times[2][1]]
