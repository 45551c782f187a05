"""What a training scheme's mixture holds, stated once: the workflow checks the config against it at planning
time (plain Python, no heavy imports), the mixer builds its phases from it and the trainer refuses a mismatch."""

# Phase numbers of each scheme's mixture: curriculum trains its text epochs (phase 1), then adds the scarce speech.
MIXTURE_PHASES = {"text_only": (1,), "direct_mixing": (1,), "curriculum": (1, 2), "oracle": (1,)}

# Leading phases of a scheme's mixture that hold no budgeted speech: the same items in the same order for every
# budget of a seed (mixtures.build_mixture draws their order first). The workflow trains them once per seed and data
# (rule finetune_prefix) and each budget's run continues from there (train.continue_from).
BUDGET_FREE_PHASES = {"curriculum": 1}


def phase_mismatch(scheme: str, phases: list[dict]) -> str | None:
    """Why a scheme block's `phases` cannot train its mixture (None: they can)."""
    numbers = tuple(int(phase["phase"]) for phase in phases)
    expected = MIXTURE_PHASES[scheme]
    if numbers != expected:
        return f"phases {list(numbers)}, but a {scheme} mixture has phases {list(expected)}"
    return None
