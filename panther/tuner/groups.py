"""Layer groups: which layers one search tunes together, and checking their spaces.

:func:`form_groups` turns a model and its :class:`~panther.tuner.config.TuningConfigs`
into :class:`LayerGroup` objects: every selected module is resolved to the layer
type (plugin) that handles it, and the layers are grouped (``separate=True``: one
group per layer; ``separate=False``: one joint group, or with ``params="auto"`` one
group per layer type and size). Every parameter space is checked against each
layer here (:func:`validate_space`), before anything is evaluated. The CLI
calls these too, so the library and the config file accept the same things.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from torch import nn

from panther.tuner import plugins
from panther.tuner.config import LayerConfig, ParamSpec, TuningConfigs
from panther.tuner.results import get_submodule

__all__ = ["LayerGroup", "form_groups", "group_key", "resolve_layer_type", "validate_space",
           "check_joint_types"]


@dataclass
class LayerGroup:
    """Layers tuned by one search: their names, layer types, the shared space, ``copy_weights``."""

    key: str
    layers: list[str]
    layer_types: dict[str, Any]
    space: dict[str, ParamSpec]
    copy_weights: bool


def group_key(layers: list[str]) -> str:
    """The name of a group of ``layers``: ``"a+b+c"``, shortened (still unique) when long."""
    key = "+".join(layers)
    if len(key) <= 200:
        return key
    # Long joint groups get a short, still unique and deterministic name (study names are bounded).
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    return f"{layers[0]}+...+{layers[-1]}[{len(layers)}:{digest}]"


def resolve_layer_type(model: nn.Module, name: str, where: str = "") -> Any:
    """The layer type (plugin) that sketches ``model``'s submodule ``name``.

    Raises ``ValueError`` listing the supported layer types when none does; ``where``
    says which config selected it (e.g. ``"config #0, selector 'fc.*'"``).
    """
    module = get_submodule(model, name)
    layer_type = plugins.layer_type_for(module)
    if layer_type is None:
        supported = sorted(
            f"{lt.name} ({', '.join(t.__name__ for t in lt.module_types)})" for lt in plugins.layer_types()
        )
        raise ValueError(
            f"layer {name!r} is a {type(module).__name__}, which no installed layer-type "
            f"plugin can sketch{f' ({where})' if where else ''}. "
            f"Supported layer types: {supported}. Narrow the selector, e.g. add "
            "{'type': 'Linear'}, or register a plugin for it"
        )
    return layer_type


def form_groups(model: nn.Module, configs: TuningConfigs | list[LayerConfig]) -> list[LayerGroup]:
    """Resolve every config to layers and layer types, validate the spaces, and group them.

    Raises ``ValueError`` naming the config and layer when a layer is selected twice,
    no layer type handles it, a value does not fit it, or two groups get one name.
    """
    from panther.tuner.selection import select_layers

    groups: list[LayerGroup] = []
    owner: dict[str, int] = {}
    for index, config in enumerate(configs):
        names = select_layers(model, config.layer_names)
        resolved: dict[str, Any] = {}
        for name in names:
            if name in owner:
                raise ValueError(
                    f"layer {name!r} is selected by configs #{owner[name]} and #{index}; "
                    "each layer may be tuned by one LayerConfig only"
                )
            owner[name] = index
            resolved[name] = resolve_layer_type(
                model, name, f"config #{index}, selector {config.layer_names!r}")
        if config.params == "auto":
            groups.extend(_auto_groups(model, config, names, resolved))
            continue
        space = dict(config.params)
        if not config.separate:
            check_joint_types(index, names, resolved, space)
        for name in names:
            validate_space(model, name, resolved[name], space, index)
        if config.separate:
            groups.extend(LayerGroup(name, [name], {name: resolved[name]}, space, config.copy_weights)
                          for name in names)
        else:
            groups.append(LayerGroup(group_key(names), list(names), dict(resolved), space,
                                     config.copy_weights))
    keys = [g.key for g in groups]
    if len(set(keys)) != len(keys):
        raise ValueError(
            f"two layer groups got the same name: {keys} (a joint group is named by joining its "
            "layers with '+', which a layer's own name can clash with); tune the clashing "
            "layers in one LayerConfig, or give them all separate=True")
    return groups


def _auto_groups(model: nn.Module, config: LayerConfig, names: list[str],
                 resolved: dict[str, Any]) -> list[LayerGroup]:
    if config.separate:
        return [LayerGroup(name, [name], {name: resolved[name]},
                           dict(resolved[name].auto_space(get_submodule(model, name))), config.copy_weights)
                for name in names]
    # Joint "auto": one group per (layer type, size) so every member shares one space.
    buckets: dict[tuple[str, Any], list[str]] = {}
    for name in names:
        lt = resolved[name]
        buckets.setdefault((lt.name, lt.size_key(get_submodule(model, name))), []).append(name)
    groups = []
    for members in buckets.values():
        space = resolved[members[0]].auto_space(get_submodule(model, members[0]))
        groups.append(LayerGroup(group_key(members), members, {n: resolved[n] for n in members},
                                 dict(space), config.copy_weights))
    return groups


def validate_space(model: nn.Module, name: str, layer_type: Any, space: dict[str, ParamSpec],
                   index: int | None = None) -> None:
    """Check every value of every parameter (others at their first value) against layer ``name``.

    Large spaces are probed at their ends only (never enumerated). Raises the layer
    type's ``ValueError``/``TypeError`` prefixed with the config, params and layer.
    """
    module = get_submodule(model, name)
    first = {key: spec.first() for key, spec in space.items()}
    probes = [first]
    for key, spec in space.items():
        probes.extend({**first, key: v} for v in spec.probe_values() if v is not None)
    where = "" if index is None else f"config #{index}: "
    for probe in probes:
        try:
            layer_type.validate_params(module, probe)
        except (ValueError, TypeError) as exc:
            raise type(exc)(
                f"{where}params {probe} do not fit layer {name!r} "
                f"({type(module).__name__}, layer type {layer_type.name!r}): {exc}"
            ) from exc


def check_joint_types(index: int, names: list[str], resolved: dict[str, Any], space: Any) -> None:
    """A joint group may mix layer types only when every type accepts every parameter of ``space``."""
    kinds = {resolved[n].name for n in names}
    if len(kinds) <= 1:
        return
    param_sets = {resolved[n].name: set(resolved[n].param_names) for n in names}
    common = set.intersection(*param_sets.values())
    if isinstance(space, dict) and not set(space) <= common:
        raise ValueError(
            f"config #{index} (separate=False) mixes layer types {sorted(kinds)} whose "
            f"parameters differ ({ {k: sorted(v) for k, v in param_sets.items()} }); "
            "a joint group needs parameters every type accepts. Use separate=True "
            "or one LayerConfig per type"
        )
