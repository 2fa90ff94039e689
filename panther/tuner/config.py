"""What to tune: parameter spaces and layer configurations.

``Categorical``, ``Int`` and ``Float`` describe one parameter's search space;
plain lists are accepted wherever a space is expected and mean ``Categorical``.
``LayerConfig`` says which layers to tune and over which space; ``TuningConfigs``
is an ordered list of them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ParamSpec",
    "Categorical",
    "Int",
    "Float",
    "as_param_spec",
    "normalize_param_space",
    "LayerConfig",
    "TuningConfigs",
]


#: Spaces with at most this many points are probed value by value at construction;
#: larger ones at their two ends only.
PROBE_LIMIT = 256


class ParamSpec:
    """Base class of one parameter's search space.

    Sizes are computed arithmetically and single values by index
    (:meth:`size`, :meth:`value_at`), so a huge space (``Int(1, 10**9)``) costs
    nothing until :meth:`values` is asked to list it.
    """

    def is_finite(self) -> bool:
        """Whether the space can be enumerated (grid search needs this)."""
        return self.size() is not None

    def size(self) -> int | None:
        """How many values the space holds (``None`` for a continuous space); never enumerates."""
        raise NotImplementedError

    def value_at(self, index: int) -> Any:
        """The ``index``-th value of :meth:`values` (``0 <= index < size()``), without listing them."""
        raise NotImplementedError

    def values(self) -> list[Any] | None:
        """All values in order, or ``None`` for a continuous space (lists the whole space)."""
        n = self.size()
        return None if n is None else [self.value_at(i) for i in range(n)]

    def probe_values(self, limit: int = PROBE_LIMIT) -> list[Any]:
        """Values worth checking against a layer: all of them when at most ``limit``, else the ends."""
        n = self.size()
        if n is None:
            return [getattr(self, "low", None), getattr(self, "high", None)]
        if n <= limit:
            return [self.value_at(i) for i in range(n)]
        return [self.value_at(0), self.value_at(n - 1)]

    def first(self) -> Any:
        """The value ``replace_without_tuning`` uses: the first choice or the low end."""
        raise NotImplementedError

    def sample(self, rng: random.Random) -> Any:
        """Draw one value uniformly (log-uniformly when ``log``)."""
        raise NotImplementedError

    def contains(self, value: Any) -> bool:
        """Whether ``value`` lies in this space."""
        raise NotImplementedError


@dataclass(frozen=True)
class Categorical(ParamSpec):
    """A finite set of choices, tried as given (order is kept)."""

    choices: tuple[Any, ...]

    def __init__(self, choices: Iterable[Any]):
        choices = tuple(choices)
        if not choices:
            raise ValueError("Categorical needs at least one choice, got an empty list")
        if len(set(map(repr, choices))) != len(choices):
            raise ValueError(f"Categorical choices must be distinct, got {list(choices)}")
        object.__setattr__(self, "choices", choices)

    def size(self) -> int:
        return len(self.choices)

    def value_at(self, index: int) -> Any:
        return self.choices[index]

    def values(self) -> list[Any]:
        return list(self.choices)

    def first(self) -> Any:
        return self.choices[0]

    def sample(self, rng: random.Random) -> Any:
        return rng.choice(self.choices)

    def contains(self, value: Any) -> bool:
        return value in self.choices


@dataclass(frozen=True)
class Int(ParamSpec):
    """Integers in ``[low, high]`` (both inclusive) with an optional ``step`` or ``log`` scale."""

    low: int
    high: int
    step: int = 1
    log: bool = False

    def __post_init__(self) -> None:
        for name in ("low", "high", "step"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"Int {name} must be an int, got {value!r}")
        if self.low > self.high:
            raise ValueError(f"Int needs low <= high, got low={self.low}, high={self.high}")
        if self.step < 1:
            raise ValueError(f"Int step must be >= 1, got {self.step}")
        if self.log and (self.low < 1 or self.step != 1):
            raise ValueError("Int with log=True needs low >= 1 and step=1")

    def size(self) -> int:
        return (self.high - self.low) // self.step + 1

    def value_at(self, index: int) -> int:
        return self.low + index * self.step

    def values(self) -> list[int]:
        return list(range(self.low, self.high + 1, self.step))

    def first(self) -> int:
        return self.low

    def last(self) -> int:
        """The largest value in the space (``high`` rounded down onto the step)."""
        return self.value_at(self.size() - 1)

    def sample(self, rng: random.Random) -> int:
        if self.log:
            value = math.exp(rng.uniform(math.log(self.low), math.log(self.high + 1)))
            return min(self.high, max(self.low, int(value)))
        # The same draw as rng.choice(self.values()), without listing the values.
        return self.value_at(rng.randrange(self.size()))

    def contains(self, value: Any) -> bool:
        return (
            isinstance(value, int)
            and self.low <= value <= self.high
            and (value - self.low) % self.step == 0
        )


@dataclass(frozen=True)
class Float(ParamSpec):
    """Reals in ``[low, high]``; with ``step`` the space is the grid ``low, low+step, ...``."""

    low: float
    high: float
    step: float | None = None
    log: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError("Float bounds must be finite numbers")
        if self.low > self.high:
            raise ValueError(f"Float needs low <= high, got low={self.low}, high={self.high}")
        if self.step is not None and not (math.isfinite(self.step) and self.step > 0):
            raise ValueError(f"Float step must be a finite number > 0, got {self.step}")
        if self.log and (self.low <= 0 or self.step is not None):
            raise ValueError("Float with log=True needs low > 0 and no step")

    def size(self) -> int | None:
        if self.step is None:
            return None
        steps = (self.high - self.low) / self.step
        # A relative tolerance: (1 - 0) / 1e-9 lands a hair below 1e9 in floating point.
        return int(math.floor(steps + 1e-9 * max(1.0, steps))) + 1

    def value_at(self, index: int) -> float:
        if self.step is None:
            raise TypeError("a continuous Float has no indexed values")
        return round(self.low + index * self.step, 12)

    def first(self) -> float:
        return self.low

    def sample(self, rng: random.Random) -> float:
        n = self.size()
        if n is not None:
            # The same draw as rng.choice(self.values()), without listing the grid.
            return self.value_at(rng.randrange(n))
        if self.log:
            return math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        return rng.uniform(self.low, self.high)

    def contains(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if not self.low - 1e-12 <= value <= self.high + 1e-12:
            return False
        n = self.size()
        if n is None:
            return True
        index = min(max(round((value - self.low) / self.step), 0), n - 1)
        return abs(value - self.value_at(index)) < 1e-9


ParamLike = ParamSpec | Sequence[Any]


def as_param_spec(name: str, spec: ParamLike) -> ParamSpec:
    """Turn a user's description of one parameter's space into a :class:`ParamSpec`."""
    if isinstance(spec, ParamSpec):
        return spec
    if isinstance(spec, (list, tuple, range)):
        return Categorical(spec)
    raise TypeError(
        f"parameter {name!r}: expected a list of values, Categorical, Int or Float, "
        f"got {type(spec).__name__} {spec!r}"
    )


def normalize_param_space(params: dict[str, ParamLike]) -> dict[str, ParamSpec]:
    """Normalise a ``{name: space}`` dict so every value is a :class:`ParamSpec`."""
    if not isinstance(params, dict) or not params:
        raise ValueError(
            f"params must be a non-empty dict of parameter spaces or the string 'auto', got {params!r}"
        )
    return {name: as_param_spec(name, spec) for name, spec in params.items()}


class LayerConfig:
    """Which layers to tune and over which parameter space.

    Args:
        layer_names: an exact module name, a regex, a list of either, or a dict
            combining ``pattern`` (regex or list), ``type`` (class name or list),
            ``contains`` (substring or list), ``indices`` or ``range``
            (``[start, end]`` or ``[start, end, step]``) over the sorted matches.
        params: ``{name: space}`` (lists, ``Categorical``, ``Int``, ``Float``), or
            ``"auto"`` to take ranges from each layer type's plugin.
        separate: tune each selected layer on its own (``True``) or all of them
            with shared parameters in one search (``False``).
        copy_weights: initialise sketched layers from the original weights.
    """

    def __init__(
        self,
        layer_names: str | list[str] | dict[str, Any],
        params: dict[str, ParamLike] | str = "auto",
        separate: bool = True,
        copy_weights: bool = True,
    ) -> None:
        if isinstance(layer_names, str):
            if not layer_names:
                raise ValueError("layer_names must not be empty")
        elif isinstance(layer_names, (list, tuple)):
            if not layer_names or not all(isinstance(n, str) and n for n in layer_names):
                raise ValueError(
                    f"layer_names as a list must hold non-empty strings, got {layer_names!r}"
                )
            layer_names = list(layer_names)
        elif isinstance(layer_names, dict):
            if not layer_names:
                raise ValueError("layer_names as a dict needs at least one selector key")
        else:
            raise TypeError(
                "layer_names must be a name, a regex, a list of them, or a selector dict; "
                f"got {type(layer_names).__name__}"
            )
        if isinstance(params, str):
            if params != "auto":
                raise ValueError(f"params must be a dict of spaces or 'auto', got {params!r}")
            self.params: dict[str, ParamSpec] | str = "auto"
        else:
            self.params = normalize_param_space(params)
        self.layer_names = layer_names
        self.separate = bool(separate)
        self.copy_weights = bool(copy_weights)

    def __repr__(self) -> str:
        return (
            f"LayerConfig(layer_names={self.layer_names!r}, params={self.params!r}, "
            f"separate={self.separate}, copy_weights={self.copy_weights})"
        )


class TuningConfigs(list):
    """An ordered list of :class:`LayerConfig`; all list operations work on it."""

    def __init__(self, configs: Iterable[LayerConfig] = ()) -> None:
        configs = list(configs)
        for c in configs:
            self._check(c)
        super().__init__(configs)

    @staticmethod
    def _check(config: Any) -> None:
        if not isinstance(config, LayerConfig):
            raise TypeError(f"TuningConfigs holds LayerConfig objects, got {type(config).__name__}")

    def append(self, config: LayerConfig) -> None:  # noqa: D102
        self._check(config)
        super().append(config)

    def insert(self, index: int, config: LayerConfig) -> None:  # noqa: D102
        self._check(config)
        super().insert(index, config)

    def extend(self, configs: Iterable[LayerConfig]) -> None:  # noqa: D102
        configs = list(configs)
        for c in configs:
            self._check(c)
        super().extend(configs)

    @property
    def configs(self) -> list[LayerConfig]:
        """The configurations as a plain list."""
        return list(self)
