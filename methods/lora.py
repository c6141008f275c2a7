"""LoRA (Hu et al., 2021) through peft: low-rank updates on the chosen projection matrices."""
from peft import LoraConfig

from . import METHODS
from .peft_base import PeftMethod


@METHODS.register("lora")
class LoRA(PeftMethod):
    name = "lora"
    modalities = ("text", "image")

    def adapt(self, net, cfg):
        from tunebench.image_models import ImageClassifier, conv_and_linear_names

        if not isinstance(net, ImageClassifier):
            return super().adapt(net, cfg)
        # Images: LoRA on the conv / linear layers (method.image_target_modules, default all of them);
        # the new head trains fully, as for text (peft's modules_to_save).
        targets = list(cfg.get("image_target_modules") or conv_and_linear_names(net))
        config = LoraConfig(r=int(cfg.r), lora_alpha=int(cfg.alpha), lora_dropout=float(cfg.dropout),
                            target_modules=targets, modules_to_save=["task_head"])
        return self.wrap(net, config, targets)

    def peft_config(self, cfg):
        return LoraConfig(
            task_type=self.task_type(),
            r=int(cfg.r),
            lora_alpha=int(cfg.alpha),
            lora_dropout=float(cfg.dropout),
            target_modules=list(cfg.target_modules),
        )
