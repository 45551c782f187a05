"""Wall seconds per stage of one job (start-up, model load, tokenization, training steps, decoding, ...), logged by
the CLI as one line, `stage seconds: {...}`, that benchmarks/demo_stages.py reads back from the job logs beside
Snakemake's per-job benchmark files. Plain Python: the CLI imports it before any command."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager

PREFIX = "stage seconds: "


class Stages:
    """Seconds spent per named stage; a stage entered several times adds up."""

    def __init__(self):
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def report(self) -> dict[str, float]:
        """The stages, `start_up` (what no stage claimed: imports, argument parsing) and the process `total`."""
        total = time.perf_counter() - self.started
        return {
            "start_up": round(total - sum(self.seconds.values()), 2),
            **{name: round(value, 2) for name, value in self.seconds.items()},
            "total": round(total, 2),
        }

    def line(self) -> str:
        return PREFIX + json.dumps(self.report())


# The running process's stages: the CLI starts the clock, the commands' code adds stages.
STAGES = Stages()
