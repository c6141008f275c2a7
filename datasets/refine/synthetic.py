"""`synthetic`: add generated training examples from class-conditional generators trained on the
training split only (never validation, test or the pool).

- images: `refine.generator=gan` (conditional DCGAN) or `diffusion` (small class-conditional DDPM),
  from datasets/refine/image_generators.py; the trained generator is cached and also serves
  `augmented` (SDEdit variations);
- text: `refine.generator=smollm2`: SmolLM2-135M-Instruct prompted per class with a few random
  training examples of that class (datasets/refine/text_generation.py).

Knobs: `generator` (auto: diffusion for images, smollm2 for text), `ratio` (synthetic examples per
real one), `filter` (keep only examples that a classifier trained on the real split assigns to their
intended class with probability >= `filter_threshold`; SmolLM2 follows the label loosely), `replace`
(train on synthetic data only), `seed`, and the generator's own knobs under `gan:` / `diffusion:` /
`smollm2:`. The report has the fidelity of the kept examples: classifier two-sample test accuracy
(0.5 = indistinguishable from real) and train-on-synthetic / train-on-real accuracy on the real
validation split (datasets/refine/probe.py), plus how many were generated and kept per class.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from tunebench.core.cache import cached, stored_report
from tunebench.core.registry import Registry

from . import REFINEMENTS, Refined, entry_for_modality, refinement_seed
from ..task import Split, inputs_digest
from .features import features
from .probe import consistent, fidelity, fit_probe

log = logging.getLogger("tunebench")
DEFAULT_GENERATOR = {"image": "diffusion", "text": "smollm2"}
# name -> (modality, function(task, cfg, per_class, seed, cache_dir) -> (inputs, intended labels, report))
SAMPLERS: Registry = Registry("synthetic-data generator")


def generator_name(task, cfg) -> str:
    return entry_for_modality(SAMPLERS, task, str(cfg.get("generator") or "auto"), DEFAULT_GENERATOR,
                              "refine.synthetic.generator")


def per_class_counts(task, ratio: float) -> dict[int, int]:
    """Synthetic examples to make per class: `ratio` times the real count (class balance is kept)."""
    if ratio <= 0:
        raise ValueError(f"refine.synthetic.ratio={ratio}: expected a positive number of synthetic examples per real one")
    counts = task.train.class_counts(task.num_classes)
    return {c: int(round(ratio * n)) for c, n in enumerate(counts) if n > 0}


def knobs(cfg, name: str) -> dict:
    sub = cfg.get(name)
    return OmegaConf.to_container(sub, resolve=True) if sub is not None else {}


# -- images ------------------------------------------------------------------------------------------

def trained_image_generator(kind: str, task, gen_cfg: dict, seed: int, cache_dir: Path | None, owner: str = "synthetic"):
    """A generator trained on task.train (built once per (kind, knobs, training images, seed)); `owner`
    is the refinement whose config holds the knobs (errors name `refine.<owner>.<kind>.<knob>`)."""
    from .image_generators import default_config, load_generator, resolve_config, train_generator

    images = np.stack([np.asarray(x, dtype=np.float32) for x in task.train.x])
    if images.ndim != 3:
        raise ValueError(f"refine.{owner}.generator={kind}: expects grey (H, W) images; data={task.name} has shape {images.shape[1:]}")
    try:  # check the knobs before anything is built or hashed
        resolve_config(kind, images.shape[1:], gen_cfg)
    except ValueError as e:
        raise ValueError(f"refine.{owner}.{e}") from None
    config = {**default_config(kind, images.shape[1:]), **gen_cfg}

    def train(folder: Path) -> None:
        train_generator(kind, images, task.train.y, task.num_classes, config, seed).save(folder)

    if cache_dir is None:
        return train_generator(kind, images, task.train.y, task.num_classes, config, seed), {}
    key = {"kind": kind, "config": config, "train": inputs_digest(task.train.x)[:16],
           "labels": inputs_digest([task.train.y.astype(np.int64)])[:16], "num_classes": task.num_classes, "seed": seed}
    entry = cached(Path(cache_dir), f"generator-{kind}", key, train)
    return load_generator(kind, entry.path), {"generator_cache_key": entry.key, "generator_cache_built": entry.built}


def _image_sampler(kind: str):
    def sample(task, cfg, per_class, seed, cache_dir):
        generator, report = trained_image_generator(kind, task, knobs(cfg, kind), seed, cache_dir)
        labels = np.concatenate([np.full(n, c, dtype=np.int64) for c, n in per_class.items()])
        images = generator.sample(labels, seed)
        return [img.astype(np.float32) for img in images], labels, report
    return sample


SAMPLERS.register("gan")(("image", _image_sampler("gan")))
SAMPLERS.register("diffusion")(("image", _image_sampler("diffusion")))


# -- text --------------------------------------------------------------------------------------------

def _smollm2_sampler(task, cfg, per_class, seed, cache_dir):
    from .text_generation import class_prompts, generator_from_cfg, postprocess

    gen_cfg = cfg["smollm2"]
    generator, report = generator_from_cfg(gen_cfg, _need_cache(cache_dir))
    rng = np.random.default_rng(seed)
    prompts, intended = class_prompts(task.train.x, task.train.y, task.classes, task.meta.get("description", "texts"),
                                      per_class, int(gen_cfg["shots"]), rng)
    texts = postprocess(generator(prompts, seed, desc="synthetic text (SmolLM2)", chat=False), task.train.x)
    usable = [i for i, t in enumerate(texts) if t is not None]
    report["unusable_generations"] = len(texts) - len(usable)
    return [texts[i] for i in usable], intended[usable], report


SAMPLERS.register("smollm2")(("text", _smollm2_sampler))


def _need_cache(cache_dir):
    if cache_dir is None:
        raise ValueError("the SmolLM2 generator needs an artefact cache (paths.cache) for its converted weights")
    return cache_dir


# -- the refinement ------------------------------------------------------------------------------------

def generate(task, cfg, name: str, seed: int, cache_dir: Path | None) -> tuple[list, np.ndarray, dict]:
    """Synthetic inputs and their intended labels, cached as one artefact."""
    per_class = per_class_counts(task, float(cfg["ratio"]))
    _, sampler = SAMPLERS.get(name)
    if cache_dir is None:
        return sampler(task, cfg, per_class, seed, None)
    def build(folder: Path) -> None:
        inputs, labels, report = sampler(task, cfg, per_class, seed, cache_dir)
        save_examples(folder, inputs, labels, task.modality)
        (folder / "report.json").write_text(json.dumps(report))

    key = {"generator": name, "knobs": knobs(cfg, name), "per_class": per_class, "data": task.data_hash(), "seed": seed}
    entry = cached(Path(cache_dir), f"synthetic-{name}", key, build)
    inputs, labels = load_examples(entry.path, task.modality)
    return inputs, labels, stored_report(entry, json.loads((entry.path / "report.json").read_text()))


def save_examples(folder: Path, inputs: list, labels: np.ndarray, modality: str) -> None:
    if modality == "image":
        np.savez_compressed(folder / "examples.npz", x=np.stack(inputs) if inputs else np.zeros((0, 0, 0), np.float32), y=labels)
    else:
        (folder / "examples.json").write_text(json.dumps({"x": list(inputs), "y": labels.tolist()}, ensure_ascii=False))


def load_examples(folder: Path, modality: str) -> tuple[list, np.ndarray]:
    if modality == "image":
        data = np.load(folder / "examples.npz")
        return list(data["x"]), data["y"].astype(np.int64)
    data = json.loads((folder / "examples.json").read_text())
    return data["x"], np.asarray(data["y"], dtype=np.int64)


def label_filter(task, inputs, labels, cfg, cache_dir, key: str = "refine.synthetic") -> tuple[np.ndarray, dict]:
    """Keep mask from a classifier trained on the real training split, and the features used."""
    real_x, _ = features(task.train.x, task.modality, cache_dir)
    synth_x, _ = features(inputs, task.modality, cache_dir)
    if not bool(cfg["filter"]):
        return np.ones(len(inputs), dtype=bool), {"real": real_x, "synthetic": synth_x}
    threshold = float(cfg["filter_threshold"])
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"{key}.filter_threshold={threshold}: expected a probability in [0, 1)")
    keep = consistent(fit_probe(real_x, task.train.y), synth_x, labels, threshold)
    return keep, {"real": real_x, "synthetic": synth_x}


@REFINEMENTS.register("synthetic")
def synthetic(task, cfg, ctx) -> Refined:
    name, seed, cache_dir = generator_name(task, cfg), refinement_seed(cfg, ctx), ctx.cache_dir
    inputs, labels, report = generate(task, cfg, name, seed, cache_dir)
    keep, feats = label_filter(task, inputs, labels, cfg, cache_dir)
    kept_x, kept_y = [inputs[i] for i in np.flatnonzero(keep)], labels[keep]
    heldout, _ = features(task.validation.x, task.modality, cache_dir)
    report.update(
        generator=name, ratio=float(cfg["ratio"]), seed=seed, filter=bool(cfg["filter"]),
        generated=len(inputs), kept=int(keep.sum()),
        generated_per_class=np.bincount(labels, minlength=task.num_classes).tolist(),
        kept_per_class=np.bincount(kept_y, minlength=task.num_classes).tolist(),
        fidelity=fidelity(feats["real"], task.train.y, feats["synthetic"][keep], kept_y, heldout, task.validation.y, seed),
        examples=[str(x) for x in kept_x[:5]] if task.modality == "text" else [],
    )
    synthetic_split = Split(x=kept_x, y=kept_y)
    train = synthetic_split if bool(cfg["replace"]) else concat(task.train, synthetic_split)
    report["train_size_before"], report["train_size_after"] = len(task.train), len(train)
    log.info("synthetic (%s): %d generated, %d kept; C2ST %.3f, TSTR %.3f (TRTR %.3f); train %d -> %d", name,
             len(inputs), int(keep.sum()), report["fidelity"]["c2st_accuracy"], report["fidelity"]["tstr_accuracy"],
             report["fidelity"]["trtr_accuracy"], len(task.train), len(train))
    return Refined(task=task.with_train(train), report=report)


def concat(a: Split, b: Split) -> Split:
    return Split(x=list(a.x) + list(b.x), y=np.concatenate([a.y, b.y]).astype(np.int64))
