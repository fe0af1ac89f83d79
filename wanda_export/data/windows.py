"""Turning documents into token windows: calibration samples, evaluation windows, digests.

Calibration follows the Wanda/SparseGPT recipe (seeded random windows of `seqlen` tokens), and
evaluation follows the papers' perplexity protocol (join the test split with blank lines,
tokenize once, cut non-overlapping windows). `seqlen` is always given explicitly; it is never
derived from the model's `max_position_embeddings`.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any, Literal

import torch

from wanda_export.errors import ConfigError

WindowStrategy = Literal["concatenate", "documents"]

WINDOW_STRATEGIES: tuple[WindowStrategy, ...] = ("concatenate", "documents")
_JOIN = "\n\n"


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of `text` without special tokens and without the too-long-sequence warning.

    Passing `verbose=False` silences only this call's "Token indices sequence length is longer
    than the specified maximum" warning, which is expected when tokenizing a whole corpus.
    """
    return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def calibration_windows(
    tokenizer: Any,
    documents: list[str],
    nsamples: int,
    seqlen: int,
    seed: int,
    strategy: WindowStrategy = "concatenate",
) -> torch.LongTensor:
    """`nsamples` random windows of `seqlen` tokens, shape [nsamples, seqlen], fixed by `seed`.

    "documents" is the Wanda/SparseGPT C4 recipe: pick a random document, keep a random window
    of it if it has more than `seqlen` tokens; if no document is that long it falls back to
    "concatenate" with the same seed: join all documents with blank lines, tokenize once, take
    random windows (starts drawn with replacement). The concatenated text must hold at least
    `nsamples * seqlen` tokens, so the windows could be disjoint; this is checked before any
    start is drawn.
    """
    _check_positive(nsamples=nsamples, seqlen=seqlen)
    if seqlen < 2:
        raise ConfigError(f"seqlen must be at least 2 tokens, got {seqlen}")
    if strategy not in WINDOW_STRATEGIES:
        raise ConfigError(
            f"unknown window strategy {strategy!r}; expected one of {WINDOW_STRATEGIES}"
        )
    if not documents:
        raise ConfigError("the calibration corpus has no documents")
    if strategy == "documents":
        windows = _document_windows(tokenizer, documents, nsamples, seqlen, random.Random(seed))
        if windows is not None:
            return windows
    rng = random.Random(seed)
    ids = encode(tokenizer, _JOIN.join(documents))
    check_calibration_tokens(len(ids), nsamples, seqlen)
    corpus = torch.tensor(ids, dtype=torch.long)
    starts = [rng.randint(0, len(ids) - seqlen - 1) for _ in range(nsamples)]
    return torch.stack([corpus[start : start + seqlen] for start in starts])


def check_calibration_tokens(available: int, nsamples: int, seqlen: int) -> None:
    """Refuse calibration text of `available` tokens too short for one window plus its random
    start (seqlen + 1), or for `nsamples` windows of `seqlen` tokens without overlap."""
    if available < seqlen + 1:
        raise ConfigError(
            f"data -> calibration -> seqlen: the calibration corpus has {available:,} tokens, "
            f"fewer than seqlen + 1 = {seqlen + 1:,}",
            hint="use more calibration text or a smaller seqlen",
        )
    if available < nsamples * seqlen:
        raise ConfigError(
            f"data -> calibration -> nsamples: {nsamples:,} windows of {seqlen:,} tokens need "
            f"{nsamples * seqlen:,} tokens of calibration text, but it has {available:,}",
            hint="use more calibration text, or a smaller nsamples or seqlen",
        )


def _document_windows(
    tokenizer: Any, documents: list[str], nsamples: int, seqlen: int, rng: random.Random
) -> torch.LongTensor | None:
    """The per-document recipe, or None once every document is known to be too short.

    Draws from `rng` exactly as the reference code does with the global `random` module; each
    too-short document is tokenized at most once, so the loop always ends.
    """
    short: set[int] = set()
    windows = []
    while len(windows) < nsamples:
        index = rng.randint(0, len(documents) - 1)
        if index in short:
            continue
        ids = encode(tokenizer, documents[index])
        if len(ids) <= seqlen:
            short.add(index)
            if len(short) == len(documents):
                return None
            continue
        start = rng.randint(0, len(ids) - seqlen - 1)
        windows.append(torch.tensor(ids[start : start + seqlen], dtype=torch.long))
    return torch.stack(windows)


def evaluation_ids(tokenizer: Any, documents: list[str]) -> torch.LongTensor:
    """The whole evaluation corpus as one row of ids, shape [1, N] (the papers' protocol:
    documents joined with blank lines and tokenized once)."""
    ids = encode(tokenizer, _JOIN.join(documents))
    if not ids:
        raise ConfigError("the evaluation corpus has no tokens")
    return torch.tensor([ids], dtype=torch.long)


def split_windows(
    ids: torch.Tensor, seqlen: int, max_windows: int | None = None
) -> torch.LongTensor:
    """Non-overlapping windows of `seqlen` tokens from ids [1, N], shape [W, seqlen]; the tail
    shorter than `seqlen` is dropped and at most `max_windows` windows are kept."""
    _check_positive(seqlen=seqlen)
    if max_windows is not None:
        _check_positive(max_windows=max_windows)
    if ids.dim() != 2 or ids.shape[0] != 1:
        raise ValueError(f"expected ids of shape [1, N], got {list(ids.shape)}")
    count = ids.shape[1] // seqlen
    if max_windows is not None:
        count = min(count, max_windows)
    if count < 1:
        raise ConfigError(
            f"data -> evaluation -> seqlen: the evaluation corpus has {ids.shape[1]:,} tokens, "
            f"fewer than one window of {seqlen:,}",
            hint="use more evaluation text or a smaller seqlen",
        )
    return ids[0, : count * seqlen].reshape(count, seqlen).long()


def token_digest(ids: torch.Tensor) -> str:
    """sha256 hex digest of the shape and the int64 little-endian values of `ids`, used as a
    cache-key ingredient so cached results are tied to the exact tokens they came from."""
    values = ids.detach().to(device="cpu", dtype=torch.int64).contiguous().numpy()
    digest = hashlib.sha256()
    digest.update(repr(tuple(values.shape)).encode("ascii"))
    digest.update(values.astype("<i8", copy=False).tobytes())
    return digest.hexdigest()


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
