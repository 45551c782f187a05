"""How long a checkpoint blocks training, and how many bytes a save and a resume read, before and after background
checkpoints with in-line sha256: on CPU, gloo, 1 and 2 processes (FSDP2), a model of ~300 MB of trained state.

    python benchmarks/checkpoint_save.py [--width 2048] [--layers 6] [--repeats 3]

Per process count and way of saving, the seconds training waits (`blocked_s`) and the seconds until the
checkpoint is complete (`complete_s`):
- `previous`: what the trainer did before: `dcp.save` (one thread, an fsync per file), then every process re-reads
  its files to sha256 them for the manifest.
- `sync`: the current save, waited for at once (as the final checkpoint of a job that outputs one).
- `async`: the current save as the loop takes it: training waits only while the state is copied to CPU memory.
Bytes read (all processes, /proc/self/io rchar) at a save and at a resume: the previous resume hashed every file,
then loaded it; the current one checks sizes and small files, and checks each item's sha256 as it loads.
Writes benchmarks/results/checkpoint_save.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402
import torch.distributed.checkpoint as dcp  # noqa: E402
from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict  # noqa: E402
from torch.distributed.fsdp import fully_shard  # noqa: E402

from lalm_slu.training import checkpoints  # noqa: E402
from lalm_slu.training.checkpoints import save_checkpoint  # noqa: E402
from lalm_slu.training.distributed import ProcessGroup  # noqa: E402


def bytes_read() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError("no rchar in /proc/self/io")


def build(group: ProcessGroup, width: int, layers: int):
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])
    for layer in model:
        fully_shard(layer, mesh=group.mesh)
    fully_shard(model, mesh=group.mesh)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model(torch.randn(4, width)).sum().backward()
    optimizer.step()  # the two AdamW moments exist
    return model, optimizer


def previous_save(root_dir: Path, step: int, model, optimizer, group: ProcessGroup) -> None:
    """The trainer's save before background checkpoints: synchronous, then a re-read of every file for sha256."""
    tmp = root_dir / f"previous-{step}"
    if group.is_main:
        tmp.mkdir(parents=True)
    group.barrier()
    dcp.save({"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)},
             checkpoint_id=str(tmp))
    group.barrier()
    own = [p for p in sorted(tmp.iterdir()) if p.name.startswith(f"__{group.rank}_")]
    group.gather({p.name: checkpoints._sha256(p) for p in own})
    group.barrier()


def worker(width: int, layers: int, repeats: int, out: Path) -> None:
    group = ProcessGroup("cpu")
    model, optimizer = build(group, width, layers)
    root_dir = Path(group.broadcast(tempfile.mkdtemp(prefix="checkpoint-save-", dir=os.environ.get("TMPDIR"))))
    state = {"fingerprint": "benchmark", "position": {}, "history": []}
    modes = ("previous", "sync", "async")
    times: dict[str, dict[str, list[float]]] = {m: {"blocked_s": [], "complete_s": []} for m in modes}
    read: dict[str, int] = {}
    step = 0
    for _ in range(repeats):
        for mode in modes:
            step += 1
            group.barrier()
            before, started = bytes_read(), time.perf_counter()
            if mode == "previous":
                previous_save(root_dir, step, model, optimizer, group)
                blocked = time.perf_counter() - started
            else:
                pending = save_checkpoint(root_dir, step, model, optimizer, state, group)
                if mode == "async":
                    blocked = time.perf_counter() - started
                pending.complete()
                if mode == "sync":
                    blocked = time.perf_counter() - started
            group.barrier()
            times[mode]["blocked_s"].append(blocked)
            times[mode]["complete_s"].append(time.perf_counter() - started)
            read[f"save_{mode}"] = int(group.all_sum(bytes_read() - before))
    checkpoint = root_dir / f"step-{step:08d}"
    previous = root_dir / f"previous-{step - 2}"
    size = sum(p.stat().st_size for p in checkpoint.iterdir())
    # Resumes: the previous one hashed every file of the checkpoint, then loaded it; the current one loads it.
    group.barrier()
    before = bytes_read()
    mine = [p for i, p in enumerate(sorted(previous.iterdir())) if i % group.world_size == group.rank]
    for path in mine:
        checkpoints._sha256(path)
    dcp.load({"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)},
             checkpoint_id=str(previous))
    read["resume_previous"] = int(group.all_sum(bytes_read() - before))
    group.barrier()
    before = bytes_read()
    assert checkpoints._checkpoint_problem(checkpoint, "benchmark", group) is None
    checkpoints._load(checkpoint, model, optimizer, group)
    read["resume_current"] = int(group.all_sum(bytes_read() - before))
    if group.is_main:
        shutil.rmtree(root_dir, ignore_errors=True)
        out.write_text(json.dumps({
            "processes": group.world_size,
            "checkpoint_bytes": size,
            "median": {m: {k: round(statistics.median(v), 3) for k, v in t.items()} for m, t in times.items()},
            "runs": {m: {k: [round(x, 3) for x in v] for k, v in t.items()} for m, t in times.items()},
            "bytes_read": read,
        }))
    group.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.width, args.layers, args.repeats, args.worker)
        return
    from _common import write_result

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        for processes in args.processes:
            out = Path(scratch) / f"{processes}.json"
            launcher = [sys.executable] if processes == 1 else [
                sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]
            subprocess.run([*launcher, __file__, "--width", str(args.width), "--layers", str(args.layers),
                            "--repeats", str(args.repeats), "--worker", str(out)], env=env, check=True)
            results.append(json.loads(out.read_text()))
    trained = args.layers * (args.width * args.width + args.width)
    write_result(
        "checkpoint_save",
        {"trained_parameters": trained, "trained_state_mb": round(trained * 12 / 1e6, 1), "repeats": args.repeats,
         "device": "cpu (gloo, FSDP2)", "threads_per_process": 1,
         "disk": "local ext4, fsync per file (sync_files=True)"},
        {f"{r['processes']}_process{'es' * (r['processes'] > 1)}": r for r in results},
        {"async_blocked_s": "well under sync_blocked_s (training waits only for the copy to CPU memory)",
         "save_current bytes read": "~0 of the shards (no re-read)",
         "resume_current bytes read": "~1x the checkpoint (its load) instead of ~2x"},
    )


if __name__ == "__main__":
    main()
