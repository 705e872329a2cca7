"""The search space file: configuration keys with choices, int ranges and float ranges.

A space file is a YAML mapping from dotted configuration keys (the keys of
:mod:`medclf.config`, as in ``--set``) to what a trial may try::

    train.lr: {low: 1.0e-4, high: 1.0e-2, log: true}     # float range, log scale
    train.batch_size: {low: 8, high: 32, step: 8}         # int range (ints in low/high)
    train.optimizer: [adamw, sgd]                         # choices (short form)
    model.filters: {choices: [[8, 16, 32], [16, 32, 64]]} # choices may be lists
    model.dropout: {low: 0.0, high: 0.5, step: 0.25}      # float range on a grid of step

A range is float when ``low`` or ``high`` is a float (or ``type: float`` is given), int
otherwise. The grid sampler needs finite values: choices, ranges with ``step``, or float
ranges with ``n`` points (log-spaced when ``log: true``). Every key and every value is
checked against the configuration schema before a trial runs.
"""
from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel

from ..config import Config, validate
from ..errors import ConfigError

RANGE_KEYS = {"type", "low", "high", "step", "log", "n"}


@dataclass
class Param:
    """One searched configuration key.

    Attributes:
        key: dotted configuration key, e.g. ``train.lr``.
        kind: ``'choice'``, ``'int'`` or ``'float'``.
        choices: the values of a ``'choice'`` parameter (any YAML values).
        low, high: bounds of a range (inclusive).
        step: grid step of a range, or None.
        log: sample the range on a log scale.
        n: number of grid points of a float range without step (grid sampler only).
    """

    key: str
    kind: str
    choices: list | None = None
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    n: int | None = None

    def suggest(self, trial) -> Any:
        """Ask an Optuna trial for a value; returns the configuration value."""
        if self.kind == "choice":
            encoded = trial.suggest_categorical(self.key, [encode(c) for c in self.choices])
            return decode(encoded, self.choices)
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1),
                                     log=self.log)
        if self.step is not None:
            return trial.suggest_float(self.key, float(self.low), float(self.high), step=float(self.step))
        return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.log)

    def grid(self) -> list:
        """The finite list of (Optuna-encoded) values of this parameter for a grid search.

        Raises:
            ConfigError: a float range with neither ``step`` nor ``n``.
        """
        if self.kind == "choice":
            return [encode(c) for c in self.choices]
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.step is not None:
            count = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
            return [round(self.low + i * self.step, 12) for i in range(count)]
        if self.n is None:
            raise ConfigError(f"{self.key}: a grid search needs finite values: give choices, "
                              f"a step, or n (number of points) for this float range")
        points = (np.geomspace if self.log else np.linspace)(self.low, self.high, self.n)
        return [float(f"{p:.6g}") for p in points]


def encode(value: Any) -> Any:
    """Optuna categorical values must be None, bool, int, float or str: lists become JSON."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value)


def decode(encoded: Any, choices: list) -> Any:
    for choice in choices:
        if encode(choice) == encoded:
            return copy.deepcopy(choice)
    return encoded


def set_dotted(tree: dict, key: str, value: Any) -> dict:
    """Set ``a.b.c = value`` in a nested dict (in place); returns the tree."""
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return tree


def params_to_tree(values: dict[str, Any]) -> dict:
    """``{"train.lr": 1e-3, "model.dropout": 0.2}`` -> ``{"train": {"lr": 1e-3}, "model": {...}}``."""
    tree: dict = {}
    for key, value in values.items():
        set_dotted(tree, key, value)
    return tree


def _check_key(key: str, where: str) -> None:
    """The dotted key must name a leaf (not a section) of the configuration schema."""
    model: type[BaseModel] = Config
    parts = key.split(".")
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            prefix = ".".join(parts[:i]) or "the top level"
            raise ConfigError(f"{where}: {key}: unknown configuration key ({part!r} is not a key of "
                              f"{prefix}; allowed: {', '.join(model.model_fields)})")
        annotation = field.annotation
        is_section = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if i < len(parts) - 1:
            if not is_section:
                raise ConfigError(f"{where}: {key}: {'.'.join(parts[:i + 1])} is a value, not a section")
            model = annotation
        elif is_section:
            raise ConfigError(f"{where}: {key} is a section; name one of its keys: "
                              f"{', '.join(key + '.' + k for k in annotation.model_fields)}")


def _check_value(key: str, value: Any, where: str) -> None:
    """Validate one value of a key against the schema; the error names the file and key."""
    try:
        validate(set_dotted({}, key, value))
    except ConfigError as err:
        detail = str(err).replace("invalid configuration:", "").strip()
        raise ConfigError(f"{where}: {key}: value {value!r} is not allowed: {detail}") from None


def _number(key: str, name: str, value: Any, where: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            return float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {key}: {name} must be a number, got {value!r}") from None
    return value


def parse_param(key: str, spec: Any, where: str) -> Param:
    """One entry of a space file -> :class:`Param` (checked against the schema).

    Raises:
        ConfigError: unknown key, malformed entry, empty range or a value the schema rejects.
    """
    if not isinstance(key, str) or not key:
        raise ConfigError(f"{where}: keys must be dotted configuration keys like train.lr, got {key!r}")
    _check_key(key, where)
    if isinstance(spec, list):
        spec = {"choices": spec}
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: {key}: expected a list of choices or a mapping with choices or "
                          f"low/high, got {spec!r}")
    if "choices" in spec:
        extra = set(spec) - {"choices"}
        if extra:
            raise ConfigError(f"{where}: {key}: choices cannot be combined with {', '.join(sorted(extra))}")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: {key}: empty choices: give at least one value")
        encoded = [encode(c) for c in choices]
        if len(set(map(repr, encoded))) != len(encoded):
            raise ConfigError(f"{where}: {key}: choices repeat a value: {choices!r}")
        for choice in choices:
            _check_value(key, choice, where)
        return Param(key, "choice", choices=list(choices))
    unknown = set(spec) - RANGE_KEYS
    if unknown:
        raise ConfigError(f"{where}: {key}: unknown field(s) {', '.join(sorted(map(str, unknown)))}; a range "
                          f"has {', '.join(sorted(RANGE_KEYS))}, or give choices")
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where}: {key}: a range needs both low and high (or give choices)")
    low = _number(key, "low", spec["low"], where)
    high = _number(key, "high", spec["high"], where)
    kind = spec.get("type") or ("float" if any(isinstance(v, float) for v in (low, high, spec.get("step")))
                                else "int")
    if kind not in ("int", "float"):
        raise ConfigError(f"{where}: {key}: type must be int or float, got {kind!r}")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: {key}: log must be true or false, got {log!r}")
    step = spec.get("step")
    if step is not None:
        step = _number(key, "step", step, where)
        if step <= 0:
            raise ConfigError(f"{where}: {key}: step must be > 0, got {step}")
        if log:
            raise ConfigError(f"{where}: {key}: step and log cannot be combined")
    n = spec.get("n")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ConfigError(f"{where}: {key}: n (grid points) must be a positive integer, got {n!r}")
    if kind == "int" and (int(low) != low or int(high) != high or (step is not None and int(step) != step)):
        raise ConfigError(f"{where}: {key}: an int range needs integer low, high and step")
    if not math.isfinite(low) or not math.isfinite(high):
        raise ConfigError(f"{where}: {key}: low and high must be finite")
    if low > high:
        raise ConfigError(f"{where}: {key}: empty range: low ({low}) > high ({high})")
    if log and low <= 0:
        raise ConfigError(f"{where}: {key}: a log range needs low > 0, got {low}")
    for value in (low, high):
        _check_value(key, int(value) if kind == "int" else float(value), where)
    return Param(key, kind, low=int(low) if kind == "int" else float(low),
                 high=int(high) if kind == "int" else float(high), step=step, log=log, n=n)


@dataclass
class SearchSpace:
    """The parsed space file: an ordered list of :class:`Param`."""

    params: list[Param]
    source: str = ""

    def suggest(self, trial) -> dict[str, Any]:
        """``{dotted key: value}`` for one trial (values as the configuration takes them)."""
        return {p.key: p.suggest(trial) for p in self.params}

    def grid(self) -> dict[str, list]:
        """Optuna GridSampler search space ``{key: [encoded values]}``."""
        return {p.key: p.grid() for p in self.params}

    def grid_size(self) -> int:
        return int(np.prod([len(v) for v in self.grid().values()]))

    def describe(self) -> dict:
        """A JSON-able description (stored in the study to check that a resume uses the same space)."""
        return {p.key: {k: v for k, v in vars(p).items() if k != "key" and v is not None} for p in self.params}


def load_space(path: str | os.PathLike) -> SearchSpace:
    """Read and validate a space file.

    Raises:
        ConfigError: missing file, not YAML, not a mapping, empty, or a bad entry (the
            message names the file and the key).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"space file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text (YAML) file") from None
    return parse_space(data, str(path))


def parse_space(data: Any, where: str = "space") -> SearchSpace:
    """Validate a space given as a dict (see the module docstring)."""
    if data is None or data == {}:
        raise ConfigError(f"{where}: the search space is empty: name at least one configuration key")
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: the top level must be a mapping of configuration keys to choices "
                          f"or ranges, got {type(data).__name__}")
    return SearchSpace([parse_param(key, spec, where) for key, spec in data.items()], where)
