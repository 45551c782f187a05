"""The shared loop: its schedule (warm-up then cosine, as transformers defines it, with an optional floor) and its
checkpoints (in the background, one kept, checked as they load, by steps, wall time or a stop signal), and the
work directory's lock."""

import json
import logging
import os
import re
import signal
import time

import numpy as np
import pandas as pd
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import get_cosine_schedule_with_warmup

from lalm_slu.training import checkpoints as checkpoint_io
from lalm_slu.training.checkpoints import DamagedCheckpoint, WorkDirectoryInUse, work_dir_lock
from lalm_slu.training.distributed import ProcessGroup
from lalm_slu.training.loop import (
    EXIT_RESUBMIT,
    Segment,
    StoppedForResubmission,
    TrainingLoop,
    parse_slurm_duration,
    slurm_time_left_s,
    warmup_steps,
)
from lalm_slu.training.step_log import LOSS_CSV, TENSORBOARD, TrainingMetrics


@pytest.mark.parametrize("total, ratio", [(1, 0.0), (7, 0.04), (120, 0.02), (300, 0.25)])
def test_a_segment_without_floor_follows_transformers_cosine_with_warmup(total, ratio):
    segment = Segment("phase 1", total, 5e-6, warmup_steps(total, ratio))
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=5e-6)
    reference = get_cosine_schedule_with_warmup(optimizer, segment.warmup_steps, total)
    expected = []
    for _ in range(total):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        reference.step()
    warmup = segment.warmup_steps
    # After warm-up the same curve; during it the trainer is one step ahead (its first step is 1/warm-up of the
    # peak, transformers' is 0).
    assert [segment.lr_at(step) for step in range(warmup, total)] == pytest.approx(expected[warmup:], rel=1e-12)
    assert [segment.lr_at(step) for step in range(warmup)] == pytest.approx(expected[1 : warmup + 1], rel=1e-12)


def test_a_floor_keeps_the_learning_rate_above_its_share_of_the_peak():
    segment = Segment("instructions", 100, 4e-4, 10, min_lr_ratio=0.1)
    rates = [segment.lr_at(step) for step in range(100)]
    assert rates[9] == pytest.approx(4e-4)  # the end of warm-up is the peak
    assert min(rates) >= 4e-5 and rates[-1] == pytest.approx(4e-5, rel=1e-2)
    assert all(a >= b for a, b in zip(rates[9:], rates[10:]))  # then only decays


SEGMENTS = [Segment("first", 4, 1e-2, 1), Segment("second", 3, 5e-3, 1)]


@pytest.fixture
def group():
    group = ProcessGroup("cpu")
    yield group
    group.close()


def new_loop(group, work_dir, every=100, minutes=None):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return TrainingLoop(model, optimizer, group, work_dir / "checkpoints", "run", max_grad_norm=1.0,
                        checkpoint_every=every, checkpoint_every_minutes=minutes)


def gradients_of(loop, signal_at=None):
    """A step on random data (the global RNG: a resumed run must have restored it) and its loss."""

    def gradients(segment_index, step):
        if (segment_index, step) == signal_at:
            os.kill(os.getpid(), signal.SIGUSR1)
        inputs = torch.randn(8, 16)
        loss = loop.root(inputs).pow(2).mean()
        loss.backward()
        return {"loss": float(loss.detach())}

    return gradients


def weights(loop):
    return {name: tensor.clone() for name, tensor in loop.root.state_dict().items()}


def checkpoints(work_dir):
    return sorted(p.name for p in (work_dir / "checkpoints").iterdir())


def test_only_the_newest_complete_checkpoint_is_kept_with_a_manifest_of_every_file(group, tmp_path):
    loop = new_loop(group, tmp_path, every=1)
    assert loop.run(SEGMENTS, gradients_of(loop))
    assert checkpoints(tmp_path) == ["step-00000007"]
    newest = tmp_path / "checkpoints" / "step-00000007"
    manifest = json.loads((newest / "manifest.json").read_text())
    assert sorted(manifest["files"]) == sorted(p.name for p in newest.iterdir() if p.name != "manifest.json")
    # The shards carry their items' sha256 inside; only the small files are hashed whole.
    assert [n for n, entry in manifest["files"].items() if "sha256" not in entry] == ["__0_0.distcp"]


def test_neither_save_nor_resume_reads_a_shard_through_a_separate_hash(group, tmp_path, monkeypatch):
    hashed = []
    real_sha256 = checkpoint_io._sha256
    monkeypatch.setattr(checkpoint_io, "_sha256", lambda path: hashed.append(path.name) or real_sha256(path))
    loop = new_loop(group, tmp_path, every=2)
    loop.run(SEGMENTS, gradients_of(loop), stop_after_steps=3)
    again = new_loop(group, tmp_path, every=2)
    assert again.resume() and again.position["global_step"] == 3
    assert hashed and not [name for name in hashed if name.endswith(".distcp")]


def test_a_resumed_run_ends_with_the_uninterrupted_weights(group, tmp_path):
    reference = new_loop(group, tmp_path / "reference")
    reference.run(SEGMENTS, gradients_of(reference))
    first = new_loop(group, tmp_path / "work", every=2)
    assert not first.run(SEGMENTS, gradients_of(first), stop_after_steps=5)
    second = new_loop(group, tmp_path / "work", every=2)
    assert second.resume()
    assert second.run(SEGMENTS, gradients_of(second))
    assert second.history == reference.history
    assert all(torch.equal(a, b) for a, b in zip(weights(reference).values(), weights(second).values()))


def test_a_stop_signal_checkpoints_at_the_step_boundary_and_exits_for_resubmission(group, tmp_path):
    reference = new_loop(group, tmp_path / "reference")
    reference.run(SEGMENTS, gradients_of(reference))
    loop = new_loop(group, tmp_path / "work")
    with pytest.raises(StoppedForResubmission) as stopped:
        loop.run(SEGMENTS, gradients_of(loop, signal_at=(0, 2)))
    assert stopped.value.code == EXIT_RESUBMIT != 0
    assert checkpoints(tmp_path / "work") == ["step-00000003"]  # complete: renamed into place
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # the handler is the loop's only while it runs
    again = new_loop(group, tmp_path / "work")
    assert again.resume()
    again.run(SEGMENTS, gradients_of(again))
    assert again.history == reference.history
    assert all(torch.equal(a, b) for a, b in zip(weights(reference).values(), weights(again).values()))


@pytest.mark.parametrize("minutes, expected", [(None, ["step-00000004"]), (1e-9, ["step-00000007"])])
def test_a_wall_time_interval_checkpoints_between_step_intervals(group, tmp_path, minutes, expected):
    loop = new_loop(group, tmp_path, every=100, minutes=minutes)
    loop.run(SEGMENTS, gradients_of(loop))
    # By steps only, the end of the first segment is the one checkpoint; with the interval elapsed, every step.
    assert checkpoints(tmp_path) == expected


def damage_and_resume(group, tmp_path, damage):
    loop = new_loop(group, tmp_path, every=1)
    loop.run(SEGMENTS, gradients_of(loop), stop_after_steps=2)
    checkpoint = tmp_path / "checkpoints" / "step-00000002"
    damage(checkpoint)
    return checkpoint, new_loop(group, tmp_path, every=1)


def test_snakemakes_marker_in_a_finished_directory_output_does_not_set_the_checkpoint_aside(group, tmp_path):
    # A prefix's checkpoint is a Snakemake directory() output: Snakemake adds its timestamp file once the job ends.
    checkpoint, loop = damage_and_resume(group, tmp_path, lambda c: (c / ".snakemake_timestamp").touch())
    assert loop.resume()
    assert loop.position["global_step"] == 2
    assert checkpoints(tmp_path) == ["step-00000002"]


def test_a_shard_changed_without_changing_size_fails_its_load_naming_the_checkpoint(group, tmp_path):
    def flip_a_byte(checkpoint):
        shard = checkpoint / "__0_0.distcp"
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0xFF
        shard.write_bytes(bytes(data))

    checkpoint, loop = damage_and_resume(group, tmp_path, flip_a_byte)
    with pytest.raises(DamagedCheckpoint, match=rf"checkpoint {checkpoint} is damaged \(process 0: a stored item "
                                                r"does not match its sha256\): moved to .*a re-run starts over"):
        loop.resume()
    assert checkpoints(tmp_path) == ["step-00000002.corrupt"]
    assert not new_loop(group, tmp_path).resume()  # the re-run starts over


@pytest.mark.parametrize("damage, problem", [
    (lambda c: (c / "rng-0.pt").write_bytes(b"\0" * (c / "rng-0.pt").stat().st_size),
     "rng-0.pt does not match its sha256"),
    (lambda c: (c / "__1_0.distcp").write_bytes(b"stray"), "__1_0.distcp is not in its manifest"),
    (lambda c: (c / "__0_0.distcp").write_bytes((c / "__0_0.distcp").read_bytes()[:-10]), "__0_0.distcp has"),
    (lambda c: (c / ".metadata").unlink(), ".metadata is missing"),
], ids=["rng_same_size", "extra_file", "truncated_shard", "missing_metadata"])
def test_any_damaged_or_extra_file_sets_the_checkpoint_aside_before_loading(group, tmp_path, caplog, damage,
                                                                              problem):
    checkpoint, loop = damage_and_resume(group, tmp_path, damage)
    before = weights(loop)
    with caplog.at_level("WARNING"):
        assert not loop.resume()  # starts over
    assert f"checkpoint {checkpoint} is damaged ({checkpoint / problem}" in caplog.text
    assert checkpoints(tmp_path) == ["step-00000002.corrupt"]
    assert all(torch.equal(a, b) for a, b in zip(before.values(), weights(loop).values()))  # nothing was loaded


def test_a_damaged_checkpoint_given_to_start_from_is_an_error_naming_it(group, tmp_path):
    checkpoint, loop = damage_and_resume(group, tmp_path, lambda c: (c / "stray.txt").write_text("x"))
    with pytest.raises(DamagedCheckpoint, match=rf"checkpoint {checkpoint} cannot be loaded: .*stray.txt is not in"):
        checkpoint_io.load_checkpoint(checkpoint, loop.root, loop.optimizer, group)


def test_a_second_run_on_a_locked_work_directory_fails_at_once_naming_the_holder(group, tmp_path):
    with work_dir_lock(tmp_path, group):
        with pytest.raises(WorkDirectoryInUse, match=rf"work directory {tmp_path} is in use by host .*, pid "
                                                     rf"{os.getpid()}, started 20"):
            with work_dir_lock(tmp_path, group):
                pass
    with work_dir_lock(tmp_path, group):  # released when the run ends
        pass


def _two_process_worker(rank: int, work_dir, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    torch.set_num_threads(1)
    group = ProcessGroup("cpu")
    # Rank 1's clock says a checkpoint is due at every step, rank 0's never: rank 0's decides. Rank 1 alone gets
    # the stop signal, in step 5: both stop there.
    loop = new_loop(group, work_dir, every=100, minutes=1e-9 if rank == 1 else None)
    saves, real_checkpoint = [], loop.checkpoint

    def recording_checkpoint(wait=False):
        saves.append(loop.position["global_step"])
        return real_checkpoint(wait)

    loop.checkpoint = recording_checkpoint
    try:
        loop.run(SEGMENTS, gradients_of(loop, signal_at=(1, 0) if rank == 1 else None))
        code = 0
    except StoppedForResubmission as stopped:
        code = stopped.code
    (work_dir / f"rank-{rank}.json").write_text(json.dumps({"saves": saves, "exit": code}))
    group.close()


@pytest.mark.slow
def test_every_process_takes_rank_0s_wall_time_decision_and_stops_on_any_ones_signal(tmp_path):
    import socket
    import time

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = torch.multiprocessing.spawn(_two_process_worker, args=(tmp_path, port), nprocs=2, join=False)
    deadline = time.monotonic() + 120  # processes that disagree would wait on each other
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the two processes did not finish: they took different decisions")
    outcomes = [json.loads((tmp_path / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    # The end of the first segment, then the signal's checkpoint after step 5, and the exit for resubmission.
    assert outcomes == [{"saves": [4, 5], "exit": EXIT_RESUBMIT}] * 2
    assert checkpoints(tmp_path) == ["step-00000005"]


@pytest.mark.parametrize("text, seconds", [("1-02:03:04", 93784), ("02:03:04", 7384), ("3:04", 184), ("0:00", 0),
                                           ("UNLIMITED", None), ("NOT_SET", None), ("", None)])
def test_slurm_durations_parse_as_squeue_prints_them(text, seconds):
    assert parse_slurm_duration(text) == seconds


def test_under_slurm_the_time_left_comes_from_squeue_for_this_job(tmp_path, monkeypatch):
    fake = tmp_path / "squeue"
    fake.write_text('#!/bin/sh\n[ "$*" = "-h -j 4242 -o %L" ] && echo 1:02:03\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert slurm_time_left_s() is None  # not a Slurm job
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert slurm_time_left_s() == 3723


def test_near_the_time_limit_the_loop_checkpoints_and_exits_for_resubmission(group, tmp_path):
    reference = new_loop(group, tmp_path / "reference")
    reference.run(SEGMENTS, gradients_of(reference))
    loop = new_loop(group, tmp_path / "work")
    loop.stop_at = time.monotonic()  # already reached: stop after the first step
    with pytest.raises(StoppedForResubmission) as stopped:
        loop.run(SEGMENTS, gradients_of(loop))
    assert stopped.value.code == EXIT_RESUBMIT
    assert checkpoints(tmp_path / "work") == ["step-00000001"]
    again = new_loop(group, tmp_path / "work")
    assert again.resume()
    again.run(SEGMENTS, gradients_of(again))
    assert again.history == reference.history
    assert all(torch.equal(a, b) for a, b in zip(weights(reference).values(), weights(again).values()))


def watched_loop(group, work_dir, every=100, log_every=2):
    loop = new_loop(group, work_dir, every=every)
    loop.metrics = TrainingMetrics(work_dir, log_every, is_main=True)
    return loop


def failing_at(loop, step_to_fail):
    """gradients_of, but the step `step_to_fail` (global, 1-based) fails as a killed job would stop."""
    inner = gradients_of(loop)

    def gradients(segment_index, step):
        if loop.position["global_step"] + 1 == step_to_fail:
            raise RuntimeError("killed")
        return inner(segment_index, step)

    return gradients


def test_each_step_has_its_grad_norm_as_clipping_measured_it(group, tmp_path, monkeypatch):
    loop = new_loop(group, tmp_path)
    loop.run(SEGMENTS, gradients_of(loop))
    reference = new_loop(group, tmp_path / "reference")
    norms = []
    real_clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_",
                        lambda *args: norms.append(float(real_clip(*args))) or torch.tensor(0.0))
    reference.run(SEGMENTS, gradients_of(reference))
    assert [record["grad_norm"] for record in loop.history] == [round(norm, 6) for norm in norms]
    assert len(set(norms)) == len(norms) and all(norm > 0 for norm in norms)


def test_the_work_loss_csv_grows_step_by_step_and_a_resume_drops_the_steps_past_its_checkpoint(group, tmp_path):
    reference = new_loop(group, tmp_path / "reference")
    reference.run(SEGMENTS, gradients_of(reference))
    first = watched_loop(group, tmp_path / "work", every=4)
    with pytest.raises(RuntimeError, match="killed"):
        first.run(SEGMENTS, failing_at(first, 7))
    # Killed at step 7: its six steps are on file, though the checkpoint holds four.
    assert pd.read_csv(tmp_path / "work" / LOSS_CSV)["step"].tolist() == [1, 2, 3, 4, 5, 6]
    second = watched_loop(group, tmp_path / "work", every=4)
    assert second.resume() and second.position["global_step"] == 4
    with pytest.raises(RuntimeError, match="killed"):
        second.run(SEGMENTS, failing_at(second, 5))
    assert pd.read_csv(tmp_path / "work" / LOSS_CSV)["step"].tolist() == [1, 2, 3, 4]
    third = watched_loop(group, tmp_path / "work", every=4)
    assert third.resume() and third.run(SEGMENTS, gradients_of(third))
    assert third.history == reference.history
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "work" / LOSS_CSV), pd.DataFrame(reference.history))


def test_a_log_line_every_n_steps_and_at_the_end_names_step_phase_loss_lr_grad_norm_and_eta(group, tmp_path,
                                                                                             caplog):
    loop = watched_loop(group, tmp_path, log_every=3)
    with caplog.at_level(logging.INFO, logger="lalm_slu.training.step_log"):
        loop.run(SEGMENTS, gradients_of(loop))
    lines = [r.getMessage() for r in caplog.records if r.name == "lalm_slu.training.step_log"]
    assert [line.split()[1] for line in lines] == ["3/7", "6/7", "7/7"]
    record = loop.history[5]
    assert re.fullmatch(rf"step 6/7 second loss {record['loss']:.4f} lr {record['lr']:.3e} "
                        rf"grad norm {record['grad_norm']:.3f} ETA 0:00:\d\d", lines[1])


def test_a_job_log_gets_the_step_lines_without_a_progress_bar_run_into_them(group, tmp_path, capsys):
    # stderr is a file here, as in a Snakemake or Slurm job: the bar shows only on a terminal once metrics log.
    watched = watched_loop(group, tmp_path / "watched")
    watched.run(SEGMENTS, gradients_of(watched))
    assert "it/s" not in capsys.readouterr().err
    plain = new_loop(group, tmp_path / "plain")  # no metrics (the demo model's pretraining): the bar stays
    plain.run(SEGMENTS, gradients_of(plain))
    assert "it/s" in capsys.readouterr().err


def test_tensorboard_holds_the_loss_csv_of_a_resumed_run_once_per_step(group, tmp_path):
    first = watched_loop(group, tmp_path, every=4)
    with pytest.raises(RuntimeError, match="killed"):
        first.run(SEGMENTS, failing_at(first, 7))
    second = watched_loop(group, tmp_path, every=4)
    assert second.resume() and second.run(SEGMENTS, gradients_of(second))
    events = EventAccumulator(str(tmp_path / TENSORBOARD))
    events.Reload()
    table = pd.read_csv(tmp_path / LOSS_CSV)
    for column, tag in (("loss", "train/loss"), ("lr", "train/learning_rate"), ("grad_norm", "train/grad_norm")):
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == table["step"].tolist()
        assert [s.value for s in scalars] == table[column].astype(np.float32).tolist()  # stored as float32
