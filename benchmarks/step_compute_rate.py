"""How close a demo fine-tuning step runs to what one CPU core can compute: the FLOPs of a text step in the
trainer's batches (torch's FlopCounterMode over forward, backward and AdamW), divided by its time, beside the
core's rate on one large fp32 matrix product. Near 1, the steps are compute-bound: only fewer FLOPs (fewer
items, epochs or tokens) or a cheaper precision make the demo's training faster.
Writes benchmarks/results/step_compute_rate.json.
"""

from __future__ import annotations

import argparse
import statistics
import time

from _common import DEMO_TRAINING, chat_items, model_path, optimizer_step, scratch_dir, set_threads, slurp_sentences, \
    write_result
from finetune_step import TRAINABLE, trainer_batches


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(2):
        a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e9


def main() -> None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from lalm_slu.model.batches import Collator
    from lalm_slu.model.loading import load_model_and_processor
    from lalm_slu.model.trainable import set_trainable

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    threads = set_threads(args.threads)
    path, model_kind = model_path(scratch_dir())
    utterances = slurp_sentences(args.batch_size * (args.steps + 1))
    items = chat_items(utterances, "text")
    batches = trainer_batches(utterances, "text", args.batch_size, path)[: args.steps]
    model, processor = load_model_and_processor(path)
    set_trainable(model, TRAINABLE, DEMO_TRAINING.freeze_token_embeddings)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    collator = Collator(processor)
    collated = [collator([items[i] for i in indices]) for indices in batches]
    optimizer_step(model, optimizer, collated[0], params, True)  # warm-up
    rates, seconds = [], []
    for batch in collated:
        with FlopCounterMode(display=False) as counter:
            optimizer_step(model, optimizer, batch, params, True)
        started = time.perf_counter()
        optimizer_step(model, optimizer, batch, params, True)
        elapsed = time.perf_counter() - started
        seconds.append(elapsed)
        rates.append(counter.get_total_flops() / elapsed / 1e9)
    step_rate = statistics.median(rates)
    peak = max(matmul_gflops() for _ in range(3))
    write_result(
        "step_compute_rate",
        {"model": model_kind, "batch_size": args.batch_size, "steps": len(collated), "threads": threads,
         "trainable": TRAINABLE, "batching": "the trainer's (grouped by sequence length), text items, fp32"},
        {"step_median_s": round(statistics.median(seconds), 4),
         "step_gflops_per_s": round(step_rate, 1),
         "matmul_2048_gflops_per_s": round(peak, 1),
         "step_share_of_matmul_rate": round(step_rate / peak, 3)},
        {},
    )


if __name__ == "__main__":
    main()
