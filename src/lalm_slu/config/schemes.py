"""What a training scheme's mixture holds, stated once: the workflow checks the config against it at planning
time (plain Python, no heavy imports), the mixer builds its phases from it and the trainer refuses a mismatch."""

# Phase numbers of each scheme's mixture: curriculum trains its text epochs (phase 1), then adds the scarce speech.
# Behaviour imitation (alone, or with interleaving: mtbi) continues from its phase 1, the text_only run of the same
# data and seed, so its own mixture is phase 2: the paired speech answering as the phase-1 model's text path did.
MIXTURE_PHASES = {
    "text_only": (1,),
    "direct_mixing": (1,),
    "curriculum": (1, 2),
    "oracle": (1,),
    "interleaving": (1,),
    "behaviour_imitation": (2,),
    "mtbi": (2,),
}
# Schemes whose speech budget is fixed, whatever budgets the grid lists: text_only uses no speech, oracle all of it.
FIXED_BUDGETS = {"text_only": "0", "oracle": "100"}
# Schemes whose phase 1 is the text_only run (their training starts from its model).
IMITATION_SCHEMES = ("behaviour_imitation", "mtbi")
# Schemes with interleaved speech-text items.
INTERLEAVING_SCHEMES = ("interleaving", "mtbi")

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
