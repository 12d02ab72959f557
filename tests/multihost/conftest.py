"""The adapter the multi-host test publishes."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def adapter_file(taught_adapter) -> Path:
    """A real QLoRA adapter trained in a few steps (tests/conftest.py), as the trainer would publish it."""
    return Path(taught_adapter[1])
