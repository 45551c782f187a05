"""Speech/text alignment of a model, measured on the SLURP en dev split (never on test, which stays for the demo's
findings): the model is fine-tuned text-only on the demo's SLURP train text (the demo's text_only run, with its
settings), then the dev split is decoded from speech, from its gold transcripts (text) and from the base model's
own transcripts (cascade), and each is scored with the SLURP metrics.

Reported: intent accuracy and SLU-F1 per input, speech/text ratios, end to end (speech) minus cascade, the
transcription WER, the wall time of each step. Targets: speech/text intent-accuracy ratio ≥ 0.80, end to end within
3 points of the cascade.

Inputs are the demo's prepared manifests (results/...); missing ones are made by the workflow's own rules
(`snakemake <paths>`). Everything else goes under --work-dir. Writes benchmarks/results/dev_alignment.json.
Run: `make dev-alignment` (or `python benchmarks/dev_alignment.py --model DIR --seed N`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import REPO, set_threads, write_result

from lalm_slu.config.layered import load_config
from lalm_slu.planning import paths
from lalm_slu.planning.grid import expand_grid
from lalm_slu.planning.job_arguments import cascade_settings, decode_settings, run_settings

log = logging.getLogger("dev_alignment")

CORPUS, LANG = "slurp", "en"
INPUTS = ("speech", "text", "cascade")
# What the alignment targets judge: intent accuracy and SLU-F1.
METRICS = ("intent_accuracy", "slu_f1")


def alignment_summary(scores: dict[str, dict[str, float]]) -> dict:
    """From {input: {metric: value}} (speech, text, cascade): each metric's speech/text ratio and end to end
    (speech) minus cascade, in points (metrics are fractions)."""
    summary = {}
    for metric in METRICS:
        text, speech, cascade = scores["text"][metric], scores["speech"][metric], scores["cascade"][metric]
        summary[f"speech_text_ratio_{metric}"] = round(speech / text, 4) if text else None
        summary[f"end_to_end_minus_cascade_{metric}_points"] = round(100 * (speech - cascade), 2)
    return summary


def text_only_run(config: dict, seed: int):
    """The demo grid's SLURP en text_only run, at `seed` (its scheme settings as the grid gives them)."""
    for run in expand_grid(config).values():
        if (run.corpus, run.source, run.target, run.scheme) == (CORPUS, LANG, None, "text_only"):
            return dataclasses.replace(run, seed=seed)
    raise SystemExit(f"config.yaml's grid has no {CORPUS} {LANG} text_only run")


def make_missing(files: list[str], cores: int) -> None:
    """Make the prepared files that are missing with the workflow's own rules."""
    missing = [path for path in files if not (REPO / path).exists()]
    if missing:
        log.info("making %s with the workflow's rules", missing)
        subprocess.run(["snakemake", "--cores", str(cores), *missing], cwd=REPO, check=True)


class Steps:
    """Times each step and logs it."""

    def __init__(self):
        self.wall_s: dict[str, float] = {}

    def run(self, name: str, function, *args, **kwargs):
        log.info("%s ...", name)
        started = time.time()
        result = function(*args, **kwargs)
        self.wall_s[name] = round(time.time() - started, 1)
        log.info("%s: %.1f s", name, self.wall_s[name])
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/demo-qwen2-audio", help="base model directory")
    parser.add_argument("--seed", type=int, default=0, help="of the mixture order and the training")
    parser.add_argument("--work-dir", default="work/dev_alignment", help="mixture, fine-tuned model, predictions")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--cores", type=int, default=2, help="for the snakemake jobs that make missing inputs")
    parser.add_argument("--result-name", default="dev_alignment",
                        help="benchmarks/results/<name>.json (another name keeps the shipped model's result)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    threads = set_threads(args.threads)

    from lalm_slu.data.mixture_files import write_training_mixture
    from lalm_slu.evaluation.cascade import transcribe_test_set
    from lalm_slu.evaluation.decode import decode
    from lalm_slu.evaluation.scoring import score_report
    from lalm_slu.training.finetune import finetune
    from lalm_slu.training.run_identity import model_identity

    config = load_config(workdir=REPO)
    config["model"]["path"] = args.model
    run = text_only_run(config, args.seed)
    mixture_inputs = paths.mixture_inputs(config, run)
    dev_text = paths.manifest_path(CORPUS, LANG, "dev")
    dev_speech = paths.speech_manifest_path(CORPUS, LANG, "dev")
    make_missing([*mixture_inputs.values(), dev_text, dev_speech], args.cores)

    work = REPO / args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    mixture, model_dir = work / "mixture.parquet", work / "model"
    for previous in (model_dir, work / "checkpoints"):  # train afresh, so that the timing is the whole fine-tuning
        shutil.rmtree(previous, ignore_errors=True)
    cascade_manifest, cascade_wer = work / "cascade.parquet", work / "cascade.wer.json"
    predictions = {modality: work / f"{modality}.jsonl" for modality in INPUTS}
    steps = Steps()

    items = steps.run(
        "mixture", write_training_mixture, "text_only",
        (REPO / mixture_inputs["text"], REPO / mixture_inputs["speech"], REPO / mixture_inputs["speech_ids"]),
        run.seed, str(mixture))
    trained = steps.run("finetune", finetune, mixture, run_settings(config, run), model_dir, work / "checkpoints")
    transcription = steps.run("transcribe", transcribe_test_set, args.model, str(REPO / dev_speech),
                              json.loads(cascade_settings(config)), str(cascade_manifest), str(cascade_wer))
    manifests = {"speech": REPO / dev_speech, "text": REPO / dev_text, "cascade": cascade_manifest}
    decoded = steps.run("decode", decode, str(model_dir),
                        [(modality, str(manifests[modality]), str(predictions[modality])) for modality in INPUTS],
                        json.loads(decode_settings(config)))
    bootstrap = config["scoring"]["bootstrap"]
    scored = steps.run("score", lambda: {
        modality: json.loads(score_report(REPO / dev_text, predictions[modality], bootstrap_resamples=bootstrap,
                                          as_json=True))
        for modality in INPUTS})

    scores = {m: {metric: scored[m]["metrics"][metric]["value"] for metric in METRICS} for m in INPUTS}
    measurements = {
        "scores": {m: {metric: round(value, 4) for metric, value in scores[m].items()} for m in INPUTS},
        "confidence_intervals_95": {m: {metric: [round(scored[m]["metrics"][metric][bound], 4)
                                                 for bound in ("ci_low", "ci_high")] for metric in METRICS}
                                    for m in INPUTS},
        **alignment_summary(scores),
        "transcription_wer": transcription["wer"],
        "parse_failures": {m: decoded[m]["parse_failures"] for m in INPUTS},
        "optimizer_steps": trained["optimizer_steps"],
        "final_train_loss": trained["final_loss"],
        "wall_time_s": {**steps.wall_s, "total": round(sum(steps.wall_s.values()), 1)},
    }
    parameters = {
        "model": args.model,
        "model_identity": model_identity(str(REPO / args.model)),
        "seed": args.seed,
        "run": run.name,
        "train_items": len(items),
        "dev_utterances": scored["text"]["counts"]["n_gold"],
        "threads": threads,
        "bootstrap_resamples": bootstrap,
    }
    targets = {"speech_text_ratio_intent_accuracy": ">= 0.80",
               "end_to_end_minus_cascade_intent_accuracy_points": ">= -3"}
    write_result(args.result_name, parameters, measurements, targets)
    print(table(measurements))


def table(measurements: dict) -> str:
    lines = ["input     intent_acc  slu_f1", "--------  ----------  ------"]
    for modality in INPUTS:
        values = measurements["scores"][modality]
        lines.append(f"{modality:<8}  {values['intent_accuracy']:>10.4f}  {values['slu_f1']:>6.4f}")
    lines.append(f"speech/text intent-acc ratio {measurements['speech_text_ratio_intent_accuracy']}, "
                 f"end to end - cascade {measurements['end_to_end_minus_cascade_intent_accuracy_points']} points, "
                 f"transcription WER {measurements['transcription_wer']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
