"""Class-conditional image generators for grey images: a conditional DCGAN and a small DDPM.

A library for the `synthetic` and `augmented` refinements (not a refinement itself):

- `gan`: conditional DCGAN (Radford et al. 2016) conditioned as in Mirza & Osindero 2014: the
  generator takes noise concatenated with a label embedding and upsamples it with transposed
  convolutions + BatchNorm; the discriminator is a LeakyReLU conv net with a projection head
  (Miyato & Koyama 2018: score = linear(h) + <embed(y), h>). Adam(lr, betas (0.5, 0.999)),
  non-saturating loss.
- `diffusion`: DDPM (Ho et al. 2020) with epsilon prediction, a cosine (Nichol & Dhariwal 2021) or
  linear beta schedule over `timesteps`, a small UNet (residual blocks, sinusoidal time embedding +
  class embedding), classifier-free guidance (Ho & Salimans 2022: labels dropped with probability
  `label_dropout` in training; sampling mixes eps_uncond + guidance * (eps_cond - eps_uncond), so
  guidance 1 is plain conditional sampling), deterministic DDIM sampling (Song et al. 2021, eta 0)
  in `sample_steps` steps, and an exponential moving average of the weights (`ema`) for sampling.
  `sdedit` (Meng et al. 2022) noises real images to t = strength * T and denoises them with the
  class-conditional model: label-preserving variations (strength 0 gives the input back).

Images are (N, H, W) float32 in [0, 1]; internally they are padded (centred, with black) to a square
power-of-two side (8 -> 8, 28 -> 32), scaled to [-1, 1], and cropped back on the way out.
`train_generator(kind, images, labels, num_classes, cfg, seed)` -> a generator with
`sample(labels, seed)` and `save(folder)`; `load_generator(kind, folder)` reloads a saved one
(weights in safetensors + config.json) without retraining. `default_config(kind, image_size)` gives
the knobs and their defaults (sized for ~30-60 s per generator on 8x8 digits and a few minutes on
28x28 Fashion-MNIST on 2 CPU cores):

- both: `steps` (optimiser steps), `batch_size`, `lr`, `width` (base channel count);
- gan: `latent_dim`;
- diffusion: `timesteps` (T), `schedule` (cosine / linear), `sample_steps` (DDIM steps), `guidance`,
  `label_dropout`, `ema` (decay of the weight average used for sampling).

Everything is seeded from `seed` (weights, data order, noise): the same seed gives the same samples.

Measured with the defaults (1 CPU thread; TSTR = logistic regression on 100 (digits) / 200 (Fashion)
samples per class, scored on the real test split; C2ST = real-vs-synthetic logistic regression, 0.5 =
indistinguishable): digits gan TSTR 0.936 / C2ST 0.57, diffusion 0.944 / 0.71 (real data: 0.961);
Fashion-MNIST diffusion 0.757 / 0.90 (real 2,000: 0.806); Fashion-MNIST gan only 0.58 / 1.00: it
collapses to a few modes per class there, so prefer `diffusion` on 28x28.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from tunebench.core.registry import Registry

log = logging.getLogger("tunebench")
GENERATORS: Registry = Registry("image generator")
WEIGHTS, CONFIG = "model.safetensors", "config.json"
SAMPLE_BATCH = 500  # images per forward pass when sampling (bounded memory, same result for any n)


class ImageGenerator(Protocol):
    def sample(self, labels: np.ndarray, seed: int) -> np.ndarray: ...  # (n, H, W) float32 in [0, 1]

    def save(self, folder: Path) -> None: ...


# ---------------------------------------------------------------------------------------------
# Knobs

def default_config(kind: str, image_size: tuple[int, int]) -> dict:
    """The knobs of generator `kind` and their defaults for images of `image_size` (H, W)."""
    small = padded_side(image_size) <= 8
    if kind == "gan":
        return {"steps": 3000, "batch_size": 64, "latent_dim": 32 if small else 64, "width": 64 if small else 32,
                "lr": 2e-4}
    if kind == "diffusion":
        return {"steps": 1500 if small else 2500, "batch_size": 64, "lr": 1e-3, "width": 32,
                "timesteps": 200 if small else 400, "schedule": "cosine", "sample_steps": 20 if small else 12,
                "guidance": 2.0, "label_dropout": 0.1, "ema": 0.995}
    GENERATORS.get(kind)  # raises, listing the known kinds
    raise AssertionError("unreachable")


POSITIVE_INTS = ("steps", "batch_size", "latent_dim", "width", "timesteps", "sample_steps")


def resolve_config(kind: str, image_size: tuple[int, int], cfg: dict | None) -> dict:
    """Defaults overridden by `cfg`; unknown knobs and bad values raise ValueError naming the knob."""
    knobs = default_config(kind, image_size)
    overrides = dict(cfg or {})
    unknown = sorted(set(overrides) - set(knobs))
    if unknown:
        raise ValueError(f"{kind}: unknown knobs {unknown}; known knobs: {sorted(knobs)}")
    for key, value in overrides.items():
        knobs[key] = coerce(kind, key, value, type(knobs[key]))
    check_knobs(kind, knobs)
    return knobs


def coerce(kind: str, key: str, value, kind_of_default: type):
    """`value` as the type of the knob's default (int knobs take integral values only)."""
    try:
        if kind_of_default is int and float(value) != int(float(value)):
            raise ValueError
        return int(float(value)) if kind_of_default is int else kind_of_default(value)
    except (TypeError, ValueError):
        expected = "an integer" if kind_of_default is int else f"a {kind_of_default.__name__}"
        raise ValueError(f"{kind}.{key}={value!r}: expected {expected}") from None


def check_knobs(kind: str, knobs: dict) -> None:
    def bad(key: str, expected: str) -> ValueError:
        return ValueError(f"{kind}.{key}={knobs[key]!r}: expected {expected}")

    for key in POSITIVE_INTS:
        if key in knobs and knobs[key] < 1:
            raise bad(key, "a positive integer")
    if knobs["lr"] <= 0:
        raise bad("lr", "a positive learning rate")
    if kind == "diffusion":
        if knobs["width"] % 8:
            raise bad("width", "a multiple of 8 (GroupNorm uses 8 groups)")
        if knobs["schedule"] not in SCHEDULES:
            raise bad("schedule", f"one of {sorted(SCHEDULES)}")
        if knobs["guidance"] < 0:
            raise bad("guidance", "a scale >= 0 (1 = plain conditional, > 1 follows labels more strongly)")
        if not 0 <= knobs["label_dropout"] < 1:
            raise bad("label_dropout", "a probability in [0, 1)")
        if knobs["guidance"] != 1 and knobs["label_dropout"] == 0:
            raise bad("guidance", "1 when label_dropout=0 (guidance needs the unconditional model)")
        if not 0 <= knobs["ema"] < 1:
            raise bad("ema", "a decay in [0, 1) (0 = no averaging)")


# ---------------------------------------------------------------------------------------------
# Image layout: (N, H, W) in [0, 1] <-> (N, 1, S, S) in [-1, 1]

def padded_side(image_size) -> int:
    """Square power-of-two side that holds the image, at least 8 (8 -> 8, 28 -> 32)."""
    return max(8, 1 << math.ceil(math.log2(max(image_size))))


def to_model_space(images: np.ndarray, side: int) -> torch.Tensor:
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 3:
        raise ValueError(f"expected grey images of shape (N, H, W), got {images.shape}")
    n, h, w = images.shape
    top, left = (side - h) // 2, (side - w) // 2
    padded = np.zeros((n, 1, side, side), dtype=np.float32)  # 0 = black background, as in both datasets
    padded[:, 0, top:top + h, left:left + w] = images
    return torch.from_numpy(padded) * 2 - 1


def to_image_space(x: torch.Tensor, image_size) -> np.ndarray:
    h, w = image_size
    side = x.shape[-1]
    top, left = (side - h) // 2, (side - w) // 2
    crop = x[:, 0, top:top + h, left:left + w]
    return ((crop.clamp(-1, 1) + 1) / 2).numpy().astype(np.float32)


def check_labels(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must be in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}")
    return torch.from_numpy(labels)


def seeded_init(seed: int, build):
    """Build a module with weights drawn from `seed`, leaving the global torch RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def batches(n: int, batch_size: int, rng: np.random.Generator):
    """Endless minibatch indices: reshuffled epochs; a batch never exceeds the data."""
    batch_size = min(batch_size, n)
    while True:
        order = rng.permutation(n)
        for start in range(0, n - batch_size + 1, batch_size):
            yield torch.from_numpy(order[start:start + batch_size])


# ---------------------------------------------------------------------------------------------
# Saving and loading (shared)

def save_model(folder: Path, model: nn.Module, config: dict) -> None:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(folder / WEIGHTS))
    (folder / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))


def read_saved(kind: str, folder: Path) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    folder = Path(folder)
    config = json.loads((folder / CONFIG).read_text())
    if config.get("kind") != kind:
        raise ValueError(f"{folder} holds a {config.get('kind')!r} generator, not {kind!r}")
    return config, load_file(str(folder / WEIGHTS))


def saved_config(kind: str, image_size, num_classes: int, knobs: dict, seed: int) -> dict:
    return {"kind": kind, "image_size": list(image_size), "side": padded_side(image_size),
            "num_classes": num_classes, "knobs": knobs, "seed": seed, "format": 1}


# ---------------------------------------------------------------------------------------------
# Conditional DCGAN

class GanGeneratorNet(nn.Module):
    """(z, y) -> image: [z ; embed(y)] -> 4x4 map -> 3x3 conv -> transposed convs (BatchNorm, ReLU),
    channels halving as the size doubles; the last one makes the image (tanh)."""

    def __init__(self, side: int, num_classes: int, latent_dim: int, width: int):
        super().__init__()
        ups = int(math.log2(side)) - 2
        channels = width * 2 ** (ups - 1)
        self.start_channels = channels
        self.embed = nn.Embedding(num_classes, latent_dim)
        self.project = nn.Sequential(nn.Linear(2 * latent_dim, channels * 16, bias=False), nn.BatchNorm1d(channels * 16),
                                     nn.ReLU())
        layers = [nn.Conv2d(channels, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU()]
        for _ in range(ups - 1):
            layers += [nn.ConvTranspose2d(channels, channels // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(channels // 2),
                       nn.ReLU()]
            channels //= 2
        layers += [nn.ConvTranspose2d(channels, 1, 4, 2, 1), nn.Tanh()]
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.project(torch.cat([z, self.embed(y)], 1))
        return self.body(h.view(len(z), self.start_channels, 4, 4))


class GanDiscriminatorNet(nn.Module):
    """image, y -> realness score: strided LeakyReLU convs (BatchNorm after the first) down to 4x4,
    a 3x3 conv there, then a projection head."""

    def __init__(self, side: int, num_classes: int, width: int):
        super().__init__()
        layers, channels = [nn.Conv2d(1, width, 4, 2, 1), nn.LeakyReLU(0.2)], width
        for _ in range(int(math.log2(side)) - 3):
            layers += [nn.Conv2d(channels, channels * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(channels * 2),
                       nn.LeakyReLU(0.2)]
            channels *= 2
        layers += [nn.Conv2d(channels, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels), nn.LeakyReLU(0.2)]
        self.body = nn.Sequential(*layers, nn.Flatten())
        features = channels * 16
        self.score = nn.Linear(features, 1)
        self.embed = nn.Embedding(num_classes, features)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        return self.score(h).squeeze(1) + (self.embed(y) * h).sum(1)


def dcgan_init(module: nn.Module) -> None:
    """DCGAN's init: conv weights N(0, 0.02), BatchNorm scales N(1, 0.02)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class SavedGenerator:
    """What both generators share: a `kind`, a network built from its saved config, save / load."""
    kind = ""

    def __init__(self, net: nn.Module, config: dict):
        self.net, self.config = net.eval(), config
        self.image_size = tuple(config["image_size"])

    @staticmethod
    def build(config: dict) -> nn.Module:
        raise NotImplementedError

    @classmethod
    def load(cls, folder: Path):
        config, weights = read_saved(cls.kind, folder)
        net = cls.build(config)
        net.load_state_dict(weights)
        return cls(net, config)

    def save(self, folder: Path) -> None:
        save_model(folder, self.net, self.config)


@GENERATORS.register("gan")
class ConditionalGan(SavedGenerator):
    kind = "gan"

    @staticmethod
    def build(config: dict) -> GanGeneratorNet:
        knobs = config["knobs"]
        return GanGeneratorNet(config["side"], config["num_classes"], knobs["latent_dim"], knobs["width"])

    @classmethod
    def train(cls, images, labels, num_classes, knobs, seed, progress=True) -> "ConditionalGan":
        config = saved_config(cls.kind, images.shape[1:], num_classes, knobs, seed)
        side = config["side"]
        x, y = to_model_space(images, side), check_labels(labels, num_classes)
        gen = seeded_init(seed, lambda: cls.build(config).apply(dcgan_init))
        disc = seeded_init(seed + 1, lambda: GanDiscriminatorNet(side, num_classes, knobs["width"]).apply(dcgan_init))
        opt_g = torch.optim.Adam(gen.parameters(), lr=knobs["lr"], betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(disc.parameters(), lr=knobs["lr"], betas=(0.5, 0.999))
        noise = torch.Generator().manual_seed(seed)
        order = batches(len(x), knobs["batch_size"], np.random.default_rng(seed))
        bar = tqdm(range(knobs["steps"]), desc="train gan", disable=not progress, mininterval=2)
        for step in bar:
            idx = next(order)
            real, cls_ = x[idx], y[idx]
            fake = gen(torch.randn(len(idx), knobs["latent_dim"], generator=noise), cls_)
            d_loss = F.softplus(-disc(real, cls_)).mean() + F.softplus(disc(fake.detach(), cls_)).mean()
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            g_loss = F.softplus(-disc(fake, cls_)).mean()  # non-saturating generator loss
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
            if step % 100 == 0:
                bar.set_postfix(d=f"{d_loss.item():.3f}", g=f"{g_loss.item():.3f}")
        return cls(gen, config)

    @torch.no_grad()
    def sample(self, labels: np.ndarray, seed: int) -> np.ndarray:
        y = check_labels(labels, self.config["num_classes"])
        z = torch.randn(len(y), self.config["knobs"]["latent_dim"], generator=torch.Generator().manual_seed(seed))
        out = [self.net(z[i:i + SAMPLE_BATCH], y[i:i + SAMPLE_BATCH]) for i in range(0, len(y), SAMPLE_BATCH)]
        return to_image_space(torch.cat(out) if out else torch.zeros(0, 1, self.config["side"], self.config["side"]),
                              self.image_size)


# ---------------------------------------------------------------------------------------------
# Class-conditional DDPM

def cosine_alpha_bars(timesteps: int) -> torch.Tensor:
    """Nichol & Dhariwal 2021: alpha_bar(t) = cos^2(((t/T + s) / (1 + s)) pi/2), betas capped at 0.999."""
    s = 0.008
    f = torch.cos(((torch.arange(timesteps + 1, dtype=torch.float64) / timesteps + s) / (1 + s)) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - betas, 0).float()


def linear_alpha_bars(timesteps: int) -> torch.Tensor:
    """Ho et al. 2020's betas 1e-4..0.02 for T=1000, rescaled so fewer steps reach the same noise level."""
    scale = 1000 / timesteps
    betas = torch.linspace(scale * 1e-4, min(0.999, scale * 0.02), timesteps, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0).float()


SCHEDULES = {"cosine": cosine_alpha_bars, "linear": linear_alpha_bars}


def timestep_embedding(t: torch.Tensor, dim: int, timesteps: int) -> torch.Tensor:
    """Transformer-style sinusoids of t rescaled to 0..1000, so frequencies suit any T."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    angles = (t.float() * (1000 / timesteps))[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], 1)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the (time + class) embedding added in between."""

    def __init__(self, cin: int, cout: int, emb_dim: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(8, cin), nn.Conv2d(cin, cout, 3, 1, 1)
        self.emb = nn.Linear(emb_dim, cout)
        self.norm2, self.conv2 = nn.GroupNorm(8, cout), nn.Conv2d(cout, cout, 3, 1, 1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + self.emb(emb)[:, :, None, None]
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


def unet_patch(side: int) -> int:
    """Pixels per side folded into channels before the UNet: 2 from 16x16 up, so a 32x32 image runs
    at 16x16 (4x cheaper; what keeps CPU sampling of Fashion-MNIST within a minute)."""
    return 2 if side >= 16 else 1


class UNet(nn.Module):
    """Two-level UNet on the image folded into `patch` x `patch` pixel blocks (pixel unshuffle):
    P (w channels) -> P/2 (2w) -> P/4 (2w, two blocks) and back, with skips; P = side / patch.

    The class embedding has one extra row, `num_classes`, the "no label" of classifier-free guidance."""

    def __init__(self, num_classes: int, width: int, timesteps: int, patch: int = 1):
        super().__init__()
        w, emb_dim = width, 4 * width
        self.timesteps, self.patch = timesteps, patch
        self.time_mlp = nn.Sequential(nn.Linear(w, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_embed = nn.Embedding(num_classes + 1, emb_dim)
        self.inp = nn.Conv2d(patch * patch, w, 3, 1, 1)
        self.down1, self.pool1 = ResBlock(w, w, emb_dim), nn.Conv2d(w, w, 3, 2, 1)
        self.down2, self.pool2 = ResBlock(w, 2 * w, emb_dim), nn.Conv2d(2 * w, 2 * w, 3, 2, 1)
        self.mid1, self.mid2 = ResBlock(2 * w, 2 * w, emb_dim), ResBlock(2 * w, 2 * w, emb_dim)
        self.up2 = ResBlock(4 * w, 2 * w, emb_dim)
        self.up1 = ResBlock(3 * w, w, emb_dim)
        self.out = nn.Sequential(nn.GroupNorm(8, w), nn.SiLU(), nn.Conv2d(w, patch * patch, 3, 1, 1))
        nn.init.zeros_(self.out[-1].weight)  # start by predicting zero noise: a stable first step
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        emb = F.silu(self.time_mlp(timestep_embedding(t, self.inp.out_channels, self.timesteps)) + self.class_embed(y))
        h1 = self.down1(self.inp(F.pixel_unshuffle(x, self.patch)), emb)
        h2 = self.down2(self.pool1(h1), emb)
        h = self.mid2(self.mid1(self.pool2(h2), emb), emb)
        h = self.up2(torch.cat([F.interpolate(h, scale_factor=2.0, mode="nearest"), h2], 1), emb)
        h = self.up1(torch.cat([F.interpolate(h, scale_factor=2.0, mode="nearest"), h1], 1), emb)
        return F.pixel_shuffle(self.out(h), self.patch)


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1 - decay)


@GENERATORS.register("diffusion")
class ConditionalDiffusion(SavedGenerator):
    kind = "diffusion"

    def __init__(self, net: UNet, config: dict):
        super().__init__(net, config)
        self.knobs = config["knobs"]
        self.alpha_bars = SCHEDULES[self.knobs["schedule"]](self.knobs["timesteps"])

    @staticmethod
    def build(config: dict) -> UNet:
        knobs = config["knobs"]
        return UNet(config["num_classes"], knobs["width"], knobs["timesteps"], unet_patch(config["side"]))

    @classmethod
    def train(cls, images, labels, num_classes, knobs, seed, progress=True) -> "ConditionalDiffusion":
        import copy

        config = saved_config(cls.kind, images.shape[1:], num_classes, knobs, seed)
        x, y = to_model_space(images, config["side"]), check_labels(labels, num_classes)
        net = seeded_init(seed, lambda: cls.build(config))
        ema = copy.deepcopy(net).requires_grad_(False)
        alpha_bars = SCHEDULES[knobs["schedule"]](knobs["timesteps"])
        opt = torch.optim.Adam(net.parameters(), lr=knobs["lr"])
        warmup = min(200, knobs["steps"] // 10 + 1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
        noise = torch.Generator().manual_seed(seed)
        order = batches(len(x), knobs["batch_size"], np.random.default_rng(seed))
        bar = tqdm(range(knobs["steps"]), desc="train diffusion", disable=not progress, mininterval=2)
        for step in bar:
            idx = next(order)
            loss = cls.denoising_loss(net, x[idx], y[idx], alpha_bars, knobs, noise, num_classes)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            # Warm-up of the average (as in Keras/TF EMA) so early weights fade fast on short runs.
            update_ema(ema, net, min(knobs["ema"], (1 + step) / (10 + step)))
            if step % 100 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
        return cls(ema, config)

    @staticmethod
    def denoising_loss(net, x0, y, alpha_bars, knobs, noise, num_classes) -> torch.Tensor:
        n = len(x0)
        t = torch.randint(0, len(alpha_bars), (n,), generator=noise)
        eps = torch.randn(x0.shape, generator=noise)
        drop = torch.rand(n, generator=noise) < knobs["label_dropout"]
        y = torch.where(drop, torch.full_like(y, num_classes), y)  # "no label" for the guidance's uncond. model
        ab = alpha_bars[t][:, None, None, None]
        return F.mse_loss(net(ab.sqrt() * x0 + (1 - ab).sqrt() * eps, t, y), eps)

    def guided_eps(self, x: torch.Tensor, t: int, y: torch.Tensor) -> torch.Tensor:
        ts = torch.full((len(x),), t, dtype=torch.long)
        guidance = self.knobs["guidance"]
        if guidance == 1:
            return self.net(x, ts, y)
        null = torch.full_like(y, self.config["num_classes"])
        cond, uncond = self.net(torch.cat([x, x]), torch.cat([ts, ts]), torch.cat([y, null])).chunk(2)
        return uncond + guidance * (cond - uncond)

    def ddim(self, x: torch.Tensor, y: torch.Tensor, times: list[int]) -> torch.Tensor:
        """Deterministic DDIM (eta 0) from x at times[0] through times[1:], ending at the clean image."""
        for i, t in enumerate(times):
            ab = self.alpha_bars[t]
            ab_next = self.alpha_bars[times[i + 1]] if i + 1 < len(times) else torch.tensor(1.0)
            eps = self.guided_eps(x, t, y)
            x0 = ((x - (1 - ab).sqrt() * eps) / ab.sqrt()).clamp(-1, 1)
            eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()  # consistent with the clipped x0
            x = ab_next.sqrt() * x0 + (1 - ab_next).sqrt() * eps
        return x

    def schedule(self, start: int, steps: int) -> list[int]:
        """`steps` distinct timesteps from `start` down to 0, evenly spaced."""
        return sorted({int(round(t)) for t in np.linspace(start, 0, max(1, steps))}, reverse=True)

    @torch.no_grad()
    def sample(self, labels: np.ndarray, seed: int) -> np.ndarray:
        y = check_labels(labels, self.config["num_classes"])
        side = self.config["side"]
        x = torch.randn(len(y), 1, side, side, generator=torch.Generator().manual_seed(seed))
        times = self.schedule(self.knobs["timesteps"] - 1, self.knobs["sample_steps"])
        out = [self.ddim(x[i:i + SAMPLE_BATCH], y[i:i + SAMPLE_BATCH], times) for i in range(0, len(y), SAMPLE_BATCH)]
        return to_image_space(torch.cat(out) if out else x, self.image_size)

    @torch.no_grad()
    def variations(self, images: np.ndarray, labels: np.ndarray, strength: float, seed: int) -> np.ndarray:
        if not 0 <= strength <= 1:
            raise ValueError(f"sdedit strength={strength}: expected a value in [0, 1]")
        if tuple(images.shape[1:]) != self.image_size:
            raise ValueError(f"sdedit: images of size {images.shape[1:]}, the generator makes {self.image_size}")
        y = check_labels(labels, self.config["num_classes"])
        if len(y) != len(images):
            raise ValueError(f"sdedit: {len(images)} images but {len(y)} labels")
        x = to_model_space(images, self.config["side"])
        steps = math.ceil(strength * self.knobs["sample_steps"])
        if steps == 0:  # no noise added, nothing to denoise
            return to_image_space(x, self.image_size)
        start = min(self.knobs["timesteps"] - 1, int(round(strength * self.knobs["timesteps"])))
        ab = self.alpha_bars[start]
        eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
        x = ab.sqrt() * x + (1 - ab).sqrt() * eps
        times = self.schedule(start, steps)
        out = [self.ddim(x[i:i + SAMPLE_BATCH], y[i:i + SAMPLE_BATCH], times) for i in range(0, len(y), SAMPLE_BATCH)]
        return to_image_space(torch.cat(out), self.image_size)

# ---------------------------------------------------------------------------------------------
# Public entry points

def train_generator(kind: str, images: np.ndarray, labels: np.ndarray, num_classes: int, cfg: dict | None,
                    seed: int, progress: bool = True) -> ImageGenerator:
    """Train a class-conditional generator of `kind` on grey images (N, H, W) in [0, 1]."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 3 or len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"expected images (N, H, W) with N labels, got images {images.shape} and {len(labels)} labels")
    generator_class = GENERATORS.get(kind)
    knobs = resolve_config(kind, images.shape[1:], cfg)
    log.info("training %s generator on %d images %s, %d classes: %s", kind, len(images), images.shape[1:],
             num_classes, knobs)
    return generator_class.train(images, labels, num_classes, knobs, int(seed), progress)


def load_generator(kind: str, folder: Path) -> ImageGenerator:
    """A generator saved by `.save(folder)`, ready to sample (no retraining)."""
    return GENERATORS.get(kind).load(Path(folder))


def sdedit(gen, images: np.ndarray, labels: np.ndarray, strength: float, seed: int) -> np.ndarray:
    """SDEdit (Meng et al. 2022): noise real images to t = strength * T, denoise them conditioned on
    their labels (DDIM, ceil(strength * sample_steps) steps). strength 0 returns the inputs; larger
    strengths keep less of the original. Diffusion generators only."""
    if not isinstance(gen, ConditionalDiffusion):
        raise ValueError(f"sdedit needs a diffusion generator, got {type(gen).__name__}")
    return gen.variations(np.asarray(images, dtype=np.float32), labels, float(strength), int(seed))
