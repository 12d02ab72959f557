"""The memory guard: refuse to start a model that would not fit, and export the memory in use.

On a GPU the cap is GPU memory (10.5 GB by default, measured through NVML when the `nvidia-ml-py`
package is present); on a CPU box it is a resident-memory cap. The estimate is the model file, plus
every adapter loaded at start, plus the KV cache of the context (f16 keys and values for every layer).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import gguf
from prometheus_client import CollectorRegistry, Gauge


class MemoryCapExceeded(RuntimeError):
    """The model would not fit under the cap; the message says what it needs and what the cap is."""


@dataclass(frozen=True)
class MemoryPlan:
    model_bytes: int
    adapter_bytes: int
    kv_cache_bytes: int
    cap_bytes: int
    device: str  # "gpu" or "cpu"

    @property
    def needed_bytes(self) -> int:
        return self.model_bytes + self.adapter_bytes + self.kv_cache_bytes


def kv_cache_bytes(model_path: Path, context_tokens: int) -> int:
    """f16 K and V for every layer: 2 * 2 bytes * layers * context * (embedding / heads * kv heads)."""
    fields = gguf.GGUFReader(str(model_path)).fields
    arch = bytes(fields["general.architecture"].parts[-1]).decode()

    def number(key: str) -> int:
        return int(fields[f"{arch}.{key}"].parts[-1][0])

    heads = number("attention.head_count")
    kv_heads = number("attention.head_count_kv") if f"{arch}.attention.head_count_kv" in fields else heads
    kv_width = number("embedding_length") // heads * kv_heads
    return 2 * 2 * number("block_count") * context_tokens * kv_width


def gpu_memory_used_bytes() -> int | None:
    """GPU memory in use on device 0 through NVML, or None where there is no NVML."""
    try:
        import pynvml  # provided by nvidia-ml-py on GPU machines; absent on CPU boxes

        pynvml.nvmlInit()
        return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).used)
    except Exception:
        return None


def resident_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def plan(
    model_path: Path, adapters: list[Path], *, context_tokens: int, gpu_layers: int, cpu_cap_mb: int, gpu_cap_mb: int
) -> MemoryPlan:
    on_gpu = gpu_layers != 0
    return MemoryPlan(
        model_bytes=model_path.stat().st_size,
        adapter_bytes=sum(p.stat().st_size for p in adapters),
        kv_cache_bytes=kv_cache_bytes(model_path, context_tokens),
        cap_bytes=(gpu_cap_mb if on_gpu else cpu_cap_mb) * 1024 * 1024,
        device="gpu" if on_gpu else "cpu",
    )


def check(memory: MemoryPlan) -> None:
    if memory.needed_bytes > memory.cap_bytes:
        variable = "SPIRAL_HEAD_GPU_MEMORY_CAP_MB" if memory.device == "gpu" else "SPIRAL_HEAD_MEMORY_CAP_MB"
        raise MemoryCapExceeded(
            f"the model needs {memory.needed_bytes / 2**20:.0f} MiB of {memory.device.upper()} memory (model "
            f"{memory.model_bytes / 2**20:.0f} MiB + adapters {memory.adapter_bytes / 2**20:.0f} MiB + KV cache "
            f"{memory.kv_cache_bytes / 2**20:.0f} MiB), over the cap of {memory.cap_bytes / 2**20:.0f} MiB ({variable})"
        )


def export_metrics(registry: CollectorRegistry, memory: MemoryPlan) -> None:
    """Memory in use and the cap, read at every scrape (the VRAM alert compares them)."""
    Gauge(
        "spiral_head_resident_memory_bytes", "Resident memory of the head process, bytes.", registry=registry
    ).set_function(resident_bytes)
    Gauge("spiral_head_memory_cap_bytes", "The head's memory cap (GPU or resident), bytes.", registry=registry).set(
        memory.cap_bytes
    )
    if memory.device == "gpu":
        Gauge("spiral_gpu_memory_used_bytes", "GPU memory in use (NVML), bytes.", registry=registry).set_function(
            lambda: gpu_memory_used_bytes() or 0
        )
