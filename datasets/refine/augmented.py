"""`augmented`: label-preserving variations of existing training examples, filtered for label consistency.

Augmenters (`refine.augmenter`; auto: paraphrase for text, sdedit for images):
- `paraphrase` (text): SmolLM2-135M-Instruct paraphrases each example (datasets/refine/text_generation.py);
- `wordnet` (text, non-transformer baseline): synonym replacement of `synonym_fraction` of the words;
- `sdedit` (images): noise a real image to `strength` x T and denoise it with the class-conditional
  diffusion model trained on the training split (Meng et al. 2022); the trained model is the same
  cached artefact `synthetic` uses;
- `transforms` (images, baseline): small random shift, rotation, scaling and pixel noise.

Knobs: `variants` per example, `max_examples` (augment a stratified subset; null = every training
example), `filter` / `filter_threshold` (a classifier trained on the real training split must give the
variant its source's label), `seed`. The report says how many variants were generated and kept, per
class and per example (a histogram of kept variants per source example).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from tunebench.core.cache import cached, stored_report
from tunebench.core.registry import Registry

from . import REFINEMENTS, Refined, entry_for_modality, refinement_seed
from ..task import Split
from .synthetic import concat, knobs, label_filter, load_examples, save_examples, trained_image_generator

log = logging.getLogger("tunebench")
DEFAULT_AUGMENTER = {"image": "sdedit", "text": "paraphrase"}
# name -> (modality, function(task, sources, cfg, seed, cache_dir) -> (variants, report)); one variant per source
AUGMENTERS: Registry = Registry("augmenter")


def paraphrase(task, sources: list, cfg, seed: int, cache_dir):
    from .text_generation import generator_from_cfg, paraphrase_prompt, postprocess

    if cache_dir is None:
        raise ValueError("refine.augmented.augmenter=paraphrase needs an artefact cache (paths.cache) for SmolLM2's weights")
    generator, report = generator_from_cfg(cfg["smollm2"], cache_dir)
    description = task.meta.get("description", "texts")
    prompts = [paraphrase_prompt(text, task.classes[label], description) for text, label in sources]
    outputs = postprocess(generator(prompts, seed, desc="paraphrases (SmolLM2)"), task.train.x)
    report["unusable_generations"] = sum(o is None for o in outputs)
    return outputs, report


def wordnet_synonyms(task, sources: list, cfg, seed: int, cache_dir):
    from .wordnet import replace_synonyms

    rng = np.random.default_rng(seed)
    fraction = float(cfg["synonym_fraction"])
    variants = [replace_synonyms(text, fraction, rng) for text, _ in sources]
    unchanged = sum(v == text for v, (text, _) in zip(variants, sources))
    return [None if v == text else v for v, (text, _) in zip(variants, sources)], {"unchanged": unchanged}


def sdedit_variations(task, sources: list, cfg, seed: int, cache_dir):
    from .image_generators import sdedit

    generator, report = trained_image_generator("diffusion", task, knobs(cfg, "diffusion"), seed, cache_dir, owner="augmented")
    images = np.stack([np.asarray(x, dtype=np.float32) for x, _ in sources])
    labels = np.array([y for _, y in sources], dtype=np.int64)
    strength = float(cfg["strength"])
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"refine.augmented.strength={strength}: expected a fraction of the diffusion steps in (0, 1]")
    return list(sdedit(generator, images, labels, strength, seed)), report


def random_transforms(task, sources: list, cfg, seed: int, cache_dir):
    """Ordinary tensor transforms: shift / rotate / scale by a random affine map, then pixel noise."""
    images = torch.as_tensor(np.stack([np.asarray(x, dtype=np.float32) for x, _ in sources])).unsqueeze(1)
    g = torch.Generator().manual_seed(seed)
    n = len(images)
    angle = (torch.rand(n, generator=g) - 0.5) * 2 * np.deg2rad(float(cfg["max_rotation"]))
    scale = 1 + (torch.rand(n, generator=g) - 0.5) * 0.2
    shift = (torch.rand(n, 2, generator=g) - 0.5) * 2 * float(cfg["max_shift"]) * 2  # fraction of the size, in [-1, 1] units
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = torch.nn.functional.affine_grid(theta, images.shape, align_corners=False)
    moved = torch.nn.functional.grid_sample(images, grid, align_corners=False, padding_mode="zeros")
    noisy = (moved + float(cfg["noise"]) * torch.randn(moved.shape, generator=g)).clamp(0, 1)
    return [img[0].numpy() for img in noisy], {}


AUGMENTERS.register("paraphrase")(("text", paraphrase))
AUGMENTERS.register("wordnet")(("text", wordnet_synonyms))
AUGMENTERS.register("sdedit")(("image", sdedit_variations))
AUGMENTERS.register("transforms")(("image", random_transforms))


def augmenter_name(task, cfg) -> str:
    return entry_for_modality(AUGMENTERS, task, str(cfg.get("augmenter") or "auto"), DEFAULT_AUGMENTER,
                              "refine.augmented.augmenter")


def source_positions(task, cfg, seed: int) -> np.ndarray:
    """Training positions to augment, each repeated `variants` times (a stratified subset if max_examples)."""
    variants = int(cfg["variants"])
    if variants < 1:
        raise ValueError(f"refine.augmented.variants={variants}: expected a positive number of variants per example")
    n = len(task.train)
    limit = cfg.get("max_examples")
    positions = np.arange(n)
    if limit is not None and int(limit) < n:
        from sklearn.model_selection import train_test_split

        positions, _ = train_test_split(positions, train_size=int(limit), stratify=task.train.y, random_state=seed)
        positions = np.sort(positions)
    return np.repeat(positions, variants)


def make_variants(task, cfg, name: str, positions: np.ndarray, seed: int, cache_dir) -> tuple[list, dict]:
    """One variant (or None: nothing usable) per position, cached as one artefact."""
    _, augment = AUGMENTERS.get(name)
    sources = [(task.train.x[i], int(task.train.y[i])) for i in positions]
    if cache_dir is None:
        return augment(task, sources, cfg, seed, None)

    def build(folder: Path) -> None:
        variants, report = augment(task, sources, cfg, seed, cache_dir)
        usable = [i for i, v in enumerate(variants) if v is not None]
        save_examples(folder, [variants[i] for i in usable], np.asarray(usable, dtype=np.int64), task.modality)
        (folder / "report.json").write_text(json.dumps(report))

    settings = {k: cfg.get(k) for k in ("strength", "synonym_fraction", "max_rotation", "max_shift", "noise")}
    key = {"augmenter": name, "settings": settings, "knobs": knobs(cfg, "smollm2" if name == "paraphrase" else "diffusion"),
           "positions": positions.tolist(), "data": task.data_hash(), "seed": seed}
    entry = cached(Path(cache_dir), f"augmented-{name}", key, build)
    kept, usable = load_examples(entry.path, task.modality)  # y holds the variant's index in `positions`
    variants = [None] * len(positions)
    for variant, i in zip(kept, usable):
        variants[i] = variant
    return variants, stored_report(entry, json.loads((entry.path / "report.json").read_text()))


@REFINEMENTS.register("augmented")
def augmented(task, cfg, ctx) -> Refined:
    name, seed, cache_dir = augmenter_name(task, cfg), refinement_seed(cfg, ctx), ctx.cache_dir
    positions = source_positions(task, cfg, seed)
    variants, report = make_variants(task, cfg, name, positions, seed, cache_dir)
    usable = np.array([i for i, v in enumerate(variants) if v is not None], dtype=np.int64)
    inputs, labels = [variants[i] for i in usable], task.train.y[positions[usable]]
    keep, _ = label_filter(task, inputs, labels, cfg, cache_dir, key="refine.augmented")
    kept_sources = positions[usable[keep]]
    per_example = np.bincount(np.searchsorted(np.unique(positions), kept_sources), minlength=len(np.unique(positions)))
    report.update(
        augmenter=name, seed=seed, variants_per_example=int(cfg["variants"]), augmented_examples=len(np.unique(positions)),
        generated=len(positions), usable=len(usable), kept=int(keep.sum()),
        kept_per_class=np.bincount(labels[keep], minlength=task.num_classes).tolist(),
        kept_variants_per_example={int(k): int(v) for k, v in zip(*np.unique(per_example, return_counts=True))},
        mean_kept_variants_per_example=float(per_example.mean()) if len(per_example) else 0.0,
        examples=[[task.train.x[positions[usable[i]]], inputs[i]] for i in np.flatnonzero(keep)[:5]] if task.modality == "text" else [],
    )
    extra = Split(x=[inputs[i] for i in np.flatnonzero(keep)], y=labels[keep])
    train = concat(task.train, extra)
    report["train_size_before"], report["train_size_after"] = len(task.train), len(train)
    log.info("augmented (%s): %d variants, %d usable, %d kept after the label filter; train %d -> %d",
             name, len(positions), len(usable), int(keep.sum()), len(task.train), len(train))
    return Refined(task=task.with_train(train), report=report)
