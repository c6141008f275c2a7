"""Fixed, seeded, stratified splits. The split seed is part of the data config, never the run seed,
so every method and seed sees the same test set (needed for paired comparisons)."""
from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split


def _count(size: int | float | None, total: int) -> int:
    """A size is a count, or a fraction (< 1) of all examples."""
    if size is None:
        return 0
    return int(round(size * total)) if isinstance(size, float) and size < 1 else int(size)


class TooFewToStratify(ValueError):
    """A class has too few examples for a stratified split; `label` is its index (the caller names it)."""

    def __init__(self, label: int, count: int, what: str, size):
        self.label, self.count, self.what, self.size = label, count, what, size
        super().__init__(f"{what}={size}: class {label} has {count} example(s); a stratified split needs at least 2 per class")


def _take(indices: np.ndarray, labels: np.ndarray, count: int, seed: int, what: str, size):
    """Split `indices` into (taken, rest), stratified."""
    if count <= 0:
        return indices[:0], indices
    if count >= len(indices):
        raise ValueError(f"{what}={size} leaves no examples: only {len(indices)} are available")
    classes = len(np.unique(labels[indices]))
    stratify = labels[indices] if min(count, len(indices) - count) >= classes else None
    if stratify is not None:
        values, counts = np.unique(stratify, return_counts=True)
        if counts.min() < 2:
            raise TooFewToStratify(int(values[counts.argmin()]), int(counts.min()), what, size)
    taken, rest = train_test_split(indices, train_size=count, random_state=seed, stratify=stratify)
    return np.sort(taken), np.sort(rest)


def stratified_split(labels: np.ndarray, sizes: dict[str, int | float | None], seed: int) -> dict[str, np.ndarray]:
    """Carve named parts off in order; the key 'train' gets what is left (or `sizes['train']` of it)."""
    total = len(labels)
    rest = np.arange(total)
    parts = {}
    for offset, (name, size) in enumerate((k, v) for k, v in sizes.items() if k != "train"):
        parts[name], rest = _take(rest, labels, _count(size, total), seed + offset, f"data.{name}_size", size)
    train_count = _count(sizes.get("train"), total)
    if sizes.get("train") is not None and train_count > len(rest):
        carved = ", ".join(f"{name} {len(idx)}" for name, idx in parts.items())
        raise ValueError(f"data.train_size={sizes['train']}: only {len(rest)} examples are left for training "
                         f"({total} in all, carved off: {carved or 'none'}); expected at most {len(rest)} or null for all")
    if sizes.get("train") is not None and train_count < len(rest):
        parts["train"], _ = _take(rest, labels, train_count, seed + 99, "data.train_size", sizes["train"])
    else:
        parts["train"] = rest
    return parts
