"""Prompt tuning (Lester et al., 2021) through peft: trainable soft tokens before the input only."""
from peft import PromptTuningConfig, PromptTuningInit

from . import METHODS
from .peft_base import PeftMethod


@METHODS.register("prompt")
class PromptTuning(PeftMethod):
    name = "prompt"

    def peft_config(self, cfg):
        return PromptTuningConfig(
            task_type=self.task_type(),
            num_virtual_tokens=int(cfg.num_virtual_tokens),
            prompt_tuning_init=PromptTuningInit.RANDOM,
        )
