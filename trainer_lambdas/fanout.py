"""Scatter-gather: one training step computed by neuron invocations, layer by layer.

For each layer, forward, the trainer sends each block its weight rows and the previous
layer's activations, and stacks the blocks' outputs; it computes the cost and its gradient
itself; then, backward, each block gets its rows of Z, A and dL/dA and the layer's input,
and returns its weight and bias gradients and its rows of dL/dZ. The trainer stacks them,
applies the core's `neurons.update`, and forms the previous layer's dL/dA = W^T dL/dZ, as
the reference does (a block returning its k rows of dL/dZ instead of its n_prev x m share
of dL/dA_prev sends n_prev / k times fewer bytes back). `Invoker` runs a batch of requests
in parallel, in order.

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
from trainer_lambdas.nn.network import Step, Weights
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


def step(weights: Weights, blocks: list[list[Block]], inp: StepInputs, invoke: Invoker) -> Step:
    """One forward/backward/update over the plan's blocks; equals `network.step`."""
    zs: list[np.ndarray] = []
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
        w, b = weights[layer]
        a_prev = None if layer == 0 else acts[-1]
        phase = "output" if fused and layer == last else "forward"
        if layer == 0 and p0 is not None:
            reqs = [
                _request(inp, blk, "forward", w[blk.lo : blk.hi], b, None, p0=p0[blk.lo : blk.hi])
                for blk in layer_blocks
            ]
        elif not layer_blocks:
            f = neurons.forward(w, b, _local_input(a_prev, layer), inp.activations[layer])
            zs.append(f.z)
            acts.append(f.a)
            continue
        else:
            reqs = [
                _request(inp, blk, phase, w[blk.lo : blk.hi], b, a_prev) for blk in layer_blocks
            ]
        outs = invoke(reqs)
        zs.append(np.vstack([_need(o.z, "z") for o in outs]))
        acts.append(np.vstack([_need(o.a, "a") for o in outs]))
        if phase == "output":
            output_grads = _gradients(outs)
    cost = cross_entropy(acts[-1], inp.y)
    da = cross_entropy_grad(acts[-1], inp.y)
    new: Weights = list(weights)
    for layer in reversed(range(len(blocks))):
        w, b = weights[layer]
        a_prev = None if layer == 0 else acts[layer - 1]
        if layer == 0 and p0 is not None:
            g = dual.backward(zs[0], acts[0], da, inp.activations[0], w.shape[1], inp.indices)
            new[0] = neurons.update(w, b, g, inp.learning_rate)
            continue
        if not blocks[layer]:
            a_in = _local_input(a_prev, layer)
            g = neurons.backward(
                w, zs[layer], acts[layer], a_in, da, inp.activations[layer], a_in.shape[1], True
            )
            new[layer] = neurons.update(w, b, g, inp.learning_rate)
            da = g.da_prev
            continue
        if layer == last and output_grads is not None:
            grads = output_grads  # computed with the forward pass
        else:
            reqs = [
                _request(
                    inp,
                    blk,
                    "backward",
                    w[blk.lo : blk.hi, :0],  # a block's gradients do not involve its weights
                    b,
                    a_prev,
                    z=zs[layer][blk.lo : blk.hi],
                    a=acts[layer][blk.lo : blk.hi],
                    da=da[blk.lo : blk.hi],
                )
                for blk in blocks[layer]
            ]
            grads = _gradients(invoke(reqs))
        new[layer] = neurons.update(w, b, grads, inp.learning_rate)
        if layer > 0:
            da = w.T @ grads.dz  # dL/dA_prev from every block's dZ rows, with W before the update
    return Step(cost=cost, weights=new)


def _gradients(outs: list[NeuronResponse]) -> neurons.Backward:
    """The blocks' gradients and dZ rows, stacked in block order."""
    return neurons.Backward(
        dw=np.vstack([_need(o.dw, "dw") for o in outs]),
        db=np.vstack([_need(o.db, "db") for o in outs]),
        da_prev=np.zeros(0),
        dz=np.vstack([_need(o.dz, "dz") for o in outs]),
    )


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
        f = neurons.forward(req.w, req.b, a_prev, req.activation)
        return NeuronResponse(z=f.z, a=f.a)
    if req.phase == "output":
        f = neurons.forward(req.w, req.b, a_prev, req.activation)
        da = cross_entropy_grad(f.a, _need(y, "y"))  # elementwise: each block its own rows
        g = neurons.backward(req.w, f.z, f.a, a_prev, da, req.activation, a_prev.shape[1], False)
        return NeuronResponse(z=f.z, a=f.a, dw=g.dw, db=g.db, dz=g.dz)
    z, a, da = _need(req.z, "z"), _need(req.a, "a"), _need(req.da, "da")
    g = neurons.backward(req.w, z, a, a_prev, da, req.activation, a_prev.shape[1], False)
    return NeuronResponse(dw=g.dw, db=g.db, dz=g.dz)


def compute_dual(req: NeuronRequest, gram_cols: np.ndarray) -> NeuronResponse:
    """A first-layer block's forward pass in the dual form, given G's batch columns."""
    f = dual.forward(req.w, req.b, _need(req.p0, "p0"), gram_cols, req.activation)
    return NeuronResponse(z=f.z, a=f.a)


def _local_input(a_prev: np.ndarray | None, layer: int) -> np.ndarray:
    if a_prev is None:  # the training inputs live with the neurons, not in the trainer
        raise ValueError(f"layer {layer + 1} has no blocks, but the first layer must fan out")
    return a_prev


def _need(a: np.ndarray | None, name: str) -> np.ndarray:
    if a is None:
        raise PayloadError(f"a neuron payload lacks '{name}'")
    return a
