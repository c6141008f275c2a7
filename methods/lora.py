"""LoRA (Hu et al., 2021) through peft: low-rank updates on the chosen projection matrices."""
from peft import LoraConfig

from . import METHODS
from .peft_base import PeftMethod


@METHODS.register("lora")
class LoRA(PeftMethod):
    name = "lora"

    def peft_config(self, cfg):
        return LoraConfig(
            task_type=self.task_type(),
            r=int(cfg.r),
            lora_alpha=int(cfg.alpha),
            lora_dropout=float(cfg.dropout),
            target_modules=list(cfg.target_modules),
        )
