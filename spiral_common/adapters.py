"""The adapter registry: GGUF LoRA files on disk, addressed by version, checked against the base model.

Layout: `<SPIRAL_ADAPTERS_DIR>/<version>.gguf`. A file's own metadata says what it is: `general.type=adapter`,
`adapter.type=lora`, the SHA-256 of the base model it was trained for (`spiral.base_model_sha256`), and
what the trainer adds (`spiral.job_id`, `spiral.eval_score`, `spiral.created_at`, and the council threshold its
job calibrated, `spiral.council_*`: spiral_common/council_vote.py). `latest` is the newest
published file; `none` is the base model alone. Publishing renames a complete file into place, so a
half-written adapter is never visible, and records the file's SHA-256 beside it (`<version>.gguf.sha256`): the
registry record a head checks a fetched copy against (trainer_svc FetchAdapter, head_svc/adapter_fetch.py).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from spiral_common.council_vote import Calibration, from_metadata
from spiral_common.errors import FailedPrecondition, InvalidArgument, NotFound

BASE_SHA256_KEY = "spiral.base_model_sha256"
LATEST = "latest"
NO_ADAPTER = "none"
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SHA256 = ".sha256"


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, hex."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class AdapterInfo:
    version: str
    path: Path
    base_model_sha256: str
    alpha: float
    job_id: str
    eval_score: float
    created_at: str  # ISO 8601, UTC
    size_bytes: int
    council: Calibration | None = None  # the council threshold its job calibrated; None: not calibrated


def read_metadata(path: Path) -> dict[str, object]:
    """The scalar and string key/values of a GGUF file; InvalidArgument when it is not a readable GGUF."""
    import gguf  # here, not at the top: a gateway-only install imports spiral_common without gguf

    try:
        fields = gguf.GGUFReader(str(path)).fields
    except Exception as exc:  # gguf raises ValueError/struct errors/OSError on garbage
        raise InvalidArgument(f"{path.name} is not a readable GGUF file: {exc}", reason="ADAPTER_CORRUPT") from exc
    metadata: dict[str, object] = {}
    for key, field in fields.items():
        if key.startswith("GGUF.") or not field.types or field.types[0] == gguf.GGUFValueType.ARRAY:
            continue
        value = field.contents()
        metadata[key] = value.item() if hasattr(value, "item") else value
    return metadata


def _number(value: object) -> float:
    """A GGUF scalar (int, float, or a string the trainer wrote) as a float; anything else is not a number."""
    if isinstance(value, int | float | str):
        return float(value)
    raise InvalidArgument(f"metadata value {value!r} is not a number", reason="ADAPTER_CORRUPT")


def _calibration(metadata: dict[str, object], version: str) -> Calibration | None:
    try:
        return from_metadata(metadata)
    except ValueError as exc:
        raise InvalidArgument(
            f"adapter {version!r} has a broken council calibration: {exc}", reason="ADAPTER_CORRUPT", version=version
        ) from exc


class AdapterRegistry:
    def __init__(self, root: Path, base_model_sha256: str) -> None:
        self.root = root
        self.base_model_sha256 = base_model_sha256
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, version: str) -> Path:
        if not _VERSION.match(version):
            raise InvalidArgument(
                f"adapter version {version!r} is not a valid name", reason="BAD_VERSION", field="version"
            )
        return self.root / f"{version}.gguf"

    def file_path(self, version: str) -> Path:
        """Where `version`'s file is (or would be); InvalidArgument for a name that is not a version."""
        return self._path(version)

    def info(self, version: str) -> AdapterInfo:
        """Check a version against the base model. NotFound, InvalidArgument (corrupt) or FailedPrecondition."""
        path = self._path(version)
        if not path.is_file():
            raise NotFound(f"no adapter {version!r} in {self.root}", reason="ADAPTER_NOT_FOUND", version=version)
        metadata = read_metadata(path)
        if metadata.get("general.type") != "adapter" or metadata.get("adapter.type") != "lora":
            raise InvalidArgument(f"{path.name} is not a LoRA adapter", reason="ADAPTER_CORRUPT", version=version)
        base = str(metadata.get(BASE_SHA256_KEY, ""))
        if base != self.base_model_sha256:
            raise FailedPrecondition(
                f"adapter {version!r} was trained for base model {base[:12] or 'unknown'}, not the served "
                f"{self.base_model_sha256[:12]}",
                reason="ADAPTER_BASE_MISMATCH",
                version=version,
            )
        return AdapterInfo(
            version=version,
            path=path,
            base_model_sha256=base,
            alpha=_number(metadata.get("adapter.lora.alpha", 0.0)),
            job_id=str(metadata.get("spiral.job_id", "")),
            eval_score=_number(metadata.get("spiral.eval_score", 0.0) or 0.0),
            created_at=str(metadata.get("spiral.created_at", "")),
            size_bytes=path.stat().st_size,
            council=_calibration(metadata, version),
        )

    def sha256(self, version: str) -> str:
        """The SHA-256 recorded when `version` was published (computed now for a file published without one)."""
        path = self._path(version)
        record = path.with_name(path.name + _SHA256)
        try:
            return record.read_text().strip()
        except FileNotFoundError:
            return file_sha256(path)

    def versions(self) -> list[str]:
        """Published versions, newest first (by publication time)."""
        files = sorted(self.root.glob("*.gguf"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
        return [p.stem for p in files]

    def usable(self) -> Iterator[AdapterInfo]:
        """The adapters that serve this base model, newest first; a stray or foreign file is passed over."""
        for version in self.versions():
            try:
                yield self.info(version)
            except (InvalidArgument, FailedPrecondition):
                continue

    def resolve(self, version: str) -> AdapterInfo | None:
        """`latest` -> the newest usable version, `none` -> None (base model), else the named version."""
        if version == NO_ADAPTER or version == "":
            return None
        if version == LATEST:
            newest = next(self.usable(), None)
            if newest is not None:
                return newest
            raise NotFound(f"no usable adapter in {self.root}", reason="ADAPTER_NOT_FOUND", version=LATEST)
        return self.info(version)

    def publish(self, source: Path, version: str) -> AdapterInfo:
        """Copy a finished adapter into the registry under `version` (atomically) and return its info."""
        target = self._path(version)
        partial = target.with_suffix(".partial")
        shutil.copyfile(source, partial)
        record = target.with_name(target.name + _SHA256)
        record.write_text(file_sha256(partial) + "\n")  # before the file is visible: never a file without one
        os.replace(partial, target)
        try:
            return self.info(version)
        except (InvalidArgument, FailedPrecondition):
            target.unlink()
            record.unlink(missing_ok=True)
            raise
