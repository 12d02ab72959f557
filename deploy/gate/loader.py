"""The gate's loader check: the base model and every registered adapter load within the memory cap.

`python -m deploy.gate.loader` (settings from SPIRAL_* and the profile, as a head reads them) plans the
memory of the base model, every adapter in the registry (SPIRAL_ADAPTERS_DIR) and the KV cache with the
head's own memory guard, loads the model and each adapter into llama.cpp, then measures the memory in
use (resident memory on CPU, NVML on a GPU). It prints one JSON object and exits 1 if anything is over
the cap or does not load. Run it in a fresh process: the resident memory it measures is its own.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from head_svc import memory
from spiral_common.adapters import AdapterRegistry
from spiral_common.config import load_settings
from spiral_common.errors import SpiralError
from spiral_common.llama_engine import LlamaEngine
from spiral_common.model_files import file_sha256, resolve_model_path

MIB = 2**20


def check_loader(max_load_s: float) -> tuple[list[str], dict[str, Any]]:
    """(what failed, the numbers)."""
    settings = load_settings()
    model_path = resolve_model_path(settings.head.model_path)
    registry = AdapterRegistry(settings.adapters_path, file_sha256(model_path))
    failures: list[str] = []
    adapters: list[Path] = []
    for version in registry.versions():
        try:
            adapters.append(registry.info(version).path)
        except SpiralError as exc:  # a stray file in the registry is refused by the heads too
            failures.append(f"adapter {version}: {exc}")
    plan = memory.plan(
        model_path,
        adapters,
        context_tokens=settings.head.head_context_tokens,
        gpu_layers=settings.head.head_gpu_layers,
        cpu_cap_mb=settings.head.head_memory_cap_mb,
        gpu_cap_mb=settings.head.head_gpu_memory_cap_mb,
    )
    try:
        memory.check(plan)
    except memory.MemoryCapExceeded as exc:
        failures.append(str(exc))
    started = time.perf_counter()
    engine = LlamaEngine(
        model_path,
        context_tokens=settings.head.head_context_tokens,
        threads=settings.head.head_threads,
        gpu_layers=settings.head.head_gpu_layers,
    )
    handles = []
    for path in adapters:
        try:
            handles.append(engine.load_adapter(path))
        except SpiralError as exc:
            failures.append(f"adapter {path.stem}: {exc}")
    load_s = time.perf_counter() - started
    used = (memory.gpu_memory_used_bytes() if plan.device == "gpu" else None) or memory.resident_bytes()
    for handle in handles:
        engine.free_adapter(handle)
    if used > plan.cap_bytes:
        failures.append(f"{used / MIB:.0f} MiB in use after loading, over the cap of {plan.cap_bytes / MIB:.0f} MiB")
    if load_s > max_load_s:
        failures.append(f"loading took {load_s:.1f} s, over {max_load_s:.0f} s")
    numbers = {
        "profile": settings.profile,
        "model": model_path.name,
        "adapters": len(adapters),
        "planned_mib": round(plan.needed_bytes / MIB),
        "measured_mib": round(used / MIB),
        "cap_mib": round(plan.cap_bytes / MIB),
        "device": plan.device,
        "load_s": round(load_s, 2),
    }
    return failures, numbers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-load-s", type=float, default=120.0)
    args = parser.parse_args(argv)
    failures, numbers = check_loader(args.max_load_s)
    print(json.dumps({"failures": failures, "numbers": numbers}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
