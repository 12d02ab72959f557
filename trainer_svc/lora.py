"""LoRA / QLoRA fine-tuning of the GGUF base model, and export of the adapter as a GGUF LoRA that llama.cpp loads."""

from __future__ import annotations

import itertools
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

from spiral_common.adapters import read_metadata
from spiral_common.errors import FailedPrecondition, InvalidArgument
from spiral_common.model_files import file_sha256

# HF module name -> llama.cpp tensor name; the adapter file holds `blk.N.<name>.weight.lora_a|lora_b`.
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
IGNORE_INDEX = -100  # the label torch's cross-entropy skips: prompt and padding tokens

_PEFT_KEY = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")

ProgressCallback = Callable[[int, float], None]  # (step, loss) after every optimiser step


@dataclass(frozen=True)
class LoraOptions:
    """How one adapter is trained; mirrors the fields a distillation job carries."""

    rank: int = 64
    alpha: float = 32.0
    target_modules: tuple[str, ...] = ALL_LINEAR
    learning_rate: float = 2e-4
    max_steps: int = 100
    batch_size: int = 4
    time_budget_s: float | None = None  # the loop stops at the first step boundary past it; loading is not counted
    system_prompt: str | None = None  # None: the chat template's default, as llama.cpp applies it
    # Several system prompts (the heads'): example i is trained under system_prompts[i % n], so the adapter
    # serves every head that shares it. Empty: `system_prompt` for every example.
    system_prompts: tuple[str, ...] = ()
    # Every this many steps, the mean loss of those steps is compared with the best so far and the adapter is
    # kept when it is better; the run returns the best kept adapter (0: the last one).
    checkpoint_every: int = 0
    # Adapt only the last N transformer blocks (0: all). The backward pass then stops at the lowest adapted
    # block, so a step costs less: more examples fit a time budget.
    top_layers: int = 0
    # "constant", or "cosine": a warm-up over the first 5 % of the run, then a cosine decay to 10 % of the peak.
    # The run's progress is the larger of steps done / max_steps and time spent / time_budget_s, so a run the
    # clock stops has still annealed.
    lr_schedule: str = "constant"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise InvalidArgument(f"rank must be >= 1, got {self.rank}", field="rank")
        if self.max_steps < 0 or self.batch_size < 1:
            raise InvalidArgument("max_steps must be >= 0 and batch_size >= 1", field="max_steps")
        if self.lr_schedule not in ("constant", "cosine"):
            raise InvalidArgument(
                f"lr_schedule must be constant or cosine, got {self.lr_schedule!r}", field="lr_schedule"
            )
        unknown = sorted(set(self.target_modules) - set(LLAMA_CPP_TENSOR_NAMES))
        if unknown or not self.target_modules:
            raise InvalidArgument(f"llama.cpp has no LoRA target for {unknown or 'nothing'}", field="target_modules")


@dataclass(frozen=True)
class BaseModelInfo:
    """What the exporter needs to know about the base GGUF an adapter was trained on."""

    path: Path
    sha256: str
    architecture: str
    n_head: int
    n_head_kv: int


@dataclass
class BaseModel:
    """The base model dequantised into torch (linear layers re-quantised to NF4 for QLoRA) and its tokenizer."""

    model: Any  # a transformers PreTrainedModel; transformers is imported only once offline mode is forced
    tokenizer: Any
    info: BaseModelInfo
    quantized_4bit: bool


@dataclass(frozen=True)
class TrainResult:
    """A trained adapter in memory (peft state-dict names, float32) and how the run went."""

    adapter: dict[str, torch.Tensor]
    base: BaseModelInfo
    options: LoraOptions
    quantized_4bit: bool
    losses: list[float]
    train_seconds: float
    stopped_by_time_budget: bool
    best_step: int = 0  # the step whose adapter this is (checkpointing), else the last step

    @property
    def steps(self) -> int:
        return len(self.losses)


def train_device() -> str:
    """CUDA when torch sees a GPU (install the CUDA torch wheel), else the CPU; bitsandbytes NF4 works on both."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_base_model(model_path: Path, *, quantize_4bit: bool = True) -> BaseModel:
    """Loads a llama-architecture GGUF through transformers (which dequantises it), never touching the network."""
    # huggingface_hub reads these once, when first imported; local_files_only covers a process that imported it sooner.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    model_path = Path(model_path)
    source = {"pretrained_model_name_or_path": str(model_path.parent), "gguf_file": model_path.name}
    tokenizer = AutoTokenizer.from_pretrained(**source, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(**source, local_files_only=True, dtype=torch.float32)
    config = model.config
    if config.model_type != "llama":
        # The q/k permutation in `gguf_lora_tensors` is llama.cpp's llama convention; other layouts are unverified.
        raise FailedPrecondition(
            f"LoRA training supports llama-architecture GGUFs, not {config.model_type!r}",
            reason="UNSUPPORTED_BASE_MODEL",
            model_type=config.model_type,
        )
    config.quantization_config = None  # it says "gguf": already dequantised, and bitsandbytes must not see it
    if quantize_4bit:
        # transformers refuses a quantization_config together with a GGUF file, so quantise in a second pass:
        # the same architecture built from the dequantised weights in memory, its linear layers as NF4.
        nf4 = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.float32,
            bnb_4bit_use_double_quant=True,
        )
        model = type(model).from_pretrained(
            None, config=config, state_dict=model.state_dict(), quantization_config=nf4, device_map=train_device()
        )
    else:
        torch.nn.Module.to(model, train_device())  # in place; transformers' wrapper of .to confuses mypy
    info = BaseModelInfo(
        path=model_path,
        sha256=file_sha256(model_path),
        architecture=config.model_type,
        n_head=config.num_attention_heads,
        n_head_kv=config.num_key_value_heads,
    )
    return BaseModel(model=model, tokenizer=tokenizer, info=info, quantized_4bit=quantize_4bit)


def encode_pair(tokenizer: Any, prompt: str, answer: str, system_prompt: str | None = None) -> tuple[list[int], int]:
    """Token ids of one exchange in the model's chat template, and how many leading ids are prompt (not learned)."""
    messages = [] if system_prompt is None else [{"role": "system", "content": system_prompt}]
    messages.append({"role": "user", "content": prompt})
    prompt_text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": answer}], tokenize=False)
    if not full_text.startswith(prompt_text):
        raise InvalidArgument("the chat template does not extend the prompt with the answer", field="pairs")
    # Tokenised apart, the prompt ids are exactly those llama.cpp conditions on when it is asked the prompt.
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


def answer_loss(causal_lm: Any, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The causal LM's mean cross-entropy over the answer tokens, with the vocabulary projection on those alone.

    The same number as transformers' `model(**batch).loss` (labels shifted by one, IGNORE_INDEX skipped, the mean
    over the tokens that count), but the LM head (576 x 49,152 for SmolLM2-135M, about a fifth of a token's
    FLOPs) and its softmax run on the answer positions only, not on the prompt's, which carry no loss.
    """
    hidden = causal_lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    targets = batch["labels"][:, 1:]
    counted = targets != IGNORE_INDEX
    logits = causal_lm.lm_head(hidden[:, :-1][counted])
    return torch.nn.functional.cross_entropy(logits.float(), targets[counted])


BUCKET_POOL_BATCHES = 32  # batches drawn together and cut by length (banking77: 1.33 -> 1.02 tokens padded per real)


def _batches(lengths: Sequence[int], batch_size: int, generator: torch.Generator) -> Iterator[list[int]]:
    """Example indices, batch after batch, forever: each epoch shows every example once, in a fresh order.

    Length-bucketed: each pool of BUCKET_POOL_BATCHES random batches' worth of examples is sorted by length and
    cut into batches, and the epoch's batches are shuffled, so a batch pads to little more than its own rows.
    """
    pool = batch_size * BUCKET_POOL_BATCHES
    while True:
        order = torch.randperm(len(lengths), generator=generator).tolist()
        batches: list[list[int]] = []
        for start in range(0, len(order), pool):
            chunk = sorted(order[start : start + pool], key=lengths.__getitem__)
            batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
        yield from (batches[i] for i in torch.randperm(len(batches), generator=generator).tolist())


def train_adapter(
    base: BaseModel,
    pairs: Sequence[tuple[str, str]],
    options: LoraOptions = LoraOptions(),
    *,
    progress_callback: ProgressCallback | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> TrainResult:
    """Trains a LoRA adapter on the answers of `pairs`; `base.model` is handed back without it, ready to train again."""
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

    if not pairs:
        raise InvalidArgument("no training pairs", field="pairs")
    tokenizer = base.tokenizer
    systems = options.system_prompts or (options.system_prompt,)
    examples = [
        encode_pair(tokenizer, prompt, answer, systems[i % len(systems)]) for i, (prompt, answer) in enumerate(pairs)
    ]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(base.model.parameters()).device
    n_layers = base.model.config.num_hidden_layers
    layers = list(range(n_layers - options.top_layers, n_layers)) if 0 < options.top_layers < n_layers else None
    config = LoraConfig(
        r=options.rank,
        lora_alpha=options.alpha,  # type: ignore[arg-type]  # peft annotates int but only computes alpha / r
        target_modules=list(options.target_modules),
        layers_to_transform=layers,
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    losses: list[float] = []
    stopped_by_time_budget = False
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None  # (window mean loss, step, adapter)
    # peft draws lora_A from torch's global generator: fork it so the seed decides the run without leaking out.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        peft_model = get_peft_model(base.model, config)
        try:
            order = torch.Generator().manual_seed(options.seed)
            trainable = [p for p in peft_model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(trainable, lr=options.learning_rate, weight_decay=0.0)
            peft_model.train()
            batches = itertools.islice(
                _batches([len(ids) for ids, _ in examples], options.batch_size, order), options.max_steps
            )
            started = clock()
            for step, indices in enumerate(batches, start=1):
                elapsed = clock() - started
                if options.time_budget_s is not None and elapsed >= options.time_budget_s:
                    stopped_by_time_budget = True
                    break
                for group in optimizer.param_groups:
                    group["lr"] = options.learning_rate * _lr_factor(options, step, elapsed)
                batch = _collate([examples[i] for i in indices], pad_id)
                loss = answer_loss(peft_model.get_base_model(), {k: v.to(device) for k, v in batch.items()})
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(loss.item())
                if progress_callback is not None:
                    progress_callback(step, losses[-1])
                window = options.checkpoint_every
                if window and step % window == 0:
                    mean = sum(losses[-window:]) / window
                    if best is None or mean < best[0]:
                        best = (mean, step, _adapter_state(peft_model, get_peft_model_state_dict))
            train_seconds = clock() - started
            window = options.checkpoint_every
            tail = losses[-(len(losses) % window or window) :] if window and losses else []
            if best is not None and (not tail or sum(tail) / len(tail) > best[0]):
                best_step, adapter = best[1], best[2]  # the last steps did worse than the best window
            else:
                best_step, adapter = len(losses), _adapter_state(peft_model, get_peft_model_state_dict)
        finally:
            peft_model.eval()
            base.model = peft_model.unload()
    return TrainResult(
        adapter=adapter,
        base=base.info,
        options=options,
        quantized_4bit=base.quantized_4bit,
        losses=losses,
        train_seconds=train_seconds,
        stopped_by_time_budget=stopped_by_time_budget,
        best_step=best_step,
    )


def _lr_factor(options: LoraOptions, step: int, elapsed_s: float) -> float:
    if options.lr_schedule == "constant":
        return 1.0
    progress = step / max(options.max_steps, 1)
    if options.time_budget_s:
        progress = max(progress, elapsed_s / options.time_budget_s)
    progress = min(progress, 1.0)
    if progress < 0.05:
        return max(progress / 0.05, 0.05)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (progress - 0.05) / 0.95))


def _adapter_state(peft_model: Any, get_state: Callable[..., dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    state = get_state(peft_model, save_embedding_layers=False)
    return {name: tensor.detach().to("cpu", torch.float32).clone() for name, tensor in state.items()}


def train_lora(
    model_path: Path,
    pairs: Sequence[tuple[str, str]],
    options: LoraOptions = LoraOptions(),
    *,
    quantize_4bit: bool = True,
    progress_callback: ProgressCallback | None = None,
) -> TrainResult:
    """Loads the base GGUF (NF4 for QLoRA by default, float32 for plain LoRA) and trains an adapter on `pairs`."""
    base = load_base_model(model_path, quantize_4bit=quantize_4bit)
    return train_adapter(base, pairs, options, progress_callback=progress_callback)


def permute_for_gguf(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """Reorders the rows of an HF llama q/k projection (or of its LoRA B) into llama.cpp's rotary layout.

    HF rotates the two halves of each head, llama.cpp adjacent pairs; llama.cpp's converter interleaves
    the halves (convert_hf_to_gguf.py, `LlamaModel.permute`) and transformers undoes it when loading a GGUF.
    """
    rows = weight.shape[0]
    return weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def gguf_lora_tensors(result: TrainResult) -> dict[str, torch.Tensor]:
    """The adapter under llama.cpp's names and layout: lora_a is (rank, n_in), lora_b (n_out, rank)."""
    halves: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, tensor in result.adapter.items():
        match = _PEFT_KEY.search(key)
        if match is None or match.group(2) not in LLAMA_CPP_TENSOR_NAMES:
            raise FailedPrecondition(f"adapter tensor {key!r} has no llama.cpp counterpart", reason="UNEXPORTABLE")
        halves.setdefault((int(match.group(1)), match.group(2)), {})[match.group(3)] = tensor
    heads = {"q_proj": result.base.n_head, "k_proj": result.base.n_head_kv}
    tensors: dict[str, torch.Tensor] = {}
    for (block, module), pair in sorted(halves.items()):
        lora_b = pair["B"]
        if module in heads:
            # Permuting B's rows permutes the rows of B @ A: the delta lands on the rows llama.cpp's q/k weights use.
            lora_b = permute_for_gguf(lora_b, heads[module])
        name = f"blk.{block}.{LLAMA_CPP_TENSOR_NAMES[module]}.weight"
        tensors[f"{name}.lora_a"] = pair["A"]
        tensors[f"{name}.lora_b"] = lora_b
    return tensors


def export_gguf_lora(
    result: TrainResult,
    out_path: Path,
    *,
    extra_metadata: Mapping[str, str] | None = None,
    float16: bool = True,
) -> Path:
    """Writes the adapter as a GGUF LoRA for llama.cpp, stamped with the base model's SHA-256.

    `extra_metadata` (job id, eval score, ...) is written as strings under `spiral.<key>`.
    float16 halves the file (39 MB instead of 78 MB at rank 64 on every linear layer of SmolLM2-135M).
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(out_path), arch=result.base.architecture)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    # llama.cpp scales B @ A by alpha / rank, reading the rank off the tensors: the scaling peft trained with.
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, result.options.alpha)
    writer.add_string(BASE_SHA256_KEY, result.base.sha256)
    for key, value in (extra_metadata or {}).items():
        writer.add_string(f"{EXTRA_KEY_PREFIX}{key}", str(value))
    dtype = np.float16 if float16 else np.float32
    for name, tensor in gguf_lora_tensors(result).items():
        # numpy (rows, cols) is GGUF ne = [cols, rows]: lora_a [n_in, rank], lora_b [rank, n_out], as llama.cpp checks.
        writer.add_tensor(name, tensor.numpy().astype(dtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_path


def read_adapter_metadata(path: Path) -> dict[str, Any]:
    """The scalar and string key/values of a GGUF file (arrays skipped), as Python values."""
    return read_metadata(path)
