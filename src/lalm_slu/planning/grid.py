"""The experiment grid as runs: one Run per (seed, entry, scheme, budget[, target, target text]), their names,
the phase-1 runs behaviour imitation continues from and the shared first phases (prefixes) of curriculum runs.

Pure functions of the (schema-validated) config. Plain Python: the workflow plans with these."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from itertools import product

from lalm_slu.planning.config_checks import ConfigError
from lalm_slu.config.schemes import BUDGET_FREE_PHASES, FIXED_BUDGETS, IMITATION_SCHEMES
from lalm_slu.config.budget_label import budget_label


@dataclass(frozen=True)
class Run:
    """One fine-tuning run: its data, scheme, speech budget and seed."""

    corpus: str
    source: str  # training language (monolingual) or source language
    target: str | None  # target language of a cross-lingual run
    scheme: str
    budget: str  # speech budget label: "25" (percent) or "10shot"
    seed: int
    source_split: str = "train"  # training split of the (source) language
    target_split: str | None = None  # target-language training split (cross-lingual)
    target_text: bool = True  # cross-lingual: whether the target-language text is used
    # The entry's replacements of config["schemes"][scheme] keys; not part of the run's identity.
    scheme_settings: dict = field(default_factory=dict, hash=False, compare=False)
    # False: trained only as another run's phase 1 (behaviour imitation's text_only run), not decoded or scored.
    evaluated: bool = field(default=True, hash=False, compare=False)

    @property
    def name(self) -> str:
        return run_name(self.corpus, self.source, self.target, self.scheme, self.budget, self.seed, self.target_text)

    @property
    def test_lang(self) -> str:
        return self.target or self.source


def run_name(corpus, source, target, scheme, budget, seed, target_text=True) -> str:
    """The one place run names are made: slurp-en_curriculum_b5_s0,
    xsid-en2de_direct_mixing_b10shot_s0, xsid-en2de-notext_curriculum_b0_s0."""
    return f"{run_data(corpus, source, target, target_text)}_{scheme}_b{budget}_s{seed}"


def run_data(corpus, source, target, target_text=True) -> str:
    """slurp-en, xsid-en2de, xsid-en2de-notext: the corpus and languages part of a run name."""
    languages = source if target is None else f"{source}2{target}"
    if not target_text:
        languages += "-notext"
    return f"{corpus}-{languages}"


def scheme_budgets(scheme: str, budgets: list) -> list[str]:
    """The budget labels a scheme runs at: its fixed one (schemes.FIXED_BUDGETS), else each of the entry's."""
    if scheme in FIXED_BUDGETS:
        return [FIXED_BUDGETS[scheme]]
    return [budget_label(budget) for budget in budgets]


def grid_runs(config: dict):
    for seed in config["grid"]["seeds"]:
        for entry in config["grid"]["monolingual"]:
            for scheme in entry["schemes"]:
                for budget in scheme_budgets(scheme, entry["budgets"]):
                    yield Run(
                        entry["corpus"],
                        entry["lang"],
                        None,
                        scheme,
                        budget,
                        seed,
                        source_split=entry["train_split"],
                        scheme_settings=entry["scheme_settings"].get(scheme, {}),
                    )
        for entry in config["grid"]["crosslingual"]:
            for target, scheme, target_text in product(entry["targets"], entry["schemes"], entry["target_text"]):
                for budget in scheme_budgets(scheme, entry["target_speech_budgets"]):
                    yield Run(
                        entry["corpus"],
                        entry["source"],
                        target,
                        scheme,
                        budget,
                        seed,
                        target_split=entry["target_text_split"],
                        target_text=target_text,
                        scheme_settings=entry["scheme_settings"].get(scheme, {}),
                    )


def expand_grid(config: dict) -> dict[str, Run]:
    """Run name -> run: the grid's runs and the phase-1 runs its imitation schemes continue from."""
    runs = {}
    for run in grid_runs(config):
        if runs.get(run.name, run) != run:
            raise ConfigError(
                f"grid: two different runs would both be named {run.name!r} "
                "(the same corpus and language listed twice with different splits?)"
            )
        runs[run.name] = run
    return with_phase_one_runs(runs)


def phase_one_run(run: Run) -> Run:
    """Behaviour imitation's phase 1: text-only fine-tuning on the same data and seed (the grid's text_only run
    when it has one)."""
    return Run(
        run.corpus,
        run.source,
        run.target,
        "text_only",
        FIXED_BUDGETS["text_only"],
        run.seed,
        source_split=run.source_split,
        target_split=run.target_split,
        target_text=run.target_text,
        evaluated=False,
    )


def with_phase_one_runs(runs: dict[str, Run]) -> dict[str, Run]:
    """The grid's runs plus the phase-1 runs its imitation schemes continue from (trained, not evaluated)."""
    extra = {}
    for run in runs.values():
        if run.scheme in IMITATION_SCHEMES:
            first = phase_one_run(run)
            extra.setdefault(first.name, first)
    return {**extra, **runs}


def scheme_block(config: dict, run: Run) -> dict:
    """The run's scheme settings: config["schemes"][scheme] with its entry's scheme_settings over it."""
    return {**config["schemes"][run.scheme], **run.scheme_settings}


def prefix_of(run: Run) -> str | None:
    """The name of the job that trains the run's budget-free first phases (schemes.BUDGET_FREE_PHASES), shared by
    every budget of its seed and data: slurp-en_curriculum_phase1_s0. None: the run trains all of its phases.
    """
    phases = BUDGET_FREE_PHASES.get(run.scheme)
    if phases is None:
        return None
    data = run_data(run.corpus, run.source, run.target, run.target_text)
    return f"{data}_{run.scheme}_phase{phases}_s{run.seed}"


def run_scheme(config: dict, run: Run, phases: int | None = None) -> dict:
    """The run's scheme as its job is told it (the entry's scheme_settings applied); `phases`: only the first ones."""
    scheme = {"name": run.scheme, **scheme_block(config, run)}
    scheme["phases"] = scheme["phases"][:phases]
    return scheme


def expand_prefixes(config: dict, runs: dict[str, Run]) -> dict[str, Run]:
    """Prefix name -> the run it stands for: its data and seed with no speech budget (the first phases hold none)."""
    prefixes = {}
    for run in runs.values():
        name = prefix_of(run)
        if name is None:
            continue
        prefix, phases = replace(run, budget="0"), BUDGET_FREE_PHASES[run.scheme]
        # The rest of their settings (model, training, prompt, seed) is the same by the prefix's name.
        if name in prefixes and run_scheme(config, prefixes[name], phases) != run_scheme(config, prefix, phases):
            raise ConfigError(
                f"grid: runs sharing first phases {name!r} have different settings for them "
                "(scheme_settings of two entries for the same data?)"
            )
        prefixes[name] = prefix
    return prefixes


def testset_name(corpus: str, lang: str) -> str:
    return f"{corpus}-{lang}"


def run_testsets(run: Run) -> list[str]:
    """Test sets of a run: the test split of its (target) language."""
    return [testset_name(run.corpus, run.test_lang)]


def parse_testset(testset: str) -> tuple[str, str]:
    corpus, lang = testset.split("-", 1)
    return corpus, lang
