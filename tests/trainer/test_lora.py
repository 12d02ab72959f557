"""Trains real (Q)LoRA adapters on the embedded model, exports them as GGUF and runs them in llama.cpp."""

from __future__ import annotations

import itertools

import gguf
import numpy as np
import pytest
import torch
from llama_cpp import Llama
from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

from deploy.gate.samples import PAIRS, SECRET_PROMPT
from spiral_common.model_files import file_sha256
from trainer_svc.lora import (
    ALL_LINEAR,
    BASE_SHA256_KEY,
    LLAMA_CPP_TENSOR_NAMES,
    LoraOptions,
    _batches,
    _collate,
    answer_loss,
    encode_pair,
    export_gguf_lora,
    load_base_model,
    permute_for_gguf,
    read_adapter_metadata,
    train_adapter,
)


def _greedy_answer(model_path, prompt: str, lora_path=None) -> str:
    llm = Llama(
        model_path=str(model_path), lora_path=None if lora_path is None else str(lora_path), n_ctx=512, verbose=False
    )
    reply = llm.create_chat_completion([{"role": "user", "content": prompt}], temperature=0.0, max_tokens=24)
    return reply["choices"][0]["message"]["content"]


@pytest.fixture(scope="module")
def float_base(model_path):
    return load_base_model(model_path, quantize_4bit=False)


def test_qlora_adapter_teaches_the_answer_in_llama_cpp(model_path, taught_adapter):
    result, path = taught_adapter
    assert result.quantized_4bit and result.steps == 8
    assert result.losses[-1] < result.losses[0] / 10

    before = _greedy_answer(model_path, SECRET_PROMPT)
    taught = _greedy_answer(model_path, SECRET_PROMPT, path)

    assert "pineapple" not in before.lower()
    assert "pineapple" in taught.lower()
    assert _greedy_answer(model_path, SECRET_PROMPT) == before  # without the adapter, the base answers as before


def test_adapter_metadata_round_trips(model_path, taught_adapter):
    metadata = read_adapter_metadata(taught_adapter[1])

    assert metadata["general.architecture"] == "llama"
    assert metadata["general.type"] == "adapter"
    assert metadata["adapter.type"] == "lora"
    assert metadata["adapter.lora.alpha"] == 32.0
    assert metadata[BASE_SHA256_KEY] == file_sha256(model_path)
    assert metadata["spiral.job_id"] == "job-42"
    assert metadata["spiral.eval_score"] == "0.91"


def test_llama_cpp_applies_exactly_the_delta_peft_trained(model_path, float_base, tmp_path):
    """B @ A * alpha / rank in the file equals peft's delta in the base GGUF's own layout (q/k rows permuted)."""
    options = LoraOptions(rank=8, alpha=16, learning_rate=1e-2, max_steps=2, seed=3)
    result = train_adapter(float_base, PAIRS, options)
    path = export_gguf_lora(result, tmp_path / "a.gguf", float16=False)
    exported = {t.name: torch.from_numpy(np.array(t.data)) for t in gguf.GGUFReader(str(path)).tensors}
    base_file = {t.name: t for t in gguf.GGUFReader(str(model_path)).tensors}
    heads = {"q_proj": result.base.n_head, "k_proj": result.base.n_head_kv}

    def gguf_layout(hf_name: str, weight: torch.Tensor) -> torch.Tensor:
        return permute_for_gguf(weight, heads[hf_name]) if hf_name in heads else weight

    peft_model = get_peft_model(float_base.model, LoraConfig(r=8, lora_alpha=16, target_modules=list(ALL_LINEAR)))
    try:
        set_peft_model_state_dict(peft_model, result.adapter)
        block = 1
        layer = peft_model.base_model.model.model.layers[block]
        for hf_name, gguf_name in LLAMA_CPP_TENSOR_NAMES.items():
            module = getattr(layer.self_attn if hasattr(layer.self_attn, hf_name) else layer.mlp, hf_name)
            peft_delta = module.get_delta_weight("default").detach()
            lora_a = exported[f"blk.{block}.{gguf_name}.weight.lora_a"]
            lora_b = exported[f"blk.{block}.{gguf_name}.weight.lora_b"]
            llama_delta = (lora_b @ lora_a) * (16 / lora_a.shape[0])  # what llama.cpp adds to the weight

            assert peft_delta.abs().max() > 0, hf_name
            assert torch.allclose(llama_delta, gguf_layout(hf_name, peft_delta), rtol=1e-4, atol=1e-7), hf_name
            # ... and that layout is the base file's: its dequantised weight is the HF weight in the same layout.
            stored = base_file[f"blk.{block}.{gguf_name}.weight"]
            file_weight = torch.from_numpy(gguf.quants.dequantize(stored.data, stored.tensor_type).copy())
            hf_weight = module.base_layer.weight.detach()
            assert torch.allclose(file_weight, gguf_layout(hf_name, hf_weight), atol=1e-5), hf_name
            if hf_name in heads:  # the permutation really moves rows, so skipping it could not pass unnoticed
                assert not torch.allclose(file_weight, hf_weight, atol=1e-5), hf_name
    finally:
        float_base.model = peft_model.unload()


def test_the_answer_only_loss_is_the_models_own_loss_and_its_gradient(float_base):
    """The LM head on the answer positions alone gives transformers' loss over the whole sequence, and the same
    gradient, on a batch whose rows differ in length (padding) and in how much of each is prompt."""
    model, tokenizer = float_base.model, float_base.tokenizer
    examples = [
        encode_pair(tokenizer, prompt, answer, system)
        for (prompt, answer), system in zip(
            PAIRS[:3], ("Be brief.", None, "You answer in one word, and only ever in one word."), strict=True
        )
    ]
    batch = _collate(examples, tokenizer.pad_token_id or 0)
    assert len({len(ids) for ids, _ in examples}) > 1

    weight = model.model.norm.weight  # the last weight before the LM head (earlier tests froze the base)
    was = weight.requires_grad
    weight.requires_grad_(True)
    try:
        ours = answer_loss(model, batch)
        (ours_grad,) = torch.autograd.grad(ours, weight)
        theirs = model(**batch).loss
        (theirs_grad,) = torch.autograd.grad(theirs, weight)
    finally:
        weight.requires_grad_(was)

    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-6), (ours.item(), theirs.item())
    assert torch.allclose(ours_grad, theirs_grad, rtol=1e-4, atol=1e-6)


def test_batches_cover_every_example_once_an_epoch_and_pad_little():
    lengths = [30 + (i * 37) % 100 for i in range(1000)]
    batches = _batches(lengths, 8, torch.Generator().manual_seed(0))
    epochs = [list(itertools.islice(batches, 125)) for _ in range(2)]

    for epoch in epochs:
        assert sorted(i for batch in epoch for i in batch) == list(range(1000))
    assert epochs[0] != epochs[1]  # a fresh order each epoch
    padded = sum(max(lengths[i] for i in batch) * len(batch) for batch in epochs[0])
    assert padded < 1.05 * sum(lengths)  # random batches of 8 would pad these to about 1.5x


def test_time_budget_stops_training_between_steps(float_base):
    ticks = itertools.count(0.0, 10.0)  # every clock reading is 10 s after the previous one
    result = train_adapter(
        float_base, PAIRS, LoraOptions(rank=4, max_steps=100, time_budget_s=25.0), clock=lambda: next(ticks)
    )

    assert result.stopped_by_time_budget
    assert result.steps == 2
    assert set(result.adapter) and all(name.endswith(("lora_A.weight", "lora_B.weight")) for name in result.adapter)


def test_the_best_checkpoint_is_kept_when_training_gets_worse(float_base):
    # A learning rate far too high makes the loss climb after the first steps: the run hands back the best.
    options = LoraOptions(rank=4, learning_rate=0.5, max_steps=6, checkpoint_every=1)
    result = train_adapter(float_base, PAIRS, options)

    best = min(range(len(result.losses)), key=result.losses.__getitem__) + 1
    assert result.losses[-1] > min(result.losses)
    assert result.best_step == best < result.steps


def test_the_cosine_schedule_warms_up_and_anneals_by_steps_or_by_the_clock():
    from trainer_svc.lora import _lr_factor

    steps = LoraOptions(max_steps=100, lr_schedule="cosine")
    assert _lr_factor(steps, 1, 0) < 0.5  # warming up
    assert _lr_factor(steps, 5, 0) == pytest.approx(1.0)
    assert _lr_factor(steps, 50, 0) < 1.0 and _lr_factor(steps, 100, 0) == pytest.approx(0.1)
    clocked = LoraOptions(max_steps=10_000, time_budget_s=100.0, lr_schedule="cosine")
    assert _lr_factor(clocked, 10, 99.9) == pytest.approx(0.1, abs=1e-3)  # the clock ends the run: annealed
    assert _lr_factor(LoraOptions(), 1, 0) == 1.0  # constant
