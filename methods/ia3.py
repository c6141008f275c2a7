"""IA3 (Liu et al., 2022) through peft: learned rescaling of keys, values and feed-forward activations."""
from peft import IA3Config

from . import METHODS
from .peft_base import PeftMethod


@METHODS.register("ia3")
class IA3(PeftMethod):
    name = "ia3"

    def peft_config(self, cfg):
        # None lets peft pick its per-architecture defaults (BERT: key, value, output.dense).
        targets = list(cfg.target_modules) if cfg.get("target_modules") else None
        ff = list(cfg.feedforward_modules) if cfg.get("feedforward_modules") else None
        return IA3Config(task_type=self.task_type(), target_modules=targets, feedforward_modules=ff)
