"""The run config checked before any work: every value that a run would otherwise reject deep inside a
library (`Invalid learning rate: -1.0`, `range() arg 3 must not be zero`) fails here in one line that
names the key, the value and what is allowed.

The schemas are pydantic models over the keys the shared code reads; a group's other keys (a method's
own knobs, a refinement's settings) pass through to the plugin that owns them. `train.*` is checked by
`TrainSettings` (bench/core/engine.py), the engine's typed view of it.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from omegaconf import OmegaConf
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ConfigError(ValueError):
    """A config value that a run cannot use; the message names the key."""


PositiveNumber = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Size = Annotated[float, Field(gt=0)] | None  # a count, or a fraction (< 1) of the examples


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class RootKeys(_Open):
    seed: Annotated[int, Field(ge=0, strict=True)]  # strict: `seed=true` is not seed 1
    force: bool
    count_only: bool
    save_model: bool = False
    threads: Annotated[int, Field(ge=1)] | None = None
    cell_process: Literal["auto", True, False] = "auto"


class MethodKeys(_Open):
    name: str
    lr: PositiveNumber | None = None
    image_lr: PositiveNumber | None = None
    generation_lr: PositiveNumber | None = None
    weight_decay: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    warmup_ratio: Annotated[float, Field(ge=0, le=1)] | None = None


class DataKeys(_Open):
    name: str
    train_size: Size = None
    validation_size: Size = None
    test_size: Size = None
    pool_size: Annotated[float, Field(ge=0)] | None = None
    max_length: Annotated[int, Field(ge=1)] | None = None
    max_new_tokens: Annotated[int, Field(ge=1)] | None = None


class DecideKeys(_Open):
    """Sequential seeds (tunebench.app.sequential): the looks a sweep's claim will make."""
    max_seeds: Annotated[int, Field(ge=2, strict=True)] | None = None
    first_seeds: Annotated[int, Field(ge=2, strict=True)] = 2
    round_seeds: Annotated[int, Field(ge=1, strict=True)] = 1
    spending: Literal["obrien_fleming", "pocock"] = "obrien_fleming"
    parts: list[Literal["accuracy", "memory", "time", "communication"]] = ["accuracy", "memory", "time"]


class ClaimKeys(_Open):
    primary: list[Annotated[str, Field(pattern=r"^[^:\s]+:(accuracy|memory|time|communication)$")]] = []


SCHEMAS: dict[str | None, type[BaseModel]] = {None: RootKeys, "method": MethodKeys, "data": DataKeys, "decide": DecideKeys,
                                              "claim": ClaimKeys}
EXPECTED = {  # pydantic's error types, said as what the key accepts
    "greater_than": "a number > {gt}", "greater_than_equal": "a number >= {ge}", "less_than_equal": "a number <= {le}",
    "int_parsing": "a whole number", "int_from_float": "a whole number", "int_type": "a whole number", "float_parsing": "a number",
    "bool_parsing": "true or false", "bool_type": "true or false", "finite_number": "a finite number",
    "string_type": "a string", "missing": "a value (the key is missing)", "list_type": "a list",
    "string_pattern_mismatch": "method:part with part accuracy | memory | time | communication (e.g. lora:accuracy)",
    "literal_error": "one of {expected}",
}


def _expected(error: dict) -> str:
    template = EXPECTED.get(error["type"])
    return template.format(**error.get("ctx", {})) if template else error["msg"]


def check_run_config(cfg) -> None:
    """Raise ConfigError naming the first bad key of the root, `method` and `data` nodes."""
    for group, schema in SCHEMAS.items():
        node = cfg if group is None else cfg.get(group)
        if node is None:
            continue
        values = _plain(node, group)
        try:
            schema.model_validate(values)
        except ValidationError as e:
            error = e.errors()[0]
            key = ".".join([*([group] if group else []), *map(str, error["loc"])])
            value = _at(values, error["loc"])
            raise ConfigError(f"{key}={value!r}: expected {_expected(error)}") from None
    _check_train(cfg.get("train"))
    decide = cfg.get("decide") or {}
    if decide.get("max_seeds") is not None and int(decide.get("first_seeds", 2)) > int(decide["max_seeds"]):
        raise ConfigError(f"decide.first_seeds={decide['first_seeds']} is above decide.max_seeds={decide['max_seeds']}: "
                          f"the first look cannot come after the last")


def _check_train(train) -> None:
    """`train.*` through the engine's own typed view (TrainSettings), so a key read before the run starts (processes,
    checkpoint_every, dist_timeout_s) is refused here in one line too."""
    if train is None:
        return
    from tunebench.core.engine import TrainSettings

    try:
        TrainSettings.from_config(OmegaConf.to_container(train, resolve=True) if OmegaConf.is_config(train) else train)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _at(values: dict, loc: tuple) -> Any:
    """The value at a pydantic error location (a key, then list indices), or `<missing>`."""
    value: Any = values
    for step in loc:
        try:
            value = value[step]
        except (KeyError, IndexError, TypeError):
            return "<missing>"
    return value


def _plain(node, group: str | None) -> dict[str, Any]:
    """The node's values (at the root, sub-nodes are other groups' business); `???` is named."""
    if not OmegaConf.is_config(node):
        return dict(node)
    values = {}
    for key in node:
        if OmegaConf.is_missing(node, key):
            raise ConfigError(f"{f'{group}.' if group else ''}{key}=???: expected a value (the config leaves it "
                              f"mandatory: give it on the command line, e.g. {f'{group}.' if group else ''}{key}=...)")
        value = node[key]
        if not (group is None and OmegaConf.is_config(value)):
            values[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return values
