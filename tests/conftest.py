"""Shared fixtures: the real model, loaded once per test session."""

from __future__ import annotations

import pytest

from head_svc.engine import LlamaEngine
from head_svc.model_files import embedded_model_path


@pytest.fixture(scope="session")
def model_path():
    return embedded_model_path()


@pytest.fixture(scope="session")
def engine(model_path):
    """The embedded SmolLM2 GGUF in llama.cpp, shared by the in-process head tests."""
    return LlamaEngine(model_path, context_tokens=1024, threads=0, gpu_layers=0)
