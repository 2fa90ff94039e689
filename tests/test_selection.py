"""Tests for panther.tuner.selection.select_layers."""

from __future__ import annotations

import ast
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from panther.tuner.selection import SELECTOR_KEYS, natural_sorted, select_layers


def _mlp(n: int = 12) -> nn.Module:
    layers: list[nn.Module] = []
    for _ in range(n):
        layers += [nn.Linear(4, 4), nn.ReLU()]
    return nn.Sequential(*layers)


class _Transformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=3, enable_nested_tensor=False)
        self.head = nn.Linear(8, 3)


@pytest.fixture
def transformer() -> nn.Module:
    return _Transformer()


# --- plain forms ---------------------------------------------------------------------------------


def test_exact_name_wins_over_regex_reading():
    model = nn.Sequential()
    model.add_module("fc", nn.Linear(2, 2))
    model.add_module("fcc", nn.Linear(2, 2))
    model.add_module("fc+", nn.Linear(2, 2))  # also a regex that matches "fc" and "fcc"
    assert select_layers(model, "fc+") == ["fc+"]
    assert select_layers(model, "fc") == ["fc"]  # full match: does not pick "fcc"
    assert select_layers(model, "fc{2}") == ["fcc"]
    assert select_layers(model, "fc.*") == ["fc", "fc+", "fcc"]


def test_regex_is_full_match(transformer):
    got = select_layers(transformer, r"encoder\.layers\.[0-1]\.linear\d")
    assert got == [
        "encoder.layers.0.linear1",
        "encoder.layers.0.linear2",
        "encoder.layers.1.linear1",
        "encoder.layers.1.linear2",
    ]
    assert select_layers(transformer, re.compile(r"head")) == ["head"]
    assert select_layers(transformer, {"pattern": [re.compile(r"h.ad"), "nothing"]}) == ["head"]


def test_natural_sort_order():
    model = _mlp(12)
    got = select_layers(model, {"type": "Linear"})
    assert got == [str(i) for i in range(0, 24, 2)]  # "2" before "10", not lexicographic
    assert natural_sorted(["layers.10", "layers.2", "layers.2", "a"]) == ["a", "layers.2", "layers.10"]


def test_root_is_never_selected():
    model = _mlp(2)
    assert "" not in select_layers(model, ".*")
    assert len(select_layers(model, ".*")) == 4


def test_tutorial_selectors(transformer):
    got = select_layers(transformer, {"pattern": "encoder\\.layers\\.[0-5]\\..*", "type": "Linear"})
    # out_proj is a NonDynamicallyQuantizableLinear: exact type matching leaves it alone
    assert got == [f"encoder.layers.{i}.linear{j}" for i in range(3) for j in (1, 2)]
    attn = select_layers(transformer, {"contains": "attn", "type": "MultiheadAttention"})
    assert attn == [f"encoder.layers.{i}.self_attn" for i in range(3)]


def test_type_accepts_class_and_dotted_names(transformer):
    by_name = select_layers(transformer, {"type": "LayerNorm"})
    assert select_layers(transformer, {"type": nn.LayerNorm}) == by_name
    assert select_layers(transformer, {"type": "torch.nn.LayerNorm"}) == by_name
    assert select_layers(transformer, {"type": "torch.nn.modules.normalization.LayerNorm"}) == by_name
    both = select_layers(transformer, {"type": ["LayerNorm", nn.Dropout]})
    assert set(both) == set(by_name) | {
        n for n, m in transformer.named_modules() if type(m) is nn.Dropout
    }


def test_indices_and_range(transformer):
    base = select_layers(transformer, {"type": "Linear"})
    assert select_layers(transformer, {"type": "Linear", "indices": [0, -1]}) == [base[0], base[-1]]
    assert select_layers(transformer, {"type": "Linear", "range": [1, 4]}) == base[1:4]
    assert select_layers(transformer, {"type": "Linear", "range": [0, None, 2]}) == base[0::2]
    # both position keys: the positions both pick
    assert select_layers(transformer, {"type": "Linear", "range": [0, 3], "indices": [1, 5]}) == [base[1]]
    # indices alone count over every module (natural order)
    all_names = select_layers(transformer, ".*")
    assert select_layers(transformer, {"indices": [2]}) == [all_names[2]]


def test_list_union_deduplicates(transformer):
    got = select_layers(transformer, ["head", {"type": "Linear", "indices": [0, -1]}, "head"])
    assert got == ["encoder.layers.0.linear1", "head"]


# --- errors ---------------------------------------------------------------------------------------


def test_no_match_lists_close_names(transformer):
    with pytest.raises(ValueError) as err:
        select_layers(transformer, "encoder.layers.0.linear3")
    msg = str(err.value)
    assert "encoder.layers.0.linear3" in msg and "encoder.layers.0.linear1" in msg


def _close_names(msg: str) -> list[str]:
    found = re.search(r"close layer names: (\[[^\]]*\])", msg)
    assert found, msg
    return ast.literal_eval(found.group(1))


def _error(model: nn.Module, selector) -> str:
    with pytest.raises(ValueError) as err:
        select_layers(model, selector)
    return str(err.value)


def test_close_names_prefer_layers_with_parameters():
    model = _mlp()  # Linear at even positions, ReLU at odd ones
    close = _close_names(_error(model, "30"))
    assert close and len(close) <= 5
    assert all(isinstance(model[int(n)], nn.Linear) for n in close)


def test_close_names_leave_out_containers(transformer):
    modules = dict(transformer.named_modules())
    close = _close_names(_error(transformer, "encoder.layer.1"))
    assert close and len(close) <= 5
    # encoder, encoder.layers and encoder.layers.<i> only hold other modules
    assert not any(next(modules[n].children(), None) is not None and not list(modules[n].parameters(False))
                   for n in close)
    assert not {"encoder", "encoder.layers", "encoder.layers.1"} & set(close)


def test_close_names_prefer_requested_type(transformer):
    modules = dict(transformer.named_modules())
    msg = _error(transformer, {"type": "LayerNorm", "pattern": r"encoder\.layers\.0\.linear9"})
    close = _close_names(msg)
    assert close and all(type(modules[n]) is nn.LayerNorm for n in close)
    # the listed types are the layers', not the containers'
    assert "LayerNorm" in msg and "ModuleList" not in msg and "TransformerEncoderLayer" not in msg


def test_parameter_free_leaves_only_when_nothing_better():
    from collections import OrderedDict

    model = nn.Sequential(OrderedDict(act=nn.ReLU(), block=nn.Sequential(nn.Tanh()), proj=nn.Linear(2, 2)))
    assert _close_names(_error(model, "projj")) == ["proj"]
    assert _close_names(_error(model, "actt")) == ["act"]  # nothing with parameters is close
    # the container itself is never offered, the leaf inside it is
    assert _close_names(_error(model, "blockk")) == ["block.0"]
    msg = _error(model, "zzz")  # nothing close: the preview lists layers with parameters
    assert "close layer names" not in msg and "layer names include: ['proj']" in msg


def test_unknown_type_lists_present_types(transformer):
    with pytest.raises(ValueError) as err:
        select_layers(transformer, {"type": "Conv2d"})
    msg = str(err.value)
    assert "Conv2d" in msg and "MultiheadAttention" in msg and "LayerNorm" in msg


def test_and_of_nonempty_keys_explains(transformer):
    with pytest.raises(ValueError, match="no module matches all"):
        select_layers(transformer, {"type": "LayerNorm", "contains": "linear"})


def test_unknown_key_lists_valid_keys(transformer):
    with pytest.raises(ValueError) as err:
        select_layers(transformer, {"types": "Linear"})
    for key in SELECTOR_KEYS:
        assert key in str(err.value)


def test_invalid_regex_is_clear(transformer):
    with pytest.raises(ValueError, match="regular expression"):
        select_layers(transformer, "encoder.layers.[0")
    with pytest.raises(ValueError, match="regular expression"):
        select_layers(transformer, {"pattern": ["head", "(unclosed"]})


def test_out_of_range_index_is_clear(transformer):
    with pytest.raises(ValueError, match="out of range"):
        select_layers(transformer, {"type": "Linear", "indices": [7]})  # 7 Linear layers
    with pytest.raises(ValueError, match="out of range"):
        select_layers(transformer, {"type": "Linear", "indices": [-8]})
    with pytest.raises(ValueError, match="picked no layer"):
        select_layers(transformer, {"type": "Linear", "range": [10, 20]})
    with pytest.raises(ValueError, match="step"):
        select_layers(transformer, {"type": "Linear", "range": [0, 3, 0]})


@pytest.mark.parametrize(
    "bad, exc",
    [
        (3, TypeError),
        ([], ValueError),
        ({}, ValueError),
        ("", ValueError),
        ({"indices": ["0"]}, TypeError),
        ({"indices": [True]}, TypeError),
        ({"range": [1]}, ValueError),
        ({"type": 5}, TypeError),
        ({"contains": ""}, TypeError),
        ({"pattern": []}, ValueError),
        ([["head"]], TypeError),
    ],
)
def test_bad_selectors(transformer, bad, exc):
    with pytest.raises(exc):
        select_layers(transformer, bad)


def test_list_element_matching_nothing_is_reported(transformer):
    with pytest.raises(ValueError, match="hed"):
        select_layers(transformer, ["head", "hed"])


# --- properties -----------------------------------------------------------------------------------

_KINDS = {
    "Linear": lambda: nn.Linear(2, 2),
    "ReLU": nn.ReLU,
    "Conv2d": lambda: nn.Conv2d(1, 1, 1),
    "Dropout": nn.Dropout,
}


@st.composite
def _models(draw):
    """A random two-level model: Sequential blocks of random leaf layers."""
    blocks = draw(
        st.lists(st.lists(st.sampled_from(sorted(_KINDS)), min_size=1, max_size=4), min_size=1, max_size=5)
    )
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Sequential(*[_KINDS[k]() for k in block]) for block in blocks])


def _names(model):
    return [n for n, _ in model.named_modules() if n]


_SETTINGS = settings(max_examples=20, deadline=None)


@_SETTINGS
@given(model=_models(), data=st.data())
def test_exact_names_select_exactly_them(model, data):
    names = _names(model)
    subset = data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=len(names)))
    assert select_layers(model, subset) == natural_sorted(subset)


@_SETTINGS
@given(model=_models(), kind=st.sampled_from(sorted(_KINDS) + ["Sequential"]))
def test_type_selects_exactly_that_type(model, kind):
    expected = natural_sorted(n for n, m in model.named_modules() if n and type(m).__name__ == kind)
    if expected:
        assert select_layers(model, {"type": kind}) == expected
    else:
        with pytest.raises(ValueError, match=kind):
            select_layers(model, {"type": kind})


@_SETTINGS
@given(
    model=_models(),
    start=st.integers(-8, 8) | st.none(),
    end=st.integers(-8, 8) | st.none(),
    step=st.integers(-3, 3).filter(lambda s: s != 0) | st.none(),
    picks=st.lists(st.integers(-10, 10), min_size=1, max_size=4),
)
def test_range_and_indices_match_slicing(model, start, end, step, picks):
    base = select_layers(model, ".*")
    bounds = [start, end] if step is None else [start, end, step]
    expected = natural_sorted(base[slice(*bounds)])
    if expected:
        assert select_layers(model, {"pattern": ".*", "range": bounds}) == expected
    else:
        with pytest.raises(ValueError):
            select_layers(model, {"pattern": ".*", "range": bounds})
    n = len(base)
    if all(-n <= i < n for i in picks):
        assert select_layers(model, {"indices": picks}) == natural_sorted(base[i] for i in picks)
    else:
        with pytest.raises(ValueError, match="out of range"):
            select_layers(model, {"indices": picks})


@_SETTINGS
@given(model=_models(), a=st.sampled_from(sorted(_KINDS)), b=st.sampled_from(sorted(_KINDS)), c=st.sampled_from(["0", "1", "2."]))
def test_union_and_intersection_laws(model, a, b, c):
    def sel(s):
        try:
            return set(select_layers(model, s))
        except ValueError:
            return set()

    sa, sb, sc = sel({"type": a}), sel({"type": b}), sel({"contains": c})
    if sa and sb:
        assert set(select_layers(model, [{"type": a}, {"type": b}])) == sa | sb
        # a list inside "type" is the same union
        assert set(select_layers(model, {"type": [a, b]})) == sa | sb
    both = sa & sc
    if both:
        assert set(select_layers(model, {"type": a, "contains": c})) == both
    else:
        with pytest.raises(ValueError):
            select_layers(model, {"type": a, "contains": c})
    # selection is idempotent: re-selecting the result by name gives the result
    if sa:
        got = select_layers(model, {"type": a})
        assert select_layers(model, got) == got


@_SETTINGS
@given(model=_models(), data=st.data())
def test_suggestions_are_short_and_never_containers(model, data):
    names = _names(model)
    # a near miss of a real name: one character dropped or doubled
    target = data.draw(st.sampled_from(names))
    query = target + target[-1] if data.draw(st.booleans()) else target[:-1] + "x"
    if query in names:
        return
    try:
        select_layers(model, query)
    except ValueError as err:
        msg = str(err)
    else:  # the near miss happens to be a regex matching something
        return
    if "close layer names" not in msg:
        return
    modules = dict(model.named_modules())
    close = _close_names(msg)
    assert 1 <= len(close) <= 5
    assert not any(next(modules[n].children(), None) is not None for n in close)
    has_params = [n for n in close if list(modules[n].parameters(False))]
    # parameter-free leaves only appear when no layer with parameters is close
    assert not has_params or len(has_params) == len(close)


# --------------------------------------------------------------------------- one naming rule


class Conv1D(nn.Module):
    """Named like transformers' Conv1D (GPT-2): differs from torch's Conv1d only in case."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(nx, nf))

    def forward(self, x):
        return x @ self.weight


class _Projection(nn.Linear):
    """A subclass handled by a layer type named differently from the class."""


@pytest.fixture
def naming_plugin():
    from panther.tuner import LayerType, hookimpl, plugins

    class ConvType(LayerType):
        name = "Conv1D"
        module_types = (Conv1D,)
        sketched_type = nn.Linear
        param_names = ("rank",)

        def build(self, original, params, copy_weights=True):
            raise NotImplementedError

        def auto_space(self, original):
            return {}

        def cost(self, original, params=None):
            raise NotImplementedError

    class ProjType(ConvType):
        name = "LowRankProjection"
        module_types = (_Projection,)

    class Plugin:
        @hookimpl
        def panther_layer_types(self):
            return [ConvType(), ProjType()]

    name = plugins.register_plugin(Plugin(), name="naming-rule")
    yield
    plugins.unregister_plugin(name)


def _mixed() -> nn.Module:
    return nn.Sequential(Conv1D(8, 4), nn.Conv1d(2, 2, 1), _Projection(4, 4), nn.Linear(4, 4))


def test_type_selector_accepts_layer_type_names_and_says_which_matched(naming_plugin):
    from panther.tuner.selection import type_matches

    model = _mixed()
    assert select_layers(model, {"type": "LowRankProjection"}) == ["2"]
    assert select_layers(model, {"type": "_Projection"}) == ["2"]
    assert type_matches(model, "LowRankProjection") == {"2": "layer-type name"}
    assert type_matches(model, "_Projection") == {"2": "class name"}
    assert type_matches(model, "Conv1D") == {"0": "class name and layer-type name"}
    # The built-in Linear layer type handles exact nn.Linear only, like the class name.
    assert type_matches(model, "Linear") == {"3": "class name and layer-type name"}


def test_names_differing_in_case_never_meet(naming_plugin):
    from panther.tuner import plugins

    model = _mixed()
    assert select_layers(model, {"type": "Conv1D"}) == ["0"]
    assert select_layers(model, {"type": "Conv1d"}) == ["1"]
    # Both layer types are registered, neither shadows the other (the example plugin
    # contributes torch's "Conv1d").
    assert plugins.get_layer_type("Conv1D").module_types == (Conv1D,)
    assert plugins.get_layer_type("Conv1d").name == "Conv1d"
    assert not [c for c in plugins.conflicts() if c.name.lower() == "conv1d"]
    with pytest.raises(ValueError, match=r"did you mean type \['Conv1D', 'Conv1d'\]\?.*case-sensitive"):
        select_layers(model, {"type": "conv1d"})


def test_no_match_lists_the_layer_types_that_can_sketch(naming_plugin):
    with pytest.raises(ValueError, match=r"layer types that can sketch its modules: \['Conv1D', "
                                         r"'Conv1d', 'Linear', 'LowRankProjection'\]"):
        select_layers(_mixed(), {"type": "Embedding"})
