"""The config `tunebench run` would compose for a command line, composed without running it (Hydra's compose API,
with the basic sweeper: the project's sweeper is registered only by the run itself)."""
from __future__ import annotations


def compose_config(overrides: list[str], hydra_config: bool = False):
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module("tunebench.conf", version_base="1.3"):
        return compose("config", overrides=[*overrides, "hydra/sweeper=basic"], return_hydra_config=hydra_config)


def split_overrides(overrides: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """(the fixed overrides, the swept keys with their values) of a command line, Hydra's grammar."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    fixed, swept = [], {}
    for text, parsed in zip(overrides, OverridesParser.create().parse_overrides(overrides)):
        if parsed.is_sweep_override():
            swept[parsed.get_key_element()] = list(parsed.sweep_string_iterator())
        else:
            fixed.append(text)
    return fixed, swept
