"""One optimizer step of fine-tuning: the loss over the step's answer tokens (1 and 2 gloo processes), one wait for
the device per step, collation in DataLoader workers."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from tiny_model import INSTRUCTION, UTTERANCES, tiny_assets  # noqa: F401 - tiny_assets: session fixture
from torch.utils._python_dispatch import TorchDispatchMode

from lalm_slu.model.batches import Collator
from lalm_slu.training.distributed import ProcessGroup, parallelize
from lalm_slu.model.loading import load_model_and_processor
from lalm_slu.data.records import read_manifest
from lalm_slu.data.slu_json import format_target
from lalm_slu.model.forward import AnswerLoss
from lalm_slu.training.step import accumulate_gradients
from lalm_slu.model.trainable import set_trainable
from lalm_slu.training.items import TrainItem, collate_micro_batch, to_chat_items

aten = torch.ops.aten


def text_items() -> list[TrainItem]:
    return [TrainItem(utt_id, "text", text, format_target(scenario, action, entities), None, None)
            for utt_id, text, scenario, action, entities in UTTERANCES]


def speech_items(manifest) -> list[TrainItem]:
    clips = read_manifest(manifest).set_index("id")
    return [TrainItem(item.id, "speech", item.text, item.target, clips.at[item.id, "audio"],
                      float(clips.at[item.id, "duration_s"])) for item in text_items()]


def sharded_root(model_dir, group: ProcessGroup, trainable: list[str]):
    torch.manual_seed(0)
    model, processor = load_model_and_processor(model_dir, dtype=torch.float32)
    set_trainable(model, trainable, freeze_token_embeddings=False)
    root = AnswerLoss(model)
    parallelize(root, model, torch.float32, group)
    return root, processor


def collate(items, ids, processor):
    audio_token_id = processor.tokenizer.convert_tokens_to_ids(processor.audio_token)
    return collate_micro_batch(items, ids, INSTRUCTION, Collator(processor), audio_token_id)


def gradients(root) -> dict[str, torch.Tensor]:
    """Every trainable parameter's whole gradient (a collective over the processes)."""
    return {name: p.grad.full_tensor().clone() for name, p in root.named_parameters() if p.grad is not None}


def step(root, micro_batches, group, touch_audio=False):
    root.zero_grad(set_to_none=True)
    return accumulate_gradients(root, micro_batches, None, group, touch_audio=touch_audio,
                                     trains_audio_tower=False, where="test")


# The short items (u3, u6) have few answer tokens, the long ones (u1, u4) many: per-batch means weigh them wrongly.
SHORT, LONG = [3, 6], [1, 4]


def test_two_micro_batches_of_unequal_tokens_give_the_gradient_of_one_batch_holding_both(tiny_assets):  # noqa: F811
    group = ProcessGroup("cpu")
    try:
        root, processor = sharded_root(tiny_assets.model_dir, group, ["language_model", "lm_head"])
        items = text_items()
        short, long = collate(items, SHORT, processor), collate(items, LONG, processor)
        assert short.answer_tokens * 1.5 < long.answer_tokens  # unequal enough for the weighting to matter
        loss_two, tokens_two = step(root, [short, long], group)
        two = gradients(root)
        loss_one, tokens_one = step(root, [collate(items, SHORT + LONG, processor)], group)
        one = gradients(root)
        assert tokens_two == tokens_one == short.answer_tokens + long.answer_tokens
        assert loss_two == pytest.approx(loss_one, rel=1e-5)
        for name in one:
            torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-7)
        # The old weighting (each micro-batch's token mean, weighted by its items) is measurably another gradient.
        step(root, [short], group)
        mean_short = gradients(root)
        step(root, [long], group)
        mean_long = gradients(root)
        item_weighted = {name: (mean_short[name] + mean_long[name]) / 2 for name in one}
        assert max((item_weighted[n] - one[n]).abs().max() for n in one) > 100 * max(
            (two[n] - one[n]).abs().max() for n in one)
    finally:
        group.close()


def _two_process_step(rank: int, port: int, model_dir, result_file) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    group = ProcessGroup("cpu")
    try:
        root, processor = sharded_root(model_dir, group, ["language_model", "lm_head"])
        items = text_items()
        loss, tokens = step(root, [collate(items, SHORT if rank == 0 else LONG, processor)], group)
        grads = gradients(root)
        if rank == 0:
            torch.save((loss, tokens, grads), result_file)
    finally:
        group.close()


@pytest.mark.slow
def test_two_processes_with_unequal_tokens_give_the_gradient_of_one_batch_holding_both(tiny_assets, tmp_path):  # noqa: F811
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    context = mp.get_context("spawn")
    result_file = tmp_path / "rank0.pt"
    processes = [context.Process(target=_two_process_step, args=(rank, port, tiny_assets.model_dir, result_file))
                 for rank in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=600)
        assert process.exitcode == 0
    loss_two, tokens_two, two = torch.load(result_file)

    group = ProcessGroup("cpu")
    try:
        root, processor = sharded_root(tiny_assets.model_dir, group, ["language_model", "lm_head"])
        loss_one, tokens_one = step(root, [collate(text_items(), SHORT + LONG, processor)], group)
        one = gradients(root)
    finally:
        group.close()
    assert tokens_two == tokens_one
    assert loss_two == pytest.approx(loss_one, rel=1e-5)
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-7)


class HostSyncs(TorchDispatchMode):
    """Counts the operations that make the host wait for a GPU: reading a value (item, bool, float), a boolean-mask
    index or nonzero (their output size depends on the data); `tolist` is counted by the test's patch."""

    SYNCING = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default,
               aten.is_nonzero.default}

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        boolean_index = func is aten.index.Tensor and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1])
        if func in self.SYNCING or boolean_index:
            self.calls.append(str(func))
        return func(*args, **kwargs)


@pytest.fixture
def count_tolist(monkeypatch):
    calls = []
    original = torch.Tensor.tolist

    def tolist(self):
        calls.append("tolist")
        return original(self)

    monkeypatch.setattr(torch.Tensor, "tolist", tolist)
    return calls


def test_the_counter_sees_the_waits_the_old_step_made():
    loss = torch.tensor(1.5)
    with HostSyncs() as syncs:
        bool(torch.isfinite(loss))
        float(loss)
        torch.arange(4)[torch.tensor([True, False, True, False])]
        int(torch.tensor([1, 1]).sum())
    assert len(syncs.calls) == 4


@pytest.mark.parametrize("scheme", ["text_llm", "speech_projector"])
def test_an_optimizer_step_waits_for_the_device_once(tiny_assets, count_tolist, scheme):  # noqa: F811
    """Two micro-batches, with speech through the trainable projector (audio path run in the step) or text
    through the LLM: one wait per optimizer step, at its end, for loss, tokens and the finite check together."""
    group = ProcessGroup("cpu")
    try:
        speech = scheme == "speech_projector"
        root, processor = sharded_root(tiny_assets.model_dir, group,
                                       ["multi_modal_projector"] if speech else ["language_model", "lm_head"])
        items = speech_items(tiny_assets.speech_manifest) if speech else text_items()
        micro_batches = [collate(items, [0, 1, 2], processor), collate(items, [3, 4], processor)]
        for _ in range(2):  # the second step as the first: nothing is waited for only once
            count_tolist.clear()
            with HostSyncs() as syncs:
                step(root, micro_batches, group, touch_audio=speech)
            assert syncs.calls == [] and count_tolist == ["tolist"]
    finally:
        group.close()


def test_a_micro_batch_knows_its_answer_tokens_audio_slots_and_frames_on_the_host(tiny_assets):  # noqa: F811
    _, processor = load_model_and_processor(tiny_assets.model_dir, dtype=torch.float32)
    items = speech_items(tiny_assets.speech_manifest)
    batch = collate(items, [0, 4], processor)
    labels = Collator(processor)(to_chat_items([items[0], items[4]], INSTRUCTION))["labels"]
    assert batch.answer_tokens == int((labels[:, 1:] != -100).sum())
    assert batch.right_padded and batch.items == 2 and batch.audio_keys == [items[0].audio_path, items[4].audio_path]
    audio_token_id = processor.tokenizer.convert_tokens_to_ids(processor.audio_token)
    slots = batch.tensors["audio_slots"]
    assert (batch.tensors["input_ids"].reshape(-1)[slots] == audio_token_id).all()
    assert len(slots) == int((batch.tensors["input_ids"] == audio_token_id).sum()) == len(batch.tensors["audio_frames_at"])


def test_collating_in_worker_processes_trains_the_same_weights_as_in_this_one(tiny_assets, tmp_path):  # noqa: F811
    from test_train import LLM_ONLY, make_settings, mixed_rows, weights, write_mixture

    from lalm_slu.training.finetune import finetune

    mixture = write_mixture(tmp_path / "mixture.parquet", tiny_assets.speech_manifest, mixed_rows())
    runs = {}
    for workers in (0, 2):
        settings = make_settings(tiny_assets.model_dir, [(1, 2, 2e-3, 0.2)], trainable=["multi_modal_projector",
                                 *LLM_ONLY], per_device_batch_size=2, global_batch_size=4, data_workers=workers)
        finetune(mixture, settings, tmp_path / f"w{workers}", tmp_path / f"w{workers}-work")
        runs[workers] = weights(tmp_path / f"w{workers}")
    assert all(torch.equal(runs[0][name], runs[2][name]) for name in runs[0])
    assert any(not torch.equal(runs[0][n], weights(tiny_assets.model_dir)[n]) for n in runs[0])
