"""parameters.json: the original format loads unchanged; every bad input names its problem."""

import json

import pytest

from trainer_lambdas.nn import params
from trainer_lambdas.nn.params import ParameterError

ORIGINAL = """{
    "epochs": 3000,
    "layers": 4,
    "activations": {"layer1": "relu", "layer2": "relu", "layer3": "relu", "layer4": "sigmoid"},
    "neurons": {"layer1": 20, "layer2": 7, "layer3": 5, "layer4": 1},
    "weight": 0.01,
    "learning_rate": 0.0075
}"""


def base(**over: object) -> dict:
    d: dict = {
        "epochs": 10,
        "layers": 2,
        "activations": {"layer1": "relu", "layer2": "sigmoid"},
        "neurons": {"layer1": 3, "layer2": 1},
        "learning_rate": 0.01,
        "batch_size": None,
        "threshold": 0,
    }
    d.update(over)
    return {k: v for k, v in d.items() if v is not DROP}


DROP = object()


def test_original_project_file_loads_unchanged() -> None:
    p = params.loads(ORIGINAL)
    assert p.epochs == 3000 and p.layers == 4
    assert p.activations == ("relu", "relu", "relu", "sigmoid")
    assert p.neurons == (20, 7, 5, 1)
    assert p.learning_rate == 0.0075 and p.batch_size is None and p.threshold == 0
    assert p.seed == 1 and p.init == "scaled"
    assert any("'weight'" in w for w in p.warnings)


def test_round_trip_and_defaults() -> None:
    p = params.parse(base(seed=7, init="he", batch_size=32, fanout=4))
    assert p.neurons_per_invocation == 4 and params.parse(p.to_json()) == p
    d = params.default()
    assert d.neurons == (20, 7, 5, 1) and d.epochs == 2500


@pytest.mark.parametrize(
    "over, message",
    [
        ({"layers": 3}, "'activations' must have exactly layer1..layer3"),
        ({"neurons": {"layer1": 3}}, "'neurons' must have exactly layer1..layer2 for 2 layers"),
        ({"activations": {"layer1": "softmax", "layer2": "sigmoid"}}, "activations.layer1"),
        ({"activations": {"layer1": "relu", "layer2": "relu"}}, "must use 'sigmoid'"),
        ({"neurons": {"layer1": 0, "layer2": 1}}, "neurons.layer1 must be an integer from 1"),
        ({"neurons": {"layer1": 3.5, "layer2": 1}}, "neurons.layer1 must be an integer"),
        ({"neurons": {"layer1": 3, "layer2": 2}}, "must have 1 neuron"),
        ({"learning_rate": -0.1}, "'learning_rate' must be a positive number"),
        ({"learning_rate": 0}, "'learning_rate' must be a positive number"),
        ({"learning_rate": "0.1"}, "'learning_rate' must be a positive number"),
        ({"epochs": 0}, "'epochs' must be from 1"),
        ({"epochs": "10"}, "'epochs' must be an integer"),
        ({"epochs": True}, "'epochs' must be an integer"),
        ({"epochs": DROP}, "'epochs' is required"),
        ({"layers": 0}, "'layers' must be from 1"),
        ({"batch_size": -1}, "'batch_size' must be null, 0"),
        ({"batch_size": 2.5}, "'batch_size' must be null, 0"),
        ({"threshold": -1}, "'threshold' must be a number >= 0"),
        ({"init": "xavier"}, "'init' must be one of scaled, he"),
        ({"seed": -3}, "'seed' must be from 0"),
        ({"learning_rte": 0.1}, "unknown key(s) 'learning_rte'"),
        ({"activations": ["relu", "sigmoid"]}, "'activations' must be an object"),
    ],
)
def test_bad_parameters_name_the_problem(over: dict, message: str) -> None:
    with pytest.raises(ParameterError) as e:
        params.parse(base(**over))
    assert message in str(e.value)


@pytest.mark.parametrize(
    "text, message",
    [("{not json", "not valid JSON"), ("[1, 2]", "expected a JSON object"), ("", "not valid")],
)
def test_bad_json(text: str, message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        params.loads(text)


def test_batch_size_zero_means_full_batch() -> None:
    p = params.parse(base(batch_size=0))
    assert p.batch_size is None and p.full_batch(10)
    assert params.parse(base(batch_size=5)).full_batch(5)
    assert not params.parse(base(batch_size=5)).full_batch(6)
    assert json.loads(json.dumps(p.to_json()))["batch_size"] is None


def test_first_layer_form_and_commit_every_defaults() -> None:
    p = params.parse(base())
    assert p.first_layer == "auto" and p.commit_every == 50
    for form in ("auto", "dual", "primal"):
        q = params.parse(base(first_layer=form))
        assert q.first_layer == form and params.parse(q.to_json()) == q
    with pytest.raises(params.ParameterError, match="'first_layer' must be one of auto"):
        params.parse(base(first_layer="Dual"))


def test_plan_key_defaults_to_fanout_and_accepts_hybrid() -> None:
    d = params.parse(base())
    assert d.distribution == params.EVERY_LAYER_REMOTE == "fanout"
    assert d.neurons_per_invocation == 1
    p = params.parse(base(plan="hybrid", fanout=4096, commit_every=10))
    assert p.distribution == params.FIRST_LAYER_REMOTE == "hybrid"
    assert p.neurons_per_invocation == 4096 and params.parse(p.to_json()) == p
    with pytest.raises(params.ParameterError, match="'plan' must be one of fanout, hybrid"):
        params.parse(base(plan="layers"))


def test_to_json_writes_the_keys_of_parameters_json() -> None:
    """What is recorded for users (the run's params, model.json) keeps their keys."""
    d = params.parse(base(plan="hybrid", fanout=8, **{"lambda": 0.5})).to_json()
    assert (d["fanout"], d["plan"], d["lambda"]) == (8, "hybrid", 0.5)
    assert not {"neurons_per_invocation", "distribution", "l2", "warnings"} & set(d)
    assert list(d)[:2] == ["epochs", "layers"]


def test_overrides_take_the_keys_of_parameters_json_and_ignore_none() -> None:
    p = params.parse(base())
    assert params.with_overrides(p) is p
    assert params.with_overrides(p, epochs=None, fanout=None, plan=None) is p
    q = params.with_overrides(p, epochs=3, fanout=2, plan="hybrid", commit_every=None)
    assert (q.epochs, q.neurons_per_invocation, q.distribution) == (3, 2, "hybrid")
    assert q.commit_every == p.commit_every and q.neurons == p.neurons
    assert params.with_overrides(p, **{"lambda": 0.1}).l2 == 0.1


def test_overrides_are_validated_as_a_parameters_file_is() -> None:
    p = params.parse(base())
    with pytest.raises(ParameterError, match=r"^parameters: 'epochs' must be from 1 to "):
        params.with_overrides(p, epochs=0)
    with pytest.raises(ParameterError, match="'plan' must be one of fanout, hybrid"):
        params.with_overrides(p, plan="layers")
    with pytest.raises(ParameterError, match="unknown key\\(s\\) 'neurons_per_invocation'"):
        params.with_overrides(p, neurons_per_invocation=2)  # the internal name is no key


def test_overrides_keep_warnings_and_switch_optimizers_cleanly() -> None:
    p = params.loads(ORIGINAL)
    assert params.with_overrides(p, epochs=5).warnings == p.warnings
    adam = params.parse(base(optimizer="adam", beta2=0.99))
    gd = params.with_overrides(adam, optimizer="gd")  # adam's betas go with it
    assert gd.optimizer == "gd" and "beta2" not in gd.to_json()
    assert params.with_overrides(adam, optimizer="momentum").beta1 == adam.beta1
