#!/usr/bin/env bash
# The GPU benchmarks in one short run (under 10 minutes) on one GPU machine (H100 or H200):
#   1. benchmarks/gpu_finetune_step.py: fine-tuning steps of the 7B architecture (src/lalm_slu/config/architectures/
#      Qwen2-Audio-7B-Instruct.json, random weights) on 1 GPU, with as many LLM layers as the memory plan fits on
#      the card (all 32 where they fit); should that run fail, once more with 12 layers.
#   2. benchmarks/decode_throughput.py: decoding throughput of the shipped demo model.
# Installs and downloads nothing: it needs this repository and a Python environment holding the project's pinned
# packages with a CUDA build of torch ($PYTHON, else .venv/bin/python, else python3). Results and logs go to $OUT
# if set, else benchmarks/results/.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
RESULTS=${OUT:-benchmarks/results}
mkdir -p "$RESULTS"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

"$PYTHON" - <<'EOF'
import importlib.util
import sys

missing = [name for name in ("torch", "transformers", "snakemake", "soundfile", "soxr", "espeakng_loader", "pandas")
           if importlib.util.find_spec(name) is None]
if missing:
    sys.exit(f"{sys.executable} lacks {missing}: use the project's environment (PYTHON=...)")
import torch

if not torch.cuda.is_available():
    sys.exit(f"no GPU visible to torch {torch.__version__}")
print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
EOF
nvidia-smi > "$RESULTS/nvidia-smi.txt" 2>&1 || true

finetune() {
    timeout "$1" "$PYTHON" benchmarks/gpu_finetune_step.py --llm-layers "$2" \
        --out "$RESULTS/gpu_finetune_step.json" > "$RESULTS/gpu_finetune_step-$2.log" 2>&1
}
# Worst case 270 + 120 + 180 s: within a 10-minute lease.
if ! finetune 270 fit; then
    echo "gpu_finetune_step failed at the planned layer count (see $RESULTS/gpu_finetune_step-fit.log); 12 layers"
    finetune 120 12 || echo "gpu_finetune_step failed at 12 layers too: $RESULTS/gpu_finetune_step-12.log"
fi

# decode_throughput writes its own result file under benchmarks/results; copied next to the others.
if timeout 180 "$PYTHON" benchmarks/decode_throughput.py > "$RESULTS/decode_throughput.log" 2>&1; then
    [[ "$RESULTS" -ef benchmarks/results ]] || cp benchmarks/results/decode_throughput.json "$RESULTS/"
else
    echo "decode_throughput failed or ran out of time: $RESULTS/decode_throughput.log"
fi
ls -l "$RESULTS"
