"""What a tuning-results manifest may and may not do (issue 15 item 8).

A manifest is data from a file: loading it never runs code, and applying it only rebuilds
the layers it was made from, with parameters those layers can hold. Every malformed or
foreign manifest is refused with a ``ValueError`` naming the problem.
"""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from panther.tuner import load_tuning_results
from panther.tuner.manifest import MAX_DEPTH, module_shapes
from panther.tuner.results import LayerChoice, TuningResults


def _manifest(layer: nn.Module, **params) -> dict:
    """A valid manifest sketching layer "0" of ``nn.Sequential(layer)``, with a trial and its cached repeat."""
    choice = LayerChoice.for_module("0", "Linear", layer, {"num_terms": 1, "low_rank": 4, **params}, seed=7)
    trials = [
        {"layer_name": "0", "trial_number": 0, "status": "ok", "params": {"low_rank": 4}, "accuracy": 0.9},
        {"layer_name": "0", "trial_number": 1, "status": "cached", "params": {"low_rank": 4},
         "cached_from": 0, "accuracy": 0.9},
    ]
    return TuningResults(selection={"0": choice}, trials=trials).to_dict()


def _write(tmp_path, data) -> str:
    path = tmp_path / "results.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def test_valid_manifest_round_trips_and_applies(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64))
    data = _manifest(model[0])
    assert data["selection"]["0"]["shapes"] == {"weight": [64, 32], "bias": [64]}
    results = load_tuning_results(_write(tmp_path, data))
    assert results.selection["0"].shapes == module_shapes(model[0])
    tuned = results.apply(model)
    assert type(tuned[0]).__name__ == "SKLinear" and type(model[0]) is nn.Linear


def test_manifest_of_other_shapes_is_refused(tmp_path):
    """Results tuned on Linear(32, 64) never build a layer for Linear(32, 48)."""
    results = load_tuning_results(_write(tmp_path, _manifest(nn.Linear(32, 64))))
    other = nn.Sequential(nn.Linear(32, 48))
    with pytest.raises(ValueError, match=r"other shapes.*weight: tuned \[64, 32\] here \[48, 32\]"):
        results.apply(other, inplace=True)
    assert type(other[0]) is nn.Linear  # nothing was swapped


def test_manifest_without_shapes_still_applies(tmp_path):
    """Manifests written before shapes were recorded keep working."""
    data = _manifest(nn.Linear(32, 64))
    del data["selection"]["0"]["shapes"]
    tuned = load_tuning_results(_write(tmp_path, data)).apply(nn.Sequential(nn.Linear(32, 64)))
    assert type(tuned[0]).__name__ == "SKLinear"


@pytest.mark.parametrize("value", ["false", "true", 0, 1, None, []])
def test_copy_weights_must_be_a_json_boolean(tmp_path, value):
    data = _manifest(nn.Linear(32, 64))
    data["selection"]["0"]["copy_weights"] = value
    with pytest.raises(ValueError, match="copy_weights.*true or false"):
        load_tuning_results(_write(tmp_path, data))


@pytest.mark.parametrize("version", [True, False, 0, -1, 2, 1.0, "1", None])
def test_version_must_be_a_known_integer(tmp_path, version):
    data = _manifest(nn.Linear(32, 64))
    data["version"] = version
    with pytest.raises(ValueError, match="version"):
        load_tuning_results(_write(tmp_path, data))


def test_malformed_cached_rows_are_value_errors(tmp_path):
    data = _manifest(nn.Linear(32, 64))
    assert "shared_with_source" in data["trials"][1]  # the repeat is stored compactly
    assert load_tuning_results(_write(tmp_path, data)).trials[1]["accuracy"] == 0.9
    data["trials"][1]["shared_with_source"] = [["accuracy"]]
    with pytest.raises(ValueError, match="cached"):
        load_tuning_results(_write(tmp_path, data))


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 900, 200_000])
def test_deep_nesting_is_a_clear_error_not_a_recursion_error(tmp_path, depth):
    data = json.dumps(_manifest(nn.Linear(32, 64)))
    nested = "[" * depth + "]" * depth
    text = data[:-1] + f', "extra": {nested}}}'
    with pytest.raises(ValueError, match="nested"):
        load_tuning_results(_write(tmp_path, text))


def test_selection_key_must_agree_with_its_layer_name(tmp_path):
    data = _manifest(nn.Linear(32, 64))
    data["selection"]["0"]["layer_name"] = "1"
    with pytest.raises(ValueError, match="selection key '0' disagrees with its layer_name '1'"):
        load_tuning_results(_write(tmp_path, data))


@pytest.mark.parametrize("params", [{"low_rank": 10**9}, {"num_terms": 10**6, "low_rank": 64}])
def test_parameters_beyond_the_layers_dimensions_are_refused_before_allocating(tmp_path, params):
    data = _manifest(nn.Linear(32, 64), **params)
    results = load_tuning_results(_write(tmp_path, data))
    model = nn.Sequential(nn.Linear(32, 64))
    with pytest.raises(ValueError, match="dimensions"):
        results.apply(model, inplace=True)
    assert type(model[0]) is nn.Linear


@pytest.mark.parametrize("params", [{"low_rank": 0}, {"low_rank": "4"}, {"init": "evil"}])
def test_invalid_parameter_values_are_value_errors(tmp_path, params):
    results = load_tuning_results(_write(tmp_path, _manifest(nn.Linear(32, 64), **params)))
    with pytest.raises(ValueError, match="layer '0'"):
        results.apply(nn.Sequential(nn.Linear(32, 64)))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**12) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=10,
)
FIELDS = [("trials", 1, "shared_with_source"), ("trials", 1, "cached_from"), ("trials", 0, "trial_number"),
          ("version",), ("selection", "0"), ("selection", "0", "params"), ("selection", "0", "seed"),
          ("selection", "0", "shapes"), ("selection", "0", "copy_weights"), ("selection", "0", "layer_type"),
          ("selection", "0", "params", "low_rank"), ("trials",), ("groups",), ("info",)]


@settings(max_examples=60, deadline=None)
@given(field=st.sampled_from(FIELDS), value=json_values)
def test_any_corrupted_field_loads_or_raises_value_error(tmp_path_factory, field, value):
    """Whatever one field holds, loading and applying return or raise ValueError only."""
    data = _manifest(nn.Linear(32, 64))
    target = data
    for key in field[:-1]:
        target = target[key]
    target[field[-1]] = value
    path = _write(tmp_path_factory.mktemp("m"), data)
    try:
        results = load_tuning_results(path)
    except ValueError:
        return
    try:
        results.apply(nn.Sequential(nn.Linear(32, 64)))
    except ValueError:
        pass


def test_a_tuning_run_records_shapes_so_its_manifest_refuses_other_shapes(tmp_path):
    """End to end: tune Linear(32, 64), save, and the manifest refuses Linear(32, 48)."""
    from panther.tuner import Categorical, GridSearch, LayerConfig, SKAutoTuner, TuningConfigs

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64))
    tuner = SKAutoTuner(model, TuningConfigs([LayerConfig("0", {"low_rank": Categorical([2, 4])})]),
                        lambda m: 1.0, search_algorithm=GridSearch())
    tuner.tune()
    path = tmp_path / "tuned.json"
    tuner.save_tuning_results(str(path))
    results = load_tuning_results(path)
    assert results.selection["0"].shapes == {"weight": [64, 32], "bias": [64]}
    results.apply(nn.Sequential(nn.Linear(32, 64)))
    with pytest.raises(ValueError, match="other shapes"):
        results.apply(nn.Sequential(nn.Linear(32, 48)))
