"""A speech budget as written in config, file names and run names: a percentage of the pool (`25`) or a
number of utterances (`10shot`), parsed here only. Plain Python: the workflow parses budgets at planning time."""

from __future__ import annotations

import re
from dataclasses import dataclass

_BUDGET_PATTERN = re.compile(r"^(?:(?P<percent>\d+)|(?P<shots>[1-9]\d*)shot)$")


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
