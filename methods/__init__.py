"""Fine-tuning methods. Every module of this package is imported on first lookup and registers its
implementations; a method's YAML (`conf/method/<name>.yaml`) names one with `impl` (default: its name)."""
from tunebench.core.registry import Registry

METHODS: Registry = Registry("method", package=__name__)


def method_for(method_cfg):
    """The implementation that a method's YAML names, carrying the YAML's name (and modalities, if it sets them)."""
    if not method_cfg.get("name"):
        raise ValueError(f"method={method_cfg.get('impl', '?')}: conf/method/_*.yaml files hold defaults shared by several "
                         f"methods, not a method; choose a method YAML (tunebench run --help lists them)")
    method = METHODS.get(str(method_cfg.get("impl") or method_cfg.name))()
    method.name = str(method_cfg.name)
    if method_cfg.get("modalities"):
        method.modalities = tuple(str(m) for m in method_cfg.modalities)
    return method
