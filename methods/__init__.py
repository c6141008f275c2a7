"""Fine-tuning methods. Each module registers one method; configs name it with `method.name`."""
from tunebench.registry import Registry

METHODS: Registry = Registry(
    "method",
    plugin_modules=(
        "tunebench.methods.full",
        "tunebench.methods.lora",
        "tunebench.methods.prefix",
        "tunebench.methods.ia3",
        "tunebench.methods.prompt",
        "tunebench.methods.continual",
        "tunebench.methods.fewshot",
        "tunebench.methods.clip",
    ),
)
