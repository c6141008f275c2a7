import pytest

from tunebench.datasets import TASKS
from tunebench.datasets.refine import REFINEMENTS
from tunebench.methods import METHODS
from tunebench.registry import Registry, UnknownNameError


def test_unknown_method_lists_available_ones():
    with pytest.raises(UnknownNameError) as info:
        METHODS.get("nosuch")
    message = str(info.value)
    assert "unknown method 'nosuch'" in message
    for name in ("full", "lora", "prefix", "ia3", "prompt"):
        assert name in message


def test_builtin_registries_hold_the_core_slice():
    assert {"full", "lora", "prefix", "ia3", "prompt"} <= set(METHODS.names())
    assert {"rotten_tomatoes", "imdb", "files", "hf"} <= set(TASKS.names())
    assert "none" in REFINEMENTS.names()


def test_registering_a_different_object_under_a_taken_name_fails():
    registry = Registry("thing")
    registry.register("a")(object())
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("a")(object())
