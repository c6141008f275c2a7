"""Fixed feature vectors for refinements that need a cheap view of the data (validation, selection).

Text: mean-pooled, L2-normalised embeddings of the packaged MiniLM sentence encoder (what it was
trained to produce). Cached by content hash, so every method and seed of a sweep shares one build.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tunebench.core.cache import cached
from tunebench.core.registry import Registry

from ..task import inputs_digest

FEATURES: Registry = Registry("feature extractor")


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token states over the real (unpadded) tokens: the sentence embedding MiniLM was trained for."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


@FEATURES.register("text")
def minilm_embeddings(inputs: list, batch_size: int = 128) -> np.ndarray:
    from transformers import AutoModel, AutoTokenizer

    from tunebench.core.models import resolve_source

    path, _ = resolve_source("minilm")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    encoder = AutoModel.from_pretrained(path, local_files_only=True).eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            batch = tokenizer(list(inputs[start:start + batch_size]), padding=True, truncation=True,
                              max_length=128, return_tensors="pt")
            pooled = mean_pool(encoder(**batch).last_hidden_state, batch["attention_mask"])
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 384), dtype=np.float32)


@FEATURES.register("image")
def pixels(inputs: list) -> np.ndarray:
    """Flattened pixel intensities: enough for small images such as the 8x8 digits."""
    return np.stack([np.asarray(x, dtype=np.float32).ravel() for x in inputs]) if inputs else np.zeros((0, 0), np.float32)


def features(inputs: list, modality: str, cache_dir: Path | None) -> tuple[np.ndarray, dict]:
    """Feature matrix for `inputs` and a report of the cache entry used (built or reused)."""
    extract = FEATURES.get(modality)
    if cache_dir is None:
        return extract(inputs), {}
    content = inputs_digest(inputs)[:16]
    entry = cached(Path(cache_dir), f"features-{modality}", {"extractor": modality, "inputs": content},
                   lambda folder: np.save(folder / "features.npy", extract(inputs)))
    return np.load(entry.path / "features.npy"), entry.report()
