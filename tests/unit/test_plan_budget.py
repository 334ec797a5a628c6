"""A block's rows and its layer's shared inputs together stay under Lambda's 6 MB synchronous
payload limit, by the plan's budget (tests/functional/test_payload_limit.py measures the real
request bytes of a run at the cat data's size)."""

import pytest

from trainer_lambdas import invocation_plan

LIMIT = 6 * 1024 * 1024  # Lambda's synchronous request and response payload limit


@pytest.mark.parametrize("m", [209, 1000, 20_000])
@pytest.mark.parametrize("neurons", [(600, 200, 1), (20, 7, 5, 1), (3, 2, 1), (100, 1)])
def test_a_block_and_its_layers_inputs_stay_within_the_limit(
    neurons: tuple[int, ...], m: int
) -> None:
    """For every network `check_inputs` accepts, every block of the plan fits with its
    layer's shared inputs and the JSON (the budget, computed as the requests are built)."""
    n_x = 12288
    try:
        invocation_plan.check_inputs(neurons, m, "fanout", n_x)
    except ValueError:
        return
    n_prev = n_x
    for i, layer in enumerate(invocation_plan.blocks(n_x, neurons, 4096, m), start=1):
        shared = invocation_plan.shared_bytes(i, len(neurons), n_prev, m)
        rows = max(b.size for b in layer)
        assert (
            shared + rows * invocation_plan.row_bytes(n_prev, m) + invocation_plan.json_room(m)
            <= LIMIT
        )
        n_prev = neurons[i - 1]


def test_a_network_whose_one_row_and_inputs_cannot_fit_is_refused() -> None:
    """Layer 2's two 3 x 43,000 inputs (3.9 MB) pass the inputs' own budget, but one row
    of its own (dZ, A and the deferred dZ: 3 x 43,000 values) does not fit beside them."""
    with pytest.raises(ValueError, match=r"one neuron of layer 2 needs a request of 6\.3 MB"):
        invocation_plan.check_inputs((3, 2, 1), 43_000, "fanout")
    invocation_plan.check_inputs((3, 2, 1), 20_000, "fanout")  # a smaller batch fits
    # the first layer, when its width is given: one 49,872-value row and a batch of 100,000
    with pytest.raises(ValueError, match="one neuron of layer 1 needs a request"):
        invocation_plan.check_inputs((3, 1), 100_000, "hybrid", 49_872)
