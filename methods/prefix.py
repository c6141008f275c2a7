"""Prefix tuning (Li & Liang, 2021) through peft: trainable key/value prefixes in every layer.

A convolutional image model has no tokens to prefix; its counterpart is visual prompting (Bahng et
al. 2022): a learnable frame of `method.image_prompt_width` pixels added to every input image, with
the backbone frozen and the task head trained (the record names it under `adapter`)."""
from peft import PrefixTuningConfig

from . import METHODS
from .peft_base import PeftMethod


@METHODS.register("prefix")
class PrefixTuning(PeftMethod):
    name = "prefix"
    modalities = ("text", "image")

    def adapt(self, net, cfg):
        from tunebench.image_models import ImageClassifier, add_visual_prompt

        if not isinstance(net, ImageClassifier):
            return super().adapt(net, cfg)
        return add_visual_prompt(net, tuple(net.input_shape), int(cfg.get("image_prompt_width", 3)))

    def peft_config(self, cfg):
        extra = {"encoder_hidden_size": int(cfg.projection_hidden_size)} if cfg.get("projection_hidden_size") else {}
        return PrefixTuningConfig(
            task_type=self.task_type(),
            num_virtual_tokens=int(cfg.num_virtual_tokens),
            prefix_projection=bool(cfg.prefix_projection),
            **extra,
        )
