"""The fan-out plan: which blocks of neurons each invocation computes. Pure, no AWS.

`fanout` k puts k consecutive neurons of a layer in one invocation (k = 1: one neuron per
invocation, the default). The `hybrid` plan fans out only the first `remote_layers` layers:
the other layers get no blocks, and the trainer computes them itself. Blocks are capped so
that a request or response stays under Lambda's 6 MB synchronous payload limit (a block's
weight gradient is rows x inputs float64 values, hex-encoded).
"""

from dataclasses import dataclass

PAYLOAD_LIMIT = 6 * 1024 * 1024
# What the arrays of one block may take, leaving room for the rest of the JSON.
ARRAY_BUDGET = 4 * 1024 * 1024
HEX = 2  # bytes of payload per byte of array (hex)


@dataclass(frozen=True)
class Block:
    layer: int  # 1-based
    lo: int
    hi: int

    @property
    def size(self) -> int:
        return self.hi - self.lo


def max_rows(n_prev: int, m: int) -> int:
    """Most rows one block may carry: its weights or dW (rows x n_prev) and its rows of A
    and dZ (rows x m), with room to spare. (Not counted: the layer's inputs, which every
    block of a layer gets whole, twice for a hidden layer: `check_inputs` refuses, at
    launch, a network whose inputs alone would not fit.)"""
    per_row = 8 * HEX * (n_prev + 3 * m + 1)
    return max(1, int(ARRAY_BUDGET // per_row))


def plan(
    n_x: int, neurons: tuple[int, ...], fanout: int, m: int, remote_layers: int | None = None
) -> list[list[Block]]:
    """For each layer, its blocks in order; together they cover every neuron exactly once.

    Layers after the first `remote_layers` (None: all are remote) have no blocks: local.
    """
    if fanout < 1:
        raise ValueError(f"fanout must be >= 1, got {fanout}")
    if remote_layers is not None and remote_layers < 1:
        raise ValueError(f"remote_layers must be >= 1, got {remote_layers}")
    layers: list[list[Block]] = []
    n_prev = n_x
    for layer, n in enumerate(neurons, start=1):
        k = min(fanout, max_rows(n_prev, m))
        if remote_layers is not None and layer > remote_layers:
            layers.append([])
            n_prev = n
            continue
        layers.append([Block(layer, lo, min(lo + k, n)) for lo in range(0, n, k)])
        n_prev = n
    return layers


def check_inputs(neurons: tuple[int, ...], m: int, kind: str) -> None:
    """Raise ValueError when a fanned-out layer's requests cannot fit Lambda's payload
    limit whatever their blocks: a layer after the first gets its input whole, and a hidden
    one also the input of the step before (its deferred update), m values per input row."""
    if kind == "hybrid":  # only layer 1 fans out, and its inputs live with the neurons
        return
    last = len(neurons) - 1
    for i in range(1, len(neurons)):
        copies = 1 if i == last else 2
        size = copies * neurons[i - 1] * m * 8 * HEX
        if size > ARRAY_BUDGET:
            raise ValueError(
                f"layer {i + 1}'s requests would carry {size / 2**20:.1f} MB of inputs "
                f"({copies} x {neurons[i - 1]} x {m} values), over what one Lambda request "
                f"holds: use fewer neurons in layer {i} or the 'hybrid' plan"
            )


def backward_blocks(p: list[list[Block]], dual: bool) -> list[list[Block]]:
    """The blocks invoked backward in every step: only the first layer's, and only in the
    primal form. The first layer's backward pass in the dual form is dZ1 / m, which the
    trainer does itself (`nn.dual`); the output layer's blocks do theirs in their forward
    invocation, and the other layers' blocks do theirs in their next forward invocation
    (`fanout.step`)."""
    return [blocks if i == 0 and not dual else [] for i, blocks in enumerate(p)]


def deferred_blocks(p: list[list[Block]]) -> list[list[Block]]:
    """The blocks that apply their update one step late, in their next forward invocation:
    those of the layers between the first and the output layer. Before each commit,
    `fanout.settle` invokes each of them once, in one wave, for the update still pending."""
    last = len(p) - 1
    return [blocks if 0 < i < last else [] for i, blocks in enumerate(p)]


def invocations_per_step(p: list[list[Block]], dual: bool = False) -> int:
    """Forward, every block once; backward, every block of `backward_blocks` once (a
    commit adds `invocations_per_commit`)."""
    return sum(len(b) for b in p) + sum(len(b) for b in backward_blocks(p, dual))


def invocations_per_commit(p: list[list[Block]]) -> int:
    """The invocations of `fanout.settle` before a commit: every deferred block once."""
    return sum(len(b) for b in deferred_blocks(p))


def for_params(
    n_x: int, neurons: tuple[int, ...], fanout: int, m: int, kind: str
) -> list[list[Block]]:
    """The plan a run's parameters ask for (`plan`: "fanout" or "hybrid")."""
    return plan(n_x, neurons, fanout, m, remote_layers=1 if kind == "hybrid" else None)
