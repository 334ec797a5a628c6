"""Scatter-gather: one training step computed by neuron invocations, layer by layer.

For each layer, forward, the trainer sends each block its weight rows and the previous
layer's activations, and stacks the blocks' outputs; it computes the cost and its gradient
itself. Backward, it walks the layers down: a layer's dL/dZ = dL/dA * g'(Z) is elementwise,
so the trainer forms it, and the previous layer's dL/dA = W^T dL/dZ, as the reference does.
What is left of a layer's backward pass is its weight gradient dW = dZ A_prev^T / m, the
product that costs as much as the forward pass, and the update: the blocks do those. `Invoker`
runs a batch of requests in parallel, in order.

A hidden layer's blocks do them one step late, in their next forward invocation: the request
carries the block's old rows, its rows of the previous step's dZ and that step's input; the
block computes the gradient, applies the update, runs its forward pass with the new rows,
and returns the gradient with its outputs, from which the trainer applies the same update to
its copy. The numbers are those of updating at once (the same operations on the same values);
what changes is that a step needs no backward wave for those layers: 4 waves per step
instead of 6 for a 4-layer network. The updates still pending after a step (`Step.deferred`)
are applied by `settle`, one wave of backward invocations, before the weights are stored.

A layer without blocks (the `hybrid` plan's small layers) is computed here, by the same
core functions on the whole layer, so the numbers do not depend on where it ran. Backward
requests carry no weights: a block's gradients do not use them.

The output layer's blocks compute their forward pass, the loss gradient of their rows (the
cross-entropy's is elementwise: labels from the worker's data cache) and their backward
pass in one invocation (phase "output"): one wave of invocations fewer per step.

With the first layer in the dual form (`nn.dual`, `StepInputs.p0` set), its weights are the
coefficients C: a forward request carries the block's rows of C and of P0, and the neuron
multiplies them by its cached Gram matrix. The layer's backward pass is then dZ1 / m_b, an
elementwise product with no weights and no inputs in it, so the trainer does it itself
with `dual.backward`, as it applies every update.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from trainer_lambdas.nn import dual, neurons
from trainer_lambdas.nn.cost import cross_entropy, cross_entropy_grad
from trainer_lambdas.nn.network import Weights
from trainer_lambdas.payloads import NeuronRequest, NeuronResponse, PayloadError
from trainer_lambdas.plan import Block

Invoker = Callable[[Sequence[NeuronRequest]], list[NeuronResponse]]


@dataclass(frozen=True)
class StepInputs:
    run_id: str
    data_key: str
    activations: tuple[str, ...]
    learning_rate: float
    y: np.ndarray  # (1, m) labels of this step's batch
    indices: list[int] | None  # the batch's columns of the training data; None: all
    p0: np.ndarray | None = None  # first layer in the dual form: W1(0) X (n1, m); None: primal


@dataclass(frozen=True)
class Pending:
    """A hidden layer's update of one step, known up to dZ but not applied yet."""

    dz: np.ndarray  # (n_l, m_b) dL_sum/dZ of the layer's rows in that step
    a_prev: np.ndarray  # (n_{l-1}, m_b) the layer's input in that step
    learning_rate: float  # that step's


# layer (0-based) -> its pending update; `settle` applies them all
Deferred = dict[int, Pending]


@dataclass(frozen=True)
class Step:
    """What one step produced: its cost, and the weights after it, except that the layers
    in `deferred` still hold their rows from before it (their update is pending)."""

    cost: float
    weights: Weights
    deferred: Deferred


def step(
    weights: Weights,
    blocks: list[list[Block]],
    inp: StepInputs,
    invoke: Invoker,
    deferred: Deferred | None = None,
) -> Step:
    """One forward/backward/update over the plan's blocks; with `settle`, equals
    `network.step`. `deferred`: the previous step's pending updates, which the layers'
    blocks apply in this step's forward invocations."""
    deferred = deferred or {}
    cur: Weights = list(weights)
    acts: list[np.ndarray] = []
    p0 = None
    if inp.p0 is not None:
        p0 = inp.p0 if inp.indices is None else inp.p0[:, inp.indices]
    last = len(blocks) - 1
    # The output layer's blocks (when it is not also the first layer) compute forward, the
    # loss gradient and backward in one invocation: one wave fewer per step.
    fused = last > 0 and bool(blocks[last])
    output_grads: neurons.Backward | None = None
    for layer, layer_blocks in enumerate(blocks):
        w, b = cur[layer]
        a_prev = None if layer == 0 else acts[-1]
        phase = "output" if fused and layer == last else "forward"
        pending = deferred.get(layer)
        if layer == 0 and p0 is not None:
            reqs = [
                _request(inp, blk, "forward", w[blk.lo : blk.hi], b, None, p0=p0[blk.lo : blk.hi])
                for blk in layer_blocks
            ]
        elif not layer_blocks:
            acts.append(
                neurons.forward(w, b, _local_input(a_prev, layer), inp.activations[layer]).a
            )
            continue
        else:
            reqs = [
                _request(inp, blk, phase, w[blk.lo : blk.hi], b, a_prev, **_deferred(pending, blk))
                for blk in layer_blocks
            ]
        outs = invoke(reqs)
        if pending is not None:  # the blocks applied it before their forward pass
            cur[layer] = neurons.update(w, b, _gradients(outs), pending.learning_rate)
        acts.append(np.vstack([_need(o.a, "a") for o in outs]))
        if phase == "output":
            output_grads = _gradients(outs, with_dz=True)
    cost = cross_entropy(acts[-1], inp.y)
    da = cross_entropy_grad(acts[-1], inp.y)
    new: Weights = list(cur)
    pend: Deferred = {}
    for layer in reversed(range(len(blocks))):
        w, b = cur[layer]
        a_prev = None if layer == 0 else acts[layer - 1]
        act = inp.activations[layer]
        if layer == 0 and p0 is not None:
            g = dual.backward(acts[0], da, act, w.shape[1], inp.indices)
            new[0] = neurons.update(w, b, g, inp.learning_rate)
            continue
        if not blocks[layer]:
            a_in = _local_input(a_prev, layer)
            g = neurons.backward(w, acts[layer], a_in, da, act, a_in.shape[1], True)
            new[layer] = neurons.update(w, b, g, inp.learning_rate)
            da = g.da_prev
            continue
        if layer == last and output_grads is not None:
            dz = output_grads.dz  # computed with the forward pass
            new[layer] = neurons.update(w, b, output_grads, inp.learning_rate)
        else:
            dz = neurons.dz_of(da, acts[layer], act)
            if a_prev is not None:
                # A hidden layer's blocks apply this update in their next forward invocation
                # (or `settle` does): no backward wave for it.
                pend[layer] = Pending(dz=dz, a_prev=a_prev, learning_rate=inp.learning_rate)
            else:  # the first layer in the primal form: its inputs live with the neurons
                reqs = [_backward_request(inp, blk, w, b, None, dz) for blk in blocks[layer]]
                new[layer] = neurons.update(w, b, _gradients(invoke(reqs)), inp.learning_rate)
        if layer > 0:
            da = w.T @ dz  # dL/dA_prev from every block's dZ rows, with W before the update
    return Step(cost=cost, weights=new, deferred=pend)


def settle(
    weights: Weights,
    deferred: Deferred,
    blocks: list[list[Block]],
    inp: StepInputs,
    invoke: Invoker,
) -> Weights:
    """The weights with every pending update applied: one wave of backward invocations,
    one per block of the deferred layers (before a commit, a hand-over or the end)."""
    if not deferred:
        return weights
    layers = sorted(deferred)
    reqs = [
        _backward_request(inp, blk, *weights[layer], deferred[layer].a_prev, deferred[layer].dz)
        for layer in layers
        for blk in blocks[layer]
    ]
    outs = invoke(reqs)
    new: Weights = list(weights)
    i = 0
    for layer in layers:
        n = len(blocks[layer])
        w, b = weights[layer]
        g = _gradients(outs[i : i + n])
        new[layer] = neurons.update(w, b, g, deferred[layer].learning_rate)
        i += n
    return new


def _gradients(outs: list[NeuronResponse], with_dz: bool = False) -> neurons.Backward:
    """The blocks' weight and bias gradients (and, `with_dz`, their dZ rows), stacked in
    block order."""
    return neurons.Backward(
        dw=np.vstack([_need(o.dw, "dw") for o in outs]),
        db=np.vstack([_need(o.db, "db") for o in outs]),
        da_prev=np.zeros(0),
        dz=np.vstack([_need(o.dz, "dz") for o in outs]) if with_dz else np.zeros(0),
    )


def _deferred(pending: Pending | None, blk: Block) -> dict[str, Any]:
    """What a forward request carries to apply its block's pending update first."""
    if pending is None:
        return {}
    return {
        "dz": pending.dz[blk.lo : blk.hi],
        "grad_input": pending.a_prev,
        "learning_rate": pending.learning_rate,
    }


def _backward_request(
    inp: StepInputs,
    blk: Block,
    w: np.ndarray,
    b: np.ndarray,
    a_prev: np.ndarray | None,
    dz: np.ndarray,
) -> NeuronRequest:
    """A block's backward request: its dZ rows and the layer's input (None: the training
    inputs, from the neuron's cache); a block's gradients do not involve its weights."""
    return _request(inp, blk, "backward", w[blk.lo : blk.hi, :0], b, a_prev, dz=dz[blk.lo : blk.hi])


def _request(
    inp: StepInputs,
    blk: Block,
    phase: str,
    w_rows: np.ndarray,
    b: np.ndarray,
    a_prev: np.ndarray | None,
    **extra: Any,
) -> NeuronRequest:
    """The request for one block: its rows of the layer, and what the phase needs."""
    return NeuronRequest(
        run_id=inp.run_id,
        data_key=inp.data_key,
        phase=phase,
        layer=blk.layer,
        lo=blk.lo,
        hi=blk.hi,
        activation=inp.activations[blk.layer - 1],
        w=w_rows,
        b=b[blk.lo : blk.hi],
        a_prev=a_prev,
        indices=inp.indices,
        **extra,
    )


def compute(req: NeuronRequest, a_prev: np.ndarray, y: np.ndarray | None = None) -> NeuronResponse:
    """What a neuron invocation computes, given the resolved previous activations (and,
    for the output layer's fused phase, the batch's labels `y`)."""
    if req.phase == "forward":
        w, b, g = req.w, req.b, None
        if req.dz is not None:  # the previous step's update of these rows, deferred to here
            grad_input = _need(req.grad_input, "grad_input")
            g = neurons.weight_gradients(req.dz, grad_input, grad_input.shape[1])
            w, b = neurons.update(w, b, g, _need_float(req.learning_rate, "learning_rate"))
        f = neurons.forward(w, b, a_prev, req.activation)
        if g is None:
            return NeuronResponse(a=f.a)
        return NeuronResponse(a=f.a, dw=g.dw, db=g.db)
    if req.phase == "output":
        f = neurons.forward(req.w, req.b, a_prev, req.activation)
        da = cross_entropy_grad(f.a, _need(y, "y"))  # elementwise: each block its own rows
        g = neurons.backward(req.w, f.a, a_prev, da, req.activation, a_prev.shape[1], False)
        return NeuronResponse(a=f.a, dw=g.dw, db=g.db, dz=g.dz)
    g = neurons.weight_gradients(_need(req.dz, "dz"), a_prev, a_prev.shape[1])
    return NeuronResponse(dw=g.dw, db=g.db)


def compute_dual(req: NeuronRequest, gram_cols: np.ndarray) -> NeuronResponse:
    """A first-layer block's forward pass in the dual form, given G's batch columns."""
    f = dual.forward(req.w, req.b, _need(req.p0, "p0"), gram_cols, req.activation)
    return NeuronResponse(a=f.a)


def _local_input(a_prev: np.ndarray | None, layer: int) -> np.ndarray:
    if a_prev is None:  # the training inputs live with the neurons, not in the trainer
        raise ValueError(f"layer {layer + 1} has no blocks, but the first layer must fan out")
    return a_prev


def _need(a: np.ndarray | None, name: str) -> np.ndarray:
    if a is None:
        raise PayloadError(f"a neuron payload lacks '{name}'")
    return a


def _need_float(v: float | None, name: str) -> float:
    if v is None:
        raise PayloadError(f"a neuron payload lacks '{name}'")
    return v
