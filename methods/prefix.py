"""Prefix tuning (Li & Liang, 2021) through peft: trainable key/value prefixes in every layer."""
from peft import PrefixTuningConfig

from . import METHODS
from .peft_base import PeftMethod


@METHODS.register("prefix")
class PrefixTuning(PeftMethod):
    name = "prefix"

    def peft_config(self, cfg):
        extra = {"encoder_hidden_size": int(cfg.projection_hidden_size)} if cfg.get("projection_hidden_size") else {}
        return PrefixTuningConfig(
            task_type=self.task_type(),
            num_virtual_tokens=int(cfg.num_virtual_tokens),
            prefix_projection=bool(cfg.prefix_projection),
            **extra,
        )
