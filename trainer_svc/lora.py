"""LoRA / QLoRA fine-tuning of the GGUF base model, and export of the adapter as a GGUF LoRA that llama.cpp loads."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

from head_svc.model_files import file_sha256
from spiral_common.errors import FailedPrecondition, InvalidArgument

# HF module name -> llama.cpp tensor name; `blk.N.<name>.weight.lora_a|lora_b` in the adapter file.
LLAMA_CPP_TENSOR_NAMES = {
    "q_proj": "attn_q",
    "k_proj": "attn_k",
    "v_proj": "attn_v",
    "o_proj": "attn_output",
    "gate_proj": "ffn_gate",
    "up_proj": "ffn_up",
    "down_proj": "ffn_down",
}
ALL_LINEAR = tuple(LLAMA_CPP_TENSOR_NAMES)
BASE_SHA256_KEY = "spiral.base_model_sha256"
EXTRA_KEY_PREFIX = "spiral."
IGNORE_INDEX = -100  # label value that torch's cross-entropy skips: prompt and padding tokens

_ADAPTER_KEY = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")

ProgressCallback = Callable[[int, float], None]


@dataclass(frozen=True)
class BaseModelInfo:
    """What the exporter needs to know about the base GGUF the adapter was trained on."""

    path: Path
    sha256: str
    architecture: str
    n_head: int
    n_head_kv: int


@dataclass
class BaseModel:
    """The base model dequantised into torch (optionally re-quantised to NF4) and its tokenizer."""

    model: Any  # transformers.PreTrainedModel; typed loosely so importing this module stays cheap
    tokenizer: Any
    info: BaseModelInfo
    quantized_4bit: bool


@dataclass
class TrainResult:
    """A trained adapter held in memory (peft state-dict naming) and how the run went."""

    adapter: dict[str, torch.Tensor]
    base: BaseModelInfo
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    quantized_4bit: bool
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    train_seconds: float = 0.0
    stopped_by_time_budget: bool = False


def load_base_model(model_path: Path, *, quantize_4bit: bool = True) -> BaseModel:
    """Loads a llama-architecture GGUF through transformers (which dequantises it), never touching the network."""
    # huggingface_hub reads these once, at import: set them before transformers / peft are first imported.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    model_path = Path(model_path)
    where = {"gguf_file": model_path.name, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(str(model_path.parent), **where)
    model = AutoModelForCausalLM.from_pretrained(str(model_path.parent), dtype=torch.float32, **where)
    config = model.config
    if config.model_type != "llama":
        # The q/k permutation in `export_gguf_lora` is llama.cpp's llama convention; other layouts are unverified.
        raise FailedPrecondition(
            f"LoRA training supports llama-architecture GGUFs, not {config.model_type!r}",
            reason="UNSUPPORTED_BASE_MODEL",
            model_type=config.model_type,
        )
    # The config still says "gguf" quantisation, which neither peft nor a bitsandbytes reload should see.
    config.quantization_config = None
    if quantize_4bit:
        # transformers refuses to combine GGUF loading with a quantization_config, so quantise the dequantised
        # weights in a second pass: same architecture, weights from memory, linear layers to NF4.
        nf4 = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.float32,
            bnb_4bit_use_double_quant=True,
        )
        state_dict = model.state_dict()
        model = type(model).from_pretrained(
            None, config=config, state_dict=state_dict, quantization_config=nf4, device_map="cpu"
        )
        del state_dict
    info = BaseModelInfo(
        path=model_path,
        sha256=file_sha256(model_path),
        architecture=config.model_type,
        n_head=config.num_attention_heads,
        n_head_kv=config.num_key_value_heads,
    )
    return BaseModel(model=model, tokenizer=tokenizer, info=info, quantized_4bit=quantize_4bit)


def encode_pair(tokenizer: Any, prompt: str, answer: str, system_prompt: str | None = None) -> tuple[list[int], int]:
    """Token ids of one chat exchange in the model's template, and how many leading ids are prompt (not learned)."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
    messages.append({"role": "user", "content": prompt})
    prompt_text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": answer}], tokenize=False)
    if not full_text.startswith(prompt_text):
        raise InvalidArgument("the chat template does not extend the prompt with the answer", field="pairs")
    # Tokenise the two parts apart so the prompt ids are exactly what llama.cpp sees when it is asked the prompt.
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(full_text[len(prompt_text) :], add_special_tokens=False)["input_ids"]
    return prompt_ids + answer_ids, len(prompt_ids)


def _collate(examples: Sequence[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (ids, n_prompt) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, n_prompt : len(ids)] = torch.tensor(ids[n_prompt:])
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def train_adapter(
    base: BaseModel,
    pairs: Sequence[tuple[str, str]],
    *,
    rank: int = 64,
    alpha: float = 32.0,
    target_modules: Sequence[str] = ALL_LINEAR,
    learning_rate: float = 2e-4,
    max_steps: int = 100,
    batch_size: int = 4,
    time_budget_s: float | None = None,
    system_prompt: str | None = None,
    seed: int = 0,
    progress_callback: ProgressCallback | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> TrainResult:
    """Trains a LoRA adapter on `base` (answers only) and returns it; `base.model` is left without the adapter."""
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

    if not pairs:
        raise InvalidArgument("no training pairs", field="pairs")
    unknown = set(target_modules) - set(LLAMA_CPP_TENSOR_NAMES)
    if unknown:
        raise InvalidArgument(f"llama.cpp has no LoRA target for {sorted(unknown)}", field="target_modules")
    tokenizer = base.tokenizer
    examples = [encode_pair(tokenizer, prompt, answer, system_prompt) for prompt, answer in pairs]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=list(target_modules),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    # peft draws lora_A from torch's global generator: fork it so the seed decides the run without leaking out.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft_model = get_peft_model(base.model, config)
        order = torch.Generator().manual_seed(seed)
        trainable = [p for p in peft_model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=0.0)
        peft_model.train()
        losses: list[float] = []
        batches: list[list[int]] = []
        started = clock()
        stopped_by_time_budget = False
        for step in range(1, max_steps + 1):
            if time_budget_s is not None and clock() - started >= time_budget_s:
                stopped_by_time_budget = True
                break
            if not batches:  # a new epoch: every pair once, in a fresh order
                shuffled = torch.randperm(len(examples), generator=order).tolist()
                batches = [shuffled[i : i + batch_size] for i in range(0, len(shuffled), batch_size)]
            batch = _collate([examples[i] for i in batches.pop()], pad_id)
            loss = peft_model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            if progress_callback is not None:
                progress_callback(step, losses[-1])
        train_seconds = clock() - started
    peft_model.eval()
    adapter = {k: v.detach().to(torch.float32).clone() for k, v in get_peft_model_state_dict(peft_model).items()}
    # Restore the plain base model so the caller can train again on it.
    base.model = peft_model.unload()
    return TrainResult(
        adapter=adapter,
        base=base.info,
        rank=rank,
        alpha=float(alpha),
        target_modules=tuple(target_modules),
        quantized_4bit=base.quantized_4bit,
        losses=losses,
        steps=len(losses),
        train_seconds=train_seconds,
        stopped_by_time_budget=stopped_by_time_budget,
    )


def train_lora(
    model_path: Path,
    pairs: Sequence[tuple[str, str]],
    *,
    quantize_4bit: bool = True,
    **train_options: Any,
) -> TrainResult:
    """Loads the base GGUF (NF4 for QLoRA by default, fp32 otherwise) and trains a LoRA adapter on `pairs`."""
    return train_adapter(load_base_model(model_path, quantize_4bit=quantize_4bit), pairs, **train_options)


def permute_for_gguf(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """Reorders the rows of an HF llama q/k projection (or its LoRA B) into llama.cpp's rotary layout.

    HF's rotary embedding rotates the two halves of each head; llama.cpp rotates adjacent pairs, so
    llama.cpp's converter interleaves the halves (convert_hf_to_gguf.py `LlamaModel.permute`).
    """
    rows = weight.shape[0]
    return weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def gguf_lora_tensors(result: TrainResult) -> dict[str, torch.Tensor]:
    """The adapter's tensors under llama.cpp's names, in llama.cpp's layout (A: rank x in, B: out x rank)."""
    pairs: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, tensor in result.adapter.items():
        match = _ADAPTER_KEY.search(key)
        if match is None or match.group(2) not in LLAMA_CPP_TENSOR_NAMES:
            raise FailedPrecondition(f"adapter tensor {key!r} has no llama.cpp counterpart", reason="UNEXPORTABLE")
        pairs.setdefault((int(match.group(1)), match.group(2)), {})[match.group(3)] = tensor
    heads = {"q_proj": result.base.n_head, "k_proj": result.base.n_head_kv}
    tensors: dict[str, torch.Tensor] = {}
    for (block, module), ab in sorted(pairs.items()):
        lora_b = ab["B"]
        if module in heads:
            # Permuting B's rows permutes the rows of B @ A, i.e. the delta lands where llama.cpp's q/k rows are.
            lora_b = permute_for_gguf(lora_b, heads[module])
        name = f"blk.{block}.{LLAMA_CPP_TENSOR_NAMES[module]}.weight"
        tensors[f"{name}.lora_a"] = ab["A"]
        tensors[f"{name}.lora_b"] = lora_b
    return tensors


def export_gguf_lora(
    result: TrainResult,
    out_path: Path,
    *,
    extra_metadata: Mapping[str, str] | None = None,
    float16: bool = True,
) -> Path:
    """Writes the adapter as a GGUF LoRA for llama.cpp, stamped with the base model's SHA-256 and `extra_metadata`.

    Extra keys are written as `spiral.<key>` strings (job id, eval score, ...).
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(out_path), arch=result.base.architecture)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    # llama.cpp scales B @ A by alpha / rank (rank read from the tensors), the same scaling peft trained with.
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, result.alpha)
    writer.add_string(BASE_SHA256_KEY, result.base.sha256)
    for key, value in (extra_metadata or {}).items():
        writer.add_string(f"{EXTRA_KEY_PREFIX}{key}", str(value))
    dtype = np.float16 if float16 else np.float32
    for name, tensor in gguf_lora_tensors(result).items():
        # numpy (rows, cols) becomes GGUF ne = [cols, rows]: A is [n_in, rank] and B [rank, n_out], as llama.cpp checks.
        writer.add_tensor(name, tensor.numpy().astype(dtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_path


def read_adapter_metadata(path: Path) -> dict[str, Any]:
    """The scalar and string key/values of a GGUF file (arrays are skipped), read without loading the tensors."""
    reader = gguf.GGUFReader(str(path))
    metadata: dict[str, Any] = {}
    for key, reader_field in reader.fields.items():
        if key.startswith("GGUF.") or not reader_field.types or reader_field.types[0] == gguf.GGUFValueType.ARRAY:
            continue  # the reader's own header fields and arrays (vocabularies) are not metadata a caller wants
        value = reader_field.contents()
        metadata[key] = float(value) if isinstance(value, float | np.floating) else value
    return metadata


def lora_delta(lora_a: torch.Tensor, lora_b: torch.Tensor, alpha: float) -> torch.Tensor:
    """The weight change a LoRA pair applies: B @ A scaled by alpha / rank (peft's and llama.cpp's convention)."""
    rank = lora_a.shape[0]
    return (lora_b @ lora_a) * (alpha / rank)
