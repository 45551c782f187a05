"""A speech budget as written in config, file names and run names: a percentage of the pool (`25`) or a
number of utterances (`10shot`), parsed and formatted here only. Planning turns a config value into its canonical
label once (`budget_label`); paths, run names and the `budget` wildcard carry that label, and a job reads it back
with `SpeechBudget.from_label`, which takes nothing else. Plain Python: the workflow plans with this."""

from __future__ import annotations

import re
from dataclasses import dataclass

_BUDGET_PATTERN = re.compile(r"^(?:(?P<percent>\d+)|(?P<shots>[1-9]\d*)shot)$")
# Exactly the canonical labels (no leading zeros, at most 100 %): the workflow's `budget` wildcard.
LABEL_PATTERN = "0|[1-9][0-9]?|100|[1-9][0-9]*shot"


@dataclass(frozen=True)
class SpeechBudget:
    """`percent` of the pool, or a fixed number of utterances (`shots`)."""

    amount: int
    unit: str  # "percent" or "shot"

    @classmethod
    def parse(cls, text: str | int) -> "SpeechBudget":
        match = _BUDGET_PATTERN.match(str(text).strip())
        if match is None:
            raise ValueError(f"speech budget {text!r} is neither a percentage 0-100 nor '<N>shot'")
        if match["percent"] is not None:
            percent = int(match["percent"])
            if percent > 100:
                raise ValueError(f"speech budget {text!r} is above 100 %")
            return cls(percent, "percent")
        return cls(int(match["shots"]), "shot")

    @classmethod
    def from_label(cls, label: str) -> "SpeechBudget":
        """The budget a canonical label names; any other spelling of it (`05`) is an error, since files are named
        by the label."""
        budget = cls.parse(label)
        if budget.label != label:
            raise ValueError(f"speech budget {label!r} is not a canonical label; it is written {budget.label!r}")
        return budget

    @property
    def label(self) -> str:
        """The budget as written in config, file names and run names: `25` or `10shot`."""
        return f"{self.amount}shot" if self.unit == "shot" else str(self.amount)

    def size(self, pool_size: int) -> int:
        """Utterances this budget allows from a pool of `pool_size`.

        Percentages round half up, but a non-zero percentage always grants at least one
        utterance (otherwise a 1 % budget of a small demo split would silently be text-only).
        """
        if self.unit == "shot":
            return min(self.amount, pool_size)
        if self.amount == 0 or pool_size == 0:
            return 0
        return max(1, (self.amount * pool_size + 50) // 100)


def budget_label(value: str | int) -> str:
    """The canonical label of a budget as config writes it (`25`, `"10shot"`)."""
    return SpeechBudget.parse(value).label
