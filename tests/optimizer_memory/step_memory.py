"""One process of a 2-process gloo fine-tuning step of a ~220 M-parameter Qwen2-Audio (the 7B's layout, narrower),
through the trainer's own parallelize and build_optimizer: how much host memory the first optimizer step adds
(AdamW's moments and the implementation's scratch), sampled every millisecond, against the memory plan.

    python -m torch.distributed.run --standalone --nproc-per-node 2 step_memory.py --optimizer foreach --out r.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import torch  # noqa: E402
from gpu_finetune_step import synthetic_batch  # noqa: E402
from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration  # noqa: E402

from lalm_slu.training.distributed import ProcessGroup, parallelize  # noqa: E402
from lalm_slu.model.memory_plan import Architecture, TrainingShape, plan_memory  # noqa: E402
from lalm_slu.config.settings import TrainingSettings  # noqa: E402
from lalm_slu.model.forward import AnswerLoss  # noqa: E402
from lalm_slu.training.optimizer import build_optimizer  # noqa: E402
from lalm_slu.model.trainable import set_trainable  # noqa: E402
from lalm_slu.config.files import architecture_path  # noqa: E402

ARCHITECTURE = architecture_path("Qwen2-Audio-7B-Instruct")
TEXT = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 12, "num_attention_heads": 16,
        "num_key_value_heads": 16, "vocab_size": 8192}
AUDIO = {"d_model": 64, "encoder_layers": 2, "encoder_attention_heads": 4, "encoder_ffn_dim": 128}
TRAINED = ("language_model", "lm_head")
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


class PeakSampler(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.running = rss(), True

    def run(self):
        while self.running:
            self.peak = max(self.peak, rss())
            time.sleep(0.001)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--optimizer", choices=["fused", "foreach", "forloop"], required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = json.loads(ARCHITECTURE.read_text())
    spec["text_config"].update(TEXT)
    spec["audio_config"].update(AUDIO)
    spec["audio_token_index"] = TEXT["vocab_size"] - 1
    config = Qwen2AudioConfig(**spec)
    group = ProcessGroup("cpu")
    torch.manual_seed(0)
    model = Qwen2AudioForConditionalGeneration._from_config(config, dtype=torch.float32)
    set_trainable(model, list(TRAINED))
    root = AnswerLoss(model)
    parallelize(root, model, torch.float32, group)
    params = [p for p in root.parameters() if p.requires_grad]
    training = TrainingSettings.from_dict({"optimizer": args.optimizer, "precision": "fp32"}, "test")
    optimizer = build_optimizer(params, 1e-5, training, torch.device("cpu"))
    root(synthetic_batch(config, 1, False, torch.Generator().manual_seed(group.rank))).backward()
    gc.collect()
    group.barrier()
    before, sampler = rss(), PeakSampler()
    sampler.start()
    optimizer.step()
    sampler.running = False
    sampler.join()
    added = group.gather(sampler.peak - before)
    shape = TrainingShape(TRAINED, precision="fp32", gpus=group.world_size, optimizer=args.optimizer)
    plan = plan_memory(Architecture.from_config(spec), shape)
    if group.is_main:
        args.out.write_text(json.dumps({
            "optimizer": args.optimizer, "trained_parameters": sum(p.numel() for p in params),
            "step_added_bytes": added, "planned_bytes": plan.optimizer + plan.step_scratch,
        }))
    group.close()


if __name__ == "__main__":
    main()
