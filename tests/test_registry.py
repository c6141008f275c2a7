import pytest

from tunebench.datasets import TASKS
from tunebench.datasets.refine import REFINEMENTS
from tunebench.methods import METHODS
from tunebench.core.registry import Registry, UnknownNameError


def test_unknown_method_implementation_lists_available_ones():
    from omegaconf import OmegaConf

    from tunebench.methods import method_for

    with pytest.raises(UnknownNameError) as info:
        method_for(OmegaConf.create({"name": "mine", "impl": "nosuch"}))
    message = str(info.value)
    assert "unknown method 'nosuch'" in message
    for name in ("full", "peft", "maml", "continual", "clip_peft"):
        assert name in message


def test_builtin_registries_hold_the_core_slice():
    assert {"full", "peft", "maml", "fs_encoder", "continual", "clip_peft"} <= set(METHODS.names())
    assert {"rotten_tomatoes", "imdb", "files", "hf"} <= set(TASKS.names())
    assert "none" in REFINEMENTS.names()


def test_registering_a_different_object_under_a_taken_name_fails():
    registry = Registry("thing")
    registry.register("a")(object())
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("a")(object())
