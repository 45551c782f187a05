"""A resumable stand-in for fine-tuning: one checkpoint per step, written atomically to a work dir.

Every start appends {"slurm_job_id", "start_step"} to <work-dir>/attempts.jsonl, so a test can see
that a resubmitted job resumed where the cancelled one stopped.
"""

import argparse
import json
import os
import time
from pathlib import Path


def train_step(weight: int, step: int) -> int:
    return (weight * 31 + step) % 1_000_003


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--step-seconds", type=float, default=0.0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    args.work_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = args.work_dir / "checkpoint.json"
    if checkpoint.exists():
        state = json.loads(checkpoint.read_text())
    else:
        state = {"step": 0, "weight": sum(int(line) for line in args.data.read_text().split())}
    with open(args.work_dir / "attempts.jsonl", "a") as attempts:
        attempts.write(json.dumps({"slurm_job_id": os.environ.get("SLURM_JOB_ID"), "start_step": state["step"]}) + "\n")

    for step in range(state["step"], args.steps):
        time.sleep(args.step_seconds)
        state = {"step": step + 1, "weight": train_step(state["weight"], step)}
        partial = checkpoint.with_suffix(".tmp")
        partial.write_text(json.dumps(state))
        os.replace(partial, checkpoint)  # a kill mid-write leaves the previous checkpoint intact

    args.out.write_text(json.dumps({"steps": args.steps, "weight": state["weight"]}))


if __name__ == "__main__":
    main()
