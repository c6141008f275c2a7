"""Any peft method from its YAML: the `peft` node is handed to peft's own config class for its `peft_type`.

`conf/method/lora.yaml`, `prefix.yaml`, `ia3.yaml`, `prompt.yaml`, `dora.yaml`, ... are all this one
implementation (`impl: peft`, from `conf/method/_peft.yaml`); a new peft method is one YAML file:

    defaults: [_peft, _self_]
    name: loha
    lr: 3.0e-3
    peft: {peft_type: LOHA, r: 8, alpha: 16, target_modules: [query, value]}

Every key of `peft` goes to the config class unchanged (peft's names: `lora_alpha`, `use_dora`,
`use_rslora`, ...), so peft's documentation is the reference. The few-shot (`fs_encoder`) and CLIP
(`clip_peft`) families build their adapters with the same `peft_config`.
"""
from __future__ import annotations

import dataclasses

import torch
from omegaconf import OmegaConf
from peft import PeftConfig, PeftType, PromptTuningInit, TaskType, get_peft_model
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

from . import METHODS
from .classifier import SequenceClassifierMethod


def peft_types() -> list[str]:
    return sorted(str(getattr(t, "value", t)) for t in PEFT_TYPE_TO_CONFIG_MAPPING)


def peft_config(node, defaults: dict | None = None, overrides: dict | None = None) -> PeftConfig:
    """peft's config object for `node` (the method's `peft` node): `defaults` under it, `overrides` over it."""
    values = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node or {})
    kind = str(values.pop("peft_type", "")).upper()
    if kind not in peft_types():
        raise ValueError(f"method.peft.peft_type={kind or None!r}: expected one of peft's types ({', '.join(peft_types())})")
    config_class = PEFT_TYPE_TO_CONFIG_MAPPING[kind]
    values = {**(defaults or {}), **values, **(overrides or {})}
    try:
        return config_class(**values)
    except (TypeError, ValueError) as e:
        raise ValueError(f"method.peft ({kind}): peft's {config_class.__name__} rejected {values}: {e}") from e


def linear_module_names(net) -> list[str]:
    return sorted({name.split(".")[-1] for name, m in net.named_modules() if isinstance(m, torch.nn.Linear)})


def wrap(net, config: PeftConfig, method_name: str):
    """get_peft_model, with an error that lists the layer names a target could match."""
    try:
        return get_peft_model(net, config)
    except ValueError as e:
        raise ValueError(
            f"method={method_name}: peft could not adapt {type(net).__name__} "
            f"(target modules {getattr(config, 'target_modules', None)}); linear modules of this model "
            f"are named {linear_module_names(net)}. peft said: {e}"
        ) from e


def _init_text_tokenizer(net, node) -> dict:
    """Prompt tuning's TEXT init embeds `prompt_tuning_init_text` with a tokenizer; peft needs its path even when it
    is the model's own, so that is the default (the folder or hub name the model was loaded from)."""
    if str(node.get("prompt_tuning_init", "")).upper() != "TEXT" or node.get("tokenizer_name_or_path"):
        return {}
    return {"tokenizer_name_or_path": _model_source(net)}


def _model_source(net) -> str:
    """The folder or hub name the model was loaded from (where its tokenizer is)."""
    source = getattr(net, "name_or_path", None) or getattr(getattr(net, "config", None), "_name_or_path", None)
    if not source:
        raise ValueError("method.peft.prompt_tuning_init=TEXT: set method.peft.tokenizer_name_or_path (this model "
                         "does not say where it was loaded from)")
    return str(source)


def _is_causal_lm(net) -> bool:
    return bool(getattr(net, "can_generate", lambda: False)())


@METHODS.register("peft")
class PeftMethod(SequenceClassifierMethod):
    """A classifier with a peft adapter; the new classification head trains fully (peft's modules_to_save)."""

    name = "peft"
    modalities = ("text", "image")

    def adapt(self, net, method_cfg):
        from tunebench.core.image_models import ImageClassifier

        if isinstance(net, ImageClassifier):
            return self._adapt_image(net, method_cfg)
        if _is_causal_lm(net):
            return self._adapt_causal(net, method_cfg)
        # task_type SEQ_CLS makes peft train the new classifier head too (modules_to_save: it knows `classifier`
        # and `score`; T5-family classifiers call theirs `classification_head`).
        defaults = {"task_type": TaskType.SEQ_CLS, **_init_text_tokenizer(net, method_cfg.peft)}
        if hasattr(net, "classification_head"):
            defaults["modules_to_save"] = ["classification_head"]
        return wrap(net, peft_config(method_cfg.peft, defaults=defaults,
                                     overrides=self._step_placeholders(method_cfg.peft)), self.name)

    def _adapt_causal(self, net, m):
        """A decoder: peft's CAUSAL_LM task type. Layer names differ from the encoder's (q_proj, not query), so
        the YAML's target lists give way to `method.decoder_target_modules`, or else to peft's defaults for
        the architecture (LoRA: q_proj / v_proj; IA3: k_proj / v_proj / down_proj); prompt and prefix tuning
        take `method.decoder_virtual_tokens` when set."""
        overrides = {key: None for key in ("target_modules", "feedforward_modules") if m.peft.get(key) is not None}
        if m.get("decoder_target_modules") is not None:
            overrides["target_modules"] = list(m.decoder_target_modules)
        if m.get("decoder_virtual_tokens") is not None:  # prompt / prefix tuning: room for the task's instruction
            overrides["num_virtual_tokens"] = int(m.decoder_virtual_tokens)
        overrides.update(self._step_placeholders(m.peft))
        defaults = {"task_type": TaskType.CAUSAL_LM, **_init_text_tokenizer(net, m.peft)}
        return wrap(net, peft_config(m.peft, defaults=defaults, overrides=overrides), self.name)

    def _step_placeholders(self, node) -> dict:
        """AdaLoRA's `total_step: auto`: a valid placeholder now, the run's step count in before_training."""
        self.total_step_auto = str(node.get("total_step")) == "auto"
        if not self.total_step_auto:
            return {}
        peft_default = {f.name: f.default for f in dataclasses.fields(PEFT_TYPE_TO_CONFIG_MAPPING["ADALORA"])}
        tinit, tfinal = (int(node.get(key, peft_default[key])) for key in ("tinit", "tfinal"))
        return {"total_step": tinit + tfinal + 1}

    def before_training(self, net, steps: int) -> None:
        if getattr(self, "total_step_auto", False):
            config = net.peft_config["default"]
            if config.tinit >= steps - config.tfinal:
                raise ValueError(f"method.peft: AdaLoRA needs tinit ({config.tinit}) < total steps ({steps}) - tfinal "
                                 f"({config.tfinal}); lower them or train longer")
            config.total_step = steps
            net.base_model.rankallocator.set_total_step(steps)

    def start_from_instruction(self, net, tokenizer, instruction: str) -> None:
        """A learned prompt that starts as the task's instruction rather than at random, with peft's own
        initialisers: prompt tuning's TEXT init (the instruction's token embeddings, repeated or cut to the
        virtual tokens) and, for prefix tuning, the base model's keys and values of the instruction (peft's
        initialize_kv_prefix_from_text, as peft's method comparison initialises its prefix-tuning run)."""
        config = net.peft_config[net.active_adapter]
        if config.peft_type == PeftType.PROMPT_TUNING:
            from peft.tuners.prompt_tuning.model import PromptEmbedding

            config.prompt_tuning_init, config.prompt_tuning_init_text = PromptTuningInit.TEXT, instruction
            config.tokenizer_name_or_path = config.tokenizer_name_or_path or _model_source(net)
            start = PromptEmbedding(config, net.word_embeddings).embedding.weight
            net.prompt_encoder[net.active_adapter].embedding.weight.data.copy_(start)
        elif config.peft_type == PeftType.PREFIX_TUNING:
            from peft.tuners.cartridge.utils import initialize_kv_prefix_from_text

            try:
                initialize_kv_prefix_from_text(net, tokenizer, text=instruction)
            except ValueError as e:
                raise ValueError(f"method={self.name}: generation_init=instruction: {e} The instruction (in the model's "
                                 f"chat template, if it has one) needs at least the prefix's {config.num_virtual_tokens} "
                                 f"virtual tokens (method.decoder_virtual_tokens)") from e
        else:
            super().start_from_instruction(net, tokenizer, instruction)

    def _adapt_image(self, net, m):
        from tunebench.core.image_models import add_visual_prompt, conv_and_linear_names

        if m.get("image_adapter") == "visual_prompt":
            # A convolutional model has no tokens to prefix; its counterpart is visual prompting (Bahng et al.
            # 2022): a learnable frame of `image_prompt_width` pixels added to every input image, backbone frozen.
            return add_visual_prompt(net, tuple(net.input_shape), int(m.get("image_prompt_width", 3)))
        if peft_config(m.peft).is_prompt_learning:
            raise ValueError(f"method={self.name}: peft's {m.peft.peft_type} adds virtual tokens and an image model has "
                             f"none; set method.image_adapter=visual_prompt (a learnable input frame) or use a layer adapter")
        # Layer adapters on the conv / linear layers (method.image_target_modules, default all of them);
        # the new head trains fully, as for text.
        targets = list(m.get("image_target_modules") or conv_and_linear_names(net))
        config = peft_config(m.peft, overrides={"target_modules": targets, "modules_to_save": ["task_head"]})
        return wrap(net, config, self.name)
