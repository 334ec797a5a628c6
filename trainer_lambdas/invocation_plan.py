"""The invocation plan: which block of neurons each neuron invocation computes. Pure, no AWS.

`neurons_per_invocation` k (the "fanout" key of parameters.json) puts k consecutive neurons
of a layer in one invocation (k = 1: one neuron per invocation, the default). A run's
`distribution` (the "plan" key) says which layers invocations compute at all, the remote
ones: every layer ("fanout"), or only the first ("hybrid"); the other layers get no blocks,
and the trainer computes them itself. Blocks are capped so that a request or response stays
under Lambda's 6 MB synchronous payload limit (a block's weight gradient is rows x inputs
float64 values, hex-encoded).

The budget of one request: its block's own arrays (`max_rows`: at most ARRAY_BUDGET) plus
the inputs every block of its layer gets whole (`shared_bytes`: at most ARRAY_BUDGET, which
`check_inputs` enforces at launch) plus JSON_ROOM and the batch's `indices` (`json_room`)
stay within PAYLOAD_LIMIT: `max_rows` takes the shared inputs into account, so the two
budgets together never pass the limit.
"""

from dataclasses import dataclass

from trainer_lambdas.nn.params import FIRST_LAYER_REMOTE

PAYLOAD_LIMIT = 6 * 1024 * 1024
# What the arrays of one block may take, and what the inputs its layer's requests share may.
ARRAY_BUDGET = 4 * 1024 * 1024
HEX = 2  # bytes of payload per byte of array (hex)
# A request's JSON besides its arrays and its `indices`: keys, shapes, ids (well under this).
JSON_ROOM = 64 * 1024
INDEX_BYTES = 8  # an example's index in `indices`: up to 6 digits and ", "


@dataclass(frozen=True)
class Block:
    layer: int  # 1-based
    lo: int
    hi: int

    @property
    def size(self) -> int:
        return self.hi - self.lo


def json_room(m: int) -> int:
    """What a request may carry besides its arrays: JSON_ROOM, and the `indices` of a
    mini-batch of up to `m` examples."""
    return JSON_ROOM + INDEX_BYTES * m


def row_bytes(n_prev: int, m: int) -> int:
    """A block's own payload per row: its weights or dW (n_prev values) and its rows of A,
    dZ and P0 or a deferred dZ (m values each), and its bias; an upper bound of both its
    request's and its response's own arrays."""
    return 8 * HEX * (n_prev + 3 * m + 1)


def shared_bytes(layer: int, n_layers: int, n_prev: int, m: int) -> int:
    """The inputs every request of `layer` (1-based) gets whole: none for the first layer
    (its inputs live with the neurons), the layer's input for the output layer, and for a
    hidden layer also the input of the step before (its deferred update)."""
    return _copies(layer, n_layers) * n_prev * m * 8 * HEX


def _copies(layer: int, n_layers: int) -> int:
    return 0 if layer == 1 else 1 if layer == n_layers else 2


def max_rows(n_prev: int, m: int, shared: int = 0) -> int:
    """Most rows one block may carry: its own arrays (`row_bytes` per row) within
    ARRAY_BUDGET, and within what the payload limit leaves after the layer's `shared`
    inputs and the JSON (`json_room`). At least 1: `check_inputs` refuses, at launch, a
    network whose one row and inputs would not fit."""
    own = min(ARRAY_BUDGET, PAYLOAD_LIMIT - json_room(m) - shared)
    return max(1, int(own // row_bytes(n_prev, m)))


def blocks(
    n_x: int,
    neurons: tuple[int, ...],
    neurons_per_invocation: int,
    m: int,
    remote_layers: int | None = None,
) -> list[list[Block]]:
    """For each layer, its blocks in order; together they cover every neuron exactly once.

    Layers after the first `remote_layers` (None: all are remote) have no blocks: local.
    """
    if neurons_per_invocation < 1:
        raise ValueError(f"neurons_per_invocation must be >= 1, got {neurons_per_invocation}")
    if remote_layers is not None and remote_layers < 1:
        raise ValueError(f"remote_layers must be >= 1, got {remote_layers}")
    layers: list[list[Block]] = []
    n_prev = n_x
    for layer, n in enumerate(neurons, start=1):
        k = min(
            neurons_per_invocation,
            max_rows(n_prev, m, shared_bytes(layer, len(neurons), n_prev, m)),
        )
        if remote_layers is not None and layer > remote_layers:
            layers.append([])
            n_prev = n
            continue
        layers.append([Block(layer, lo, min(lo + k, n)) for lo in range(0, n, k)])
        n_prev = n
    return layers


def check_inputs(
    neurons: tuple[int, ...], m: int, distribution: str, n_x: int | None = None
) -> None:
    """Raise ValueError when a remote layer's requests cannot fit Lambda's payload
    limit whatever their blocks: a layer after the first gets its input whole, and a hidden
    one also the input of the step before (its deferred update), m values per input row;
    those inputs may take ARRAY_BUDGET, and with one row of the block's own arrays and the
    JSON they must fit PAYLOAD_LIMIT. (`n_x`: the first layer is checked too.)"""
    remote = _remote_layers(distribution) or len(neurons)
    widths = ([] if n_x is None else [(1, n_x)]) + [
        (i + 1, neurons[i - 1]) for i in range(1, remote)
    ]
    for layer, n_prev in widths:
        shared = shared_bytes(layer, len(neurons), n_prev, m)
        if shared > ARRAY_BUDGET:
            raise ValueError(
                f"layer {layer}'s requests would carry {shared / 2**20:.1f} MB of inputs "
                f"({_copies(layer, len(neurons))} x {n_prev} x {m} values), over what one "
                "Lambda request "
                f"holds: use fewer neurons in layer {layer - 1} or the 'hybrid' plan"
            )
        need = shared + row_bytes(n_prev, m) + json_room(m)
        if need > PAYLOAD_LIMIT:
            raise ValueError(
                f"one neuron of layer {layer} needs a request of {need / 2**20:.1f} MB "
                f"({n_prev} inputs, a batch of {m} examples), over Lambda's "
                f"{PAYLOAD_LIMIT // 2**20} MB payload limit: use a smaller batch_size"
                + (f", fewer neurons in layer {layer - 1}" if layer > 1 else "")
                + ("" if layer == 1 else " or the 'hybrid' plan")
            )


def backward_blocks(plan: list[list[Block]], dual: bool) -> list[list[Block]]:
    """The blocks invoked backward in every step: only the first layer's, and only in the
    primal form. The first layer's backward pass in the dual form is dZ1 / m, which the
    trainer does itself (`nn.dual`); the output layer's blocks do theirs in their forward
    invocation, and the other layers' blocks do theirs in their next forward invocation
    (`distributed_step.step`)."""
    return [layer if i == 0 and not dual else [] for i, layer in enumerate(plan)]


def deferred_blocks(plan: list[list[Block]]) -> list[list[Block]]:
    """The blocks that apply their update one step late, in their next forward invocation:
    those of the layers between the first and the output layer. Before each commit,
    `distributed_step.settle` invokes each of them once, in one wave, for the update still
    pending."""
    last = len(plan) - 1
    return [layer if 0 < i < last else [] for i, layer in enumerate(plan)]


def invocations_per_step(plan: list[list[Block]], dual: bool = False) -> int:
    """Forward, every block once; backward, every block of `backward_blocks` once (a
    commit adds `invocations_per_commit`)."""
    return sum(len(b) for b in plan) + sum(len(b) for b in backward_blocks(plan, dual))


def invocations_per_commit(plan: list[list[Block]]) -> int:
    """The invocations of `distributed_step.settle` before a commit: every deferred block
    once."""
    return sum(len(b) for b in deferred_blocks(plan))


def _remote_layers(distribution: str) -> int | None:
    """How many layers, from the first, neuron invocations compute (None: all)."""
    return 1 if distribution == FIRST_LAYER_REMOTE else None


def for_run(
    n_x: int, neurons: tuple[int, ...], neurons_per_invocation: int, m: int, distribution: str
) -> list[list[Block]]:
    """The blocks a run's parameters ask for (`Parameters.distribution`: "fanout", every
    layer remote, or "hybrid", the first only)."""
    return blocks(n_x, neurons, neurons_per_invocation, m, _remote_layers(distribution))
