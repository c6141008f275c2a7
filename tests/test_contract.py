"""Config groups and registries agree: every YAML resolves to a registered implementation, every
registered implementation has a YAML, and the YAML's stem is the name it registers or is run as."""

import pytest

from tunebench.core.configs import compose_group

from .conftest import ROOT


def options(group: str, shared: bool = False) -> list[str]:
    """The YAML stems of a group; `_name.yaml` files are shared defaults, not options."""
    stems = sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))
    return [s for s in stems if shared or not s.startswith("_")]


def test_every_method_yaml_is_named_after_its_file_and_resolves_to_a_registered_implementation():
    from tunebench.methods import METHODS, method_for

    for stem in options("method"):
        cfg = compose_group("method", stem)
        assert cfg.name == stem, f"conf/method/{stem}.yaml has name: {cfg.name}"
        method = method_for(cfg)  # raises, listing the known names, if `impl` is not registered
        assert method.name == stem


def test_a_shared_defaults_file_is_not_a_method():
    from tunebench.methods import method_for

    with pytest.raises(ValueError, match=r"conf/method/_\*.yaml files hold defaults shared by several methods, not a method"):
        method_for(compose_group("method", "_peft"))


def test_every_registered_method_is_used_by_a_yaml():
    from omegaconf import OmegaConf

    from tunebench.methods import METHODS

    used = set()
    for stem in options("method", shared=True):
        raw = OmegaConf.load(ROOT / "conf" / "method" / f"{stem}.yaml")
        used.add(str(raw.get("impl") or raw.get("name")))
    assert set(METHODS.names()) <= used, f"registered without a YAML: {sorted(set(METHODS.names()) - used)}"


@pytest.mark.parametrize("group, registry", [("data", "tunebench.datasets:TASKS"),
                                             ("refine", "tunebench.datasets.refine:REFINEMENTS"),
                                             ("logger", "tunebench.core.loggers:LOGGERS")])
def test_data_refinement_and_logger_yamls_match_their_registries(group, registry):
    import importlib

    module, name = registry.split(":")
    names = set(getattr(importlib.import_module(module), name).names())
    stems = set(options(group))
    for stem in stems:
        node = compose_group(group, stem)
        node = node[stem] if group == "refine" else node  # refinements compose under refine.<name>
        assert node.name == stem, f"conf/{group}/{stem}.yaml has name: {node.name}"
    assert stems == names, f"YAML without registration: {sorted(stems - names)}; registration without YAML: {sorted(names - stems)}"


def test_model_yamls_are_named_after_their_files_and_every_packaged_model_has_one():
    """`model.name` is what to load: a packaged model (its YAML stem), or for `model=hf` a hub name or folder."""
    from tunebench.core.clip_models import PACKAGED_TOWERS
    from tunebench.core.image_models import IMAGE_MODELS
    from tunebench.core.models import PACKAGED

    stems = set(options("model"))
    for stem in stems - {"hf"}:
        assert compose_group("model", stem).name == stem, f"conf/model/{stem}.yaml has name: {compose_group('model', stem).name}"
    packaged = set(PACKAGED.names()) | set(IMAGE_MODELS.names()) | set(PACKAGED_TOWERS.names())
    assert packaged <= stems, f"packaged models without a YAML: {sorted(packaged - stems)}"


def test_plugins_are_found_without_a_list_a_new_module_registers_itself(tmp_path, monkeypatch):
    """A registry given a package imports every module in it: dropping a module in is enough."""
    import sys

    from tunebench.core.registry import Registry

    package = tmp_path / "myplugins"
    package.mkdir()
    (package / "__init__.py").write_text("from tunebench.core.registry import Registry\nTHINGS = Registry('thing', package=__name__)\n")
    (package / "alpha.py").write_text("from . import THINGS\n@THINGS.register('alpha')\ndef alpha():\n    return 1\n")
    (package / "beta.py").write_text("from . import THINGS\nTHINGS.register('beta')(lambda: 2)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from myplugins import THINGS  # noqa: E402

    assert isinstance(THINGS, Registry) and THINGS.names() == ["alpha", "beta"] and THINGS.get("beta")() == 2
    with pytest.raises(KeyError, match="unknown thing 'gamma'; available things: alpha, beta"):
        THINGS.get("gamma")
    sys.modules.pop("myplugins", None)
