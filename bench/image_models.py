"""Image classifiers with the same interface as the HF text classifiers the methods train:
`net(pixel_values=..., labels=...)` returns an output with `.loss` and `.logits`, and
`net.save_pretrained(folder)` writes safetensors."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from tunebench.registry import Registry

# name -> builder(num_classes, channels) -> ImageClassifier
IMAGE_MODELS = Registry("image model")


class ImageClassifier(nn.Module):
    """A feature extractor (`body`) and a linear classification `head`."""

    def __init__(self, body: nn.Module, feature_dim: int, num_classes: int):
        super().__init__()
        self.body, self.head = body, nn.Linear(feature_dim, num_classes)

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **_) -> SequenceClassifierOutput:
        logits = self.head(self.body(pixel_values))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def save_pretrained(self, out_dir: str) -> None:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(Path(out_dir) / "model.safetensors"))


@IMAGE_MODELS.register("small-cnn")
def small_cnn(num_classes: int, channels: int = 1) -> ImageClassifier:
    """Two conv layers and a hidden linear layer: 38,282 parameters with a 10-class head, for 8x8 digits and fast tests."""
    body = nn.Sequential(
        nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.LazyLinear(64), nn.ReLU(),
    )
    return ImageClassifier(body, 64, num_classes)


def conv_and_linear_names(net: nn.Module, exclude: tuple[str, ...] = ("head",)) -> list[str]:
    """Dotted names of the Conv2d / Linear layers (where LoRA can go), the head excluded."""
    return [name for name, m in net.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and not name.split(".")[0] in exclude]
