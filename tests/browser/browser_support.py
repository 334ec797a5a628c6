"""The browser tests' model: one whose verdict and probability are known in advance."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tests.api.api_support import INPUT_SHAPE
from trainer_lambdas.nn import params as nn_params
from trainer_lambdas.nn.network import Weights

GAIN = 8.0  # logit of the model = GAIN * (mean red - mean blue), channels in [0, 1]


@dataclass(frozen=True)
class RednessModel:
    """A one-layer model whose verdict is known in advance: the probability of cat is
    sigmoid(GAIN * (mean red - mean blue)), so red pictures are cats (p ~ 0.9986 for RED)
    and blue ones are not (p ~ 0.0014 for BLUE)."""

    run_id: str
    weights: Weights
    metadata: dict

    @staticmethod
    def make(run_id: str) -> RednessModel:
        parameters = nn_params.parse(
            {
                "epochs": 1,
                "layers": 1,
                "activations": {"layer1": "sigmoid"},
                "neurons": {"layer1": 1},
                "learning_rate": 0.1,
            }
        )
        pixels = INPUT_SHAPE[0] * INPUT_SHAPE[1]
        w = np.zeros(INPUT_SHAPE)  # flattened in (row, column, channel) order, as the API does
        w[:, :, 0] = GAIN / pixels
        w[:, :, 2] = -GAIN / pixels
        metadata = {
            "parameters": parameters.to_json(),
            "input_shape": list(INPUT_SHAPE),
            "test_accuracy": 0.8,
            "train_accuracy": 0.9,
            "epochs": 1,
        }
        return RednessModel(run_id, [(w.reshape(1, -1), np.zeros((1, 1)))], metadata)

    @staticmethod
    def probability(colour: tuple[int, int, int]) -> float:
        """The probability of cat for a picture of one colour."""
        z = GAIN * (colour[0] - colour[2]) / 255.0
        return 1.0 / (1.0 + math.exp(-z))
