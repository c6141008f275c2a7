"""`ssl`: self-supervised contrastive pretraining of the run's encoder on the unlabeled pool.

An untrained copy of the run's architecture (`ctx.architecture`, a ModelFactory) is built for the task and its encoder is pretrained on
`task.pool.x` (the pool's labels are never read); the encoder weights come back as `Refined.init`,
which `tunebench.core.models.build(model_factory, task, init)` loads with strict=False. The task head is not
in `init`, so it stays freshly initialised; the training split is unchanged.

- images: SimCLR (Chen et al. 2020). Two augmented views of each image (random resized crop with a
  small rotation and translation, gaussian noise, brightness / contrast jitter; optional horizontal
  flip, off by default because digits are not mirror-symmetric), encoder = `net.body`, a 2-layer
  MLP projection head (dropped afterwards), NT-Xent loss over the 2B views of a batch.
- text: unsupervised SimCSE (Gao et al. 2021). The same sentence encoded twice with dropout on is
  a positive pair, the other sentences of the batch are negatives; encoder = `net.base_model`
  (e.g. BERT for MiniLM), mean pooling over the attention mask (or [CLS]), InfoNCE; max_length 64.

Knobs (conf/refine/ssl.yaml; `null` picks the modality's default, images / text):
steps (200), batch_size (64 / 32), lr (AdamW, no weight decay: 1e-3 / 3e-5), temperature
(0.5 / 0.05), projection_dim (64, images), pooling (mean | cls, text), pool_size (null = whole
pool, else its first n), seed (0: one build shared by every method and run seed; null = run seed),
augment.* (image views: crop_area_min, rotate_degrees, translate, noise_std, brightness,
contrast, hflip).

The state dict and the loss curve are cached (safetensors + JSON) under a key of the resolved
knobs, the model config, a digest of the pool inputs and the seed. Pretraining runs inside
`torch.random.fork_rng`, so a cache hit and a cache miss leave the caller's RNG in the same state.
"""
from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn
from tqdm.auto import tqdm

from tunebench.core.cache import cached
from tunebench.core.image_models import to_image_batch

from . import REFINEMENTS, Refined, refinement_seed
from ..task import inputs_digest
from .features import mean_pool

log = logging.getLogger("tunebench")

# Modality defaults for the knobs left `null` in the YAML.
DEFAULTS = {
    "image": {"steps": 200, "batch_size": 64, "lr": 1e-3, "temperature": 0.5},
    "text": {"steps": 200, "batch_size": 32, "lr": 3e-5, "temperature": 0.05},
    # CLIP alignment: a learned logit scale; linear projections memorise a few hundred pairs within ~100
    # steps (Twemoji, 600 pool pairs: validation zero-shot 0.37 at 50 steps, 0.25 at 100, 0.16 at 400)
    "image-text": {"steps": 50, "batch_size": 128, "lr": 3e-4, "temperature": None},
}
AUGMENT_DEFAULTS = {"crop_area_min": 0.6, "rotate_degrees": 10.0, "translate": 0.1, "noise_std": 0.05,
                    "brightness": 0.2, "contrast": 0.2, "hflip": False}
POOLINGS = ("mean", "cls")
TEXT_MAX_LENGTH = 64
CURVE_EVERY = 10  # loss curve: one point per this many steps (the mean loss over them)
CACHE_VERSION = 1  # bump when the pretraining code changes what it builds


# ---------------------------------------------------------------- config

def _number(cfg, key: str, default, cast, low: float, low_inclusive: bool = False):
    value = cfg.get(key)
    value = default if value is None else value
    try:
        value = cast(value)
    except (TypeError, ValueError):
        raise ValueError(f"refine.ssl.{key}={value!r}: expected a number") from None
    if value < low or (value == low and not low_inclusive):
        raise ValueError(f"refine.ssl.{key}={value!r}: expected {'>=' if low_inclusive else '>'} {low}")
    return value


def augment_settings(cfg) -> dict:
    given = OmegaConf.to_container(cfg.get("augment") or OmegaConf.create({}), resolve=True)
    unknown = sorted(set(given) - set(AUGMENT_DEFAULTS))
    if unknown:
        raise ValueError(f"refine.ssl.augment has unknown keys {unknown}: expected {sorted(AUGMENT_DEFAULTS)}")
    out = {**AUGMENT_DEFAULTS, **{k: v for k, v in given.items() if v is not None}}
    if not 0 < float(out["crop_area_min"]) <= 1:
        raise ValueError(f"refine.ssl.augment.crop_area_min={out['crop_area_min']!r}: expected a fraction in (0, 1]")
    for key in ("rotate_degrees", "translate", "noise_std", "brightness", "contrast"):
        if float(out[key]) < 0:
            raise ValueError(f"refine.ssl.augment.{key}={out[key]!r}: expected >= 0")
    return {k: (bool(v) if k == "hflip" else float(v)) for k, v in out.items()}


def settings(task, cfg) -> dict:
    """The knobs with modality defaults filled in and every value checked."""
    if task.modality not in DEFAULTS:
        raise ValueError(f"refine=ssl supports {sorted(DEFAULTS)} tasks; data={task.name} is {task.modality!r}")
    default = DEFAULTS[task.modality]
    out = {
        "steps": _number(cfg, "steps", default["steps"], int, 1, low_inclusive=True),
        "batch_size": _number(cfg, "batch_size", default["batch_size"], int, 2, low_inclusive=True),
        "lr": _number(cfg, "lr", default["lr"], float, 0),
    }
    if task.modality != "image-text":
        out["temperature"] = _number(cfg, "temperature", default["temperature"], float, 0)
    elif cfg.get("temperature") is not None:
        raise ValueError(f"refine.ssl.temperature={cfg.get('temperature')!r}: CLIP alignment (data={task.name} is an "
                         "image-text task) learns its temperature as the logit scale; leave it null")
    pool_size = cfg.get("pool_size")
    if pool_size is not None and (not isinstance(pool_size, int) or pool_size < 2):
        raise ValueError(f"refine.ssl.pool_size={pool_size!r}: expected null (the whole pool) or an integer >= 2")
    out["pool_size"] = pool_size
    if task.modality == "image-text":
        out["weight_decay"] = 0.0
    elif task.modality == "image":
        out["projection_dim"] = _number(cfg, "projection_dim", 64, int, 1, low_inclusive=True)
        out["augment"] = augment_settings(cfg)
    else:
        pooling = str(cfg.get("pooling") or "mean")
        if pooling not in POOLINGS:
            raise ValueError(f"refine.ssl.pooling={pooling!r}: expected one of {list(POOLINGS)}")
        out["pooling"] = pooling
    return out


def alignment_split(task) -> str:
    """Image-text tasks align on the pool's pairs when the pool has captions (Twemoji: pairs kept apart from the
    fine-tuning pairs, so fine-tuning has something left to learn), else on the training pairs (class-prompt
    tasks: captions made from the pool's labels would reveal them). Class labels are never read."""
    return "pool" if len(task.pool) and task.pool.captions is not None else "train"


def alignment_pairs(task, pool_size: int | None) -> tuple[list, list[str]]:
    name = alignment_split(task)
    split = getattr(task, name)
    available = len(split)
    if available < 2:
        raise ValueError(f"refine=ssl aligns image-caption pairs; data={task.name} has {available} {name} pairs (need >= 2)")
    if split.captions is None:
        raise ValueError(f"refine=ssl aligns image-caption pairs; the {name} split of data={task.name} has no captions")
    if pool_size is not None and pool_size > available:
        raise ValueError(f"refine.ssl.pool_size={pool_size}: data={task.name} has only {available} {name} pairs")
    n = available if pool_size is None else pool_size
    return list(split.x[:n]), list(split.captions[:n])


def pool_inputs(task, pool_size: int | None) -> list:
    """The pool's inputs (never its labels), or the first `pool_size` of them; image-text: training pairs."""
    if task.modality == "image-text":
        return alignment_pairs(task, pool_size)[0]
    available = len(task.pool.x)
    if available == 0:
        raise ValueError(f"refine=ssl needs an unlabeled pool; data.pool_size=0 (or an empty pool) for data={task.name}: "
                         "set data.pool_size > 0")
    if available < 2:
        raise ValueError(f"refine=ssl needs at least 2 pool examples for contrastive pairs; data={task.name} has {available}")
    if pool_size is not None and pool_size > available:
        raise ValueError(f"refine.ssl.pool_size={pool_size}: the pool of data={task.name} has only {available} examples "
                         "(set refine.ssl.pool_size=null or raise data.pool_size)")
    return list(task.pool.x[:pool_size] if pool_size is not None else task.pool.x)


# ---------------------------------------------------------------- losses and batches

def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent: each of the 2B views must pick its partner among the other 2B - 1."""
    z = nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))  # a view is not its own negative
    b = len(z1)
    partner = torch.cat([torch.arange(b, 2 * b), torch.arange(b)])
    return nn.functional.cross_entropy(sim, partner)


def info_nce(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCSE's loss: sentence i's first encoding must pick its second among the batch's second encodings."""
    sim = nn.functional.normalize(z1, dim=1) @ nn.functional.normalize(z2, dim=1).T / temperature
    return nn.functional.cross_entropy(sim, torch.arange(len(z1)))


def batch_indices(n: int, batch_size: int, steps: int, generator: torch.Generator):
    """`steps` batches of distinct indices, walking through shuffled epochs of the pool."""
    batch_size = min(batch_size, n)
    order, at = torch.randperm(n, generator=generator), 0
    for _ in range(steps):
        if at + batch_size > n:
            order, at = torch.randperm(n, generator=generator), 0
        yield order[at:at + batch_size]
        at += batch_size


def loss_curve(losses: list[float], every: int = CURVE_EVERY) -> list[list]:
    """[step, mean loss over the `every` steps up to it] (the last point may cover fewer)."""
    return [[min(start + every, len(losses)), float(np.mean(losses[start:start + every]))]
            for start in range(0, len(losses), every)]


# ---------------------------------------------------------------- images: SimCLR

def augment(x: torch.Tensor, aug: dict, generator: torch.Generator) -> torch.Tensor:
    """One random view of each image in (N, C, H, W) [0, 1]: crop + rotate + shift, jitter, noise."""
    n = len(x)

    def uniform(low, high, size=(n,)):
        return low + (high - low) * torch.rand(size, generator=generator)

    area = uniform(aug["crop_area_min"], 1.0)
    aspect = torch.exp(uniform(math.log(3 / 4), math.log(4 / 3)))
    sx, sy = (area * aspect).sqrt().clamp(max=1.0), (area / aspect).sqrt().clamp(max=1.0)  # fraction of the input seen
    angle = uniform(-aug["rotate_degrees"], aug["rotate_degrees"]) * math.pi / 180
    # Crop position anywhere inside the image, plus a shift of up to `translate` of the width (zeros come in).
    tx = uniform(-1, 1) * (1 - sx) + uniform(-2, 2) * aug["translate"]
    ty = uniform(-1, 1) * (1 - sy) + uniform(-2, 2) * aug["translate"]
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if aug["hflip"] else torch.ones(n)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([sx * cos * flip, -sy * sin, tx], 1),
                         torch.stack([sx * sin * flip, sy * cos, ty], 1)], 1)
    grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    view = nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    mean = view.mean(dim=(1, 2, 3), keepdim=True)
    contrast = uniform(1 - aug["contrast"], 1 + aug["contrast"]).view(n, 1, 1, 1)
    brightness = uniform(-aug["brightness"], aug["brightness"]).view(n, 1, 1, 1)
    view = (view - mean) * contrast + mean + brightness
    view = view + aug["noise_std"] * torch.randn(view.shape, generator=generator)
    return view.clamp(0.0, 1.0)


def projection_head(feature_dim: int, projection_dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(feature_dim, feature_dim), nn.ReLU(), nn.Linear(feature_dim, projection_dim))


def simclr_pretrain(body: nn.Module, images: torch.Tensor, s: dict, generator: torch.Generator) -> list[float]:
    """Pretrain `body` in place with SimCLR on `images` (N, C, H, W); the per-step losses."""
    with torch.no_grad():
        feature_dim = body(images[:2]).shape[1]
    head = projection_head(feature_dim, s["projection_dim"])
    params = list(body.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=s["lr"], weight_decay=0.0)
    body.train(), head.train()  # BatchNorm (EfficientNet) in train mode: batch statistics of the views
    losses = []
    batches = batch_indices(len(images), s["batch_size"], s["steps"], generator)
    for idx in tqdm(batches, total=s["steps"], desc="ssl simclr", leave=False):
        batch = images[idx]
        v1, v2 = augment(batch, s["augment"], generator), augment(batch, s["augment"], generator)
        z = head(body(torch.cat([v1, v2])))
        loss = nt_xent(z[:len(idx)], z[len(idx):], s["temperature"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    body.eval()
    return losses


# ---------------------------------------------------------------- text: SimCSE

def sentence_embedding(encoder: nn.Module, batch: dict, pooling: str) -> torch.Tensor:
    hidden = encoder(**batch).last_hidden_state
    if pooling == "cls":
        return hidden[:, 0]
    return mean_pool(hidden, batch["attention_mask"])


def simcse_pretrain(encoder: nn.Module, tokenizer, texts: list[str], s: dict, generator: torch.Generator) -> list[float]:
    """Pretrain `encoder` in place with unsupervised SimCSE on `texts`; the per-step losses.

    The two encodings differ only by dropout masks, drawn from torch's global RNG (seeded by the caller)."""
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=s["lr"], weight_decay=0.0)
    encoder.train()  # dropout on: it is the augmentation
    losses = []
    batches = batch_indices(len(texts), s["batch_size"], s["steps"], generator)
    for idx in tqdm(batches, total=s["steps"], desc="ssl simcse", leave=False):
        batch = tokenizer([texts[i] for i in idx.tolist()], padding=True, truncation=True,
                          max_length=TEXT_MAX_LENGTH, return_tensors="pt")
        z1, z2 = sentence_embedding(encoder, batch, s["pooling"]), sentence_embedding(encoder, batch, s["pooling"])
        loss = info_nce(z1, z2, s["temperature"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    encoder.eval()
    return losses


# ---------------------------------------------------------------- building the init

def fresh_model(model_factory, task, seed: int):
    """The run's architecture for `task` (model_factory: the runner's ModelFactory) at the random init that
    `seed` gives (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_factory(task)


def encoder_prefix(model, task) -> str:
    """State-dict prefix of the encoder the pretraining changes (the head lies outside it)."""
    return "body." if task.modality == "image" else f"{model.net.base_model_prefix}."


def encoder_state(model, task) -> dict[str, torch.Tensor]:
    """The classifier's own parameter names for the encoder; nothing of the task head."""
    prefix = encoder_prefix(model, task)
    state = {k: v.detach().clone().contiguous() for k, v in model.net.state_dict().items() if k.startswith(prefix)}
    head = [k for k in state if k.split(".")[0] in model.head_prefixes]
    if head:
        raise RuntimeError(f"ssl init would contain task-head weights {head[:5]}")
    return state


def align_clip(task, model_factory, s: dict, seed: int) -> tuple[dict[str, torch.Tensor], list[float], int]:
    """Image-text: contrastive alignment of a CLIP's projections on the training pairs (towers locked)."""
    from tunebench.core.clip_models import align_projections, aligned_state

    images, captions = alignment_pairs(task, s["pool_size"])
    model = fresh_model(model_factory, task, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        losses = align_projections(model, images, captions, s, torch.Generator().manual_seed(seed))
    return aligned_state(model), losses, len(images)


def pretrain(task, model_factory, s: dict, seed: int) -> tuple[dict[str, torch.Tensor], list[float], int]:
    """(encoder state dict, per-step losses, pool examples used)."""
    if task.modality == "image-text":
        state, losses, used = align_clip(task, model_factory, s, seed)
        if not all(math.isfinite(v) for v in losses):
            raise FloatingPointError(f"ssl alignment diverged (non-finite loss); lower refine.ssl.lr={s['lr']}")
        return state, losses, used
    inputs = pool_inputs(task, s["pool_size"])
    model = fresh_model(model_factory, task, seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # dropout draws from the global RNG; keep the caller's stream intact
        torch.manual_seed(seed)
        if task.modality == "image":
            losses = simclr_pretrain(model.net.body, to_image_batch(inputs), s, generator)
        else:
            if model.tokenizer is None:
                raise ValueError(f"refine=ssl needs a tokenizer; model.name={model_factory.get('name')!r} has none "
                                 "(a config-only model cannot be pretrained)")
            losses = simcse_pretrain(model.net.base_model, model.tokenizer, [str(t) for t in inputs], s, generator)
    if not all(math.isfinite(v) for v in losses):
        raise FloatingPointError(f"ssl pretraining diverged (non-finite loss); lower refine.ssl.lr={s['lr']}")
    return encoder_state(model, task), losses, len(inputs)


def write_artefact(folder: Path, task, model_factory, s: dict, seed: int) -> None:
    from safetensors.torch import save_file

    start = time.perf_counter()
    state, losses, used = pretrain(task, model_factory, s, seed)
    seconds = time.perf_counter() - start
    save_file(state, str(folder / "init.safetensors"))
    summary = {"method": {"image": "simclr", "text": "simcse", "image-text": "clip-alignment"}[task.modality],
               **({"pairs": alignment_split(task)} if task.modality == "image-text" else {}), "steps": len(losses),
               "pool_examples": used, "first_loss": losses[0], "last_loss": losses[-1],
               "loss_curve": loss_curve(losses), "seconds": round(seconds, 3), "initialised_tensors": len(state)}
    (folder / "summary.json").write_text(json.dumps(summary, indent=1))
    log.info("ssl %s: %d steps on %d pool examples, loss %.3f -> %.3f in %.1fs",
             summary["method"], len(losses), used, losses[0], losses[-1], seconds)


def read_artefact(folder: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors.torch import load_file

    return load_file(str(folder / "init.safetensors")), json.loads((folder / "summary.json").read_text())


def cache_key(task, model_factory, s: dict, seed: int) -> dict:
    if task.modality == "image-text":
        images, captions = alignment_pairs(task, s["pool_size"])
        data = inputs_digest([inputs_digest(images), inputs_digest(captions)])
    else:
        data = inputs_digest(list(task.pool.x[:s["pool_size"]] if s["pool_size"] is not None else task.pool.x))
    return {"version": CACHE_VERSION, "modality": task.modality, "settings": s,
            "model": model_config(model_factory),
            "pool": data[:16], "seed": seed}


def model_config(factory) -> dict:
    config = factory.config
    return OmegaConf.to_container(config, resolve=True) if OmegaConf.is_config(config) else dict(config)


@REFINEMENTS.register("ssl")
def ssl(task, cfg, ctx) -> Refined:
    model_factory = ctx.architecture  # tunebench.core.models.ModelFactory: untrained copies of the run's architecture
    if model_factory is None or model_factory.get("name") is None:
        raise ValueError("refine=ssl pretrains the run's model architecture: RefineContext.architecture is missing")
    s = settings(task, cfg)
    pool_inputs(task, s["pool_size"])  # fail on an empty pool before hashing or building anything
    seed = refinement_seed(cfg, ctx)
    cache_dir = ctx.cache_dir
    if cache_dir is None:  # unit tests without a cache: build in a throwaway folder
        with tempfile.TemporaryDirectory() as tmp:
            write_artefact(Path(tmp), task, model_factory, s, seed)
            state, summary = read_artefact(Path(tmp))
        cache_report = {}
    else:
        entry = cached(Path(cache_dir), f"ssl-{task.modality}", cache_key(task, model_factory, s, seed),
                       lambda folder: write_artefact(folder, task, model_factory, s, seed))
        state, summary = read_artefact(entry.path)
        cache_report = entry.report()
    report = {**summary, "model": str(model_factory.get("name")), "seed": seed,
              "settings": json.loads(json.dumps(s)), **cache_report}
    return Refined(task=task, init=state, report=report)


ssl.changes_training_split = False  # it only initialises the encoder
ssl.modalities = ("image", "text", "image-text")  # image-text: contrastive alignment of a CLIP
