"""One parameter space as a search backend sees it: :class:`ParamCodec`.

Backends describe a :class:`~panther.tuner.config.ParamSpec` to their sampler as a
*distribution*, never as a list of its values, and turn what the sampler hands back
into an exact value of the space. The codec does both, once for every backend:

* ``kind`` says how to describe it: ``"constant"`` (one value: keep it out of the
  sampler), ``"categorical"`` (choices, by index), ``"int"`` (integers ``low..high``
  with ``step`` and ``log``), ``"grid"`` (a stepped ``Float``: indices
  ``0..size-1``) or ``"float"`` (a continuous range, ``log`` or not);
* :meth:`ParamCodec.snap` maps any sampler value back into the space (the nearest
  grid value, clipped to the ends), so repeated suggestions compare equal;
* :meth:`ParamCodec.index_of` / :meth:`ParamCodec.value_at` convert between a value
  and its position without listing the space.
"""

from __future__ import annotations

from typing import Any

from panther.tuner.config import Categorical, Float, Int, ParamSpec

__all__ = ["ParamCodec"]


class ParamCodec:
    """How one parameter space is described to a sampler and read back (see the module doc)."""

    def __init__(self, name: str, spec: ParamSpec, who: str = "this search") -> None:
        self.name = name
        self.spec = spec
        #: Points in the space (``None`` for a continuous ``Float``); computed, never listed.
        self.size: int | None = spec.size()
        self.log = bool(getattr(spec, "log", False))
        if self.size == 1:
            self.kind = "constant"
        elif isinstance(spec, Categorical):
            self.kind = "categorical"
        elif isinstance(spec, Int):
            self.kind = "int"
        elif isinstance(spec, Float):
            self.kind = "float" if spec.step is None else "grid"
        else:
            raise TypeError(
                f"{who} supports Categorical, Int and Float spaces; parameter {name!r} "
                f"is a {type(spec).__name__}"
            )
        #: Lowest and highest value (ints: on the step; grids: the first and last grid point).
        self.low: Any = None
        self.high: Any = None
        if isinstance(spec, (Int, Float)):
            self.low = spec.low
            self.high = spec.high if self.size is None else spec.value_at(self.size - 1)
        self.step = getattr(spec, "step", None)

    @property
    def choices(self) -> tuple[Any, ...]:
        """A categorical space's choices."""
        assert isinstance(self.spec, Categorical)
        return self.spec.choices

    def value_at(self, index: int) -> Any:
        """The ``index``-th value of a finite space."""
        return self.spec.value_at(int(index))

    def index_of(self, value: Any) -> int:
        """The position of ``value`` (the nearest grid point for numbers) in a finite space."""
        if isinstance(self.spec, Categorical):
            return self.spec.choices.index(value)
        assert self.size is not None and self.step is not None
        index = round((float(value) - self.spec.low) / self.step)
        return min(max(int(index), 0), self.size - 1)

    def snap(self, value: Any) -> Any:
        """``value`` from a sampler as an exact value of the space (nearest point, clipped)."""
        if self.kind == "constant":
            return self.spec.value_at(0)
        if self.kind == "categorical":
            return value
        if self.kind == "float":
            return min(max(float(value), self.low), self.high)
        if isinstance(self.spec, Int) and self.step == 1:
            return min(max(int(round(value)), self.low), self.high)
        return self.value_at(self.index_of(value))

    def grid_points(self, limit: int = 1_000_000) -> list[Any]:
        """Every value, for samplers that enumerate; refuses continuous or huge spaces."""
        if self.size is None:
            raise ValueError(f"parameter {self.name!r} is a continuous {self.spec!r}: it has no grid; "
                             "give it a step or choose a sampler that takes ranges")
        if self.size > limit:
            raise ValueError(f"parameter {self.name!r} has {self.size} values, too many to enumerate "
                             f"(at most {limit}); choose a sampler that takes ranges (tpe, random)")
        return [self.spec.value_at(i) for i in range(self.size)]

    def __repr__(self) -> str:
        return f"ParamCodec({self.name!r}, {self.spec!r}, kind={self.kind!r})"

