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

A layer without blocks (the small layers of the `hybrid` distribution) is computed here, by the same
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

L2 and the optimisers (`nn.optimizers`): every update, wherever it runs, is
`optimizers.regularised` then `optimizers.apply` with the layer's optimiser state
(`OptimiserState`, which a step returns beside the weights) and the step's number t. The
neurons return raw gradients; the trainer regularises them with its own copy of the rows,
the same values. A deferred update carries the rule, its t and the block's rows of the
state, so the block's update equals the trainer's. In the dual form, L2 and momentum keep
layer 1 as W1 = scale W1(0) + C X^T (`nn.dual`): the forward requests carry scale P0.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from trainer_lambdas.invocation_plan import Block
from trainer_lambdas.nn import dual, neurons, optimizers
from trainer_lambdas.nn.cost import cross_entropy, cross_entropy_grad
from trainer_lambdas.nn.network import Weights
from trainer_lambdas.nn.optimizers import Slots
from trainer_lambdas.nn.params import Parameters
from trainer_lambdas.payloads import NeuronRequest, NeuronResponse, PayloadError

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
    rule: Parameters | None = None  # the run's parameters: L2 and the optimiser (None: gd)
    t: int = 1  # this step's update number, from 1
    w0: np.ndarray | None = None  # dual form with L2: W1(0), for the L2 term of the cost
    gram: np.ndarray | None = None  # dual form with L2: X^T X, for the same


@dataclass(frozen=True)
class OptimiserState:
    """What the optimiser keeps beside the weights: per layer its `Slots` (of C and b for
    layer 1 in the dual form), and the dual form's W1 = scale W1(0) + C X^T with momentum's
    v1 = v_scale W1(0) + V X^T (scale 1, v_scale 0 without L2)."""

    slots: list[Slots]
    scale: float = 1.0
    v_scale: float = 0.0

    @classmethod
    def initial(cls, rule: Parameters | None, weights: Weights) -> "OptimiserState":
        optimizer = "gd" if rule is None else rule.optimizer
        return cls([optimizers.initial_slots(optimizer, w, b) for w, b in weights])


@dataclass(frozen=True)
class Made:
    """The step an update belongs to: its batch's examples, its number t, its learning rate."""

    m: int
    t: int
    learning_rate: float


@dataclass(frozen=True)
class Pending:
    """A hidden layer's update of one step, known up to dZ but not applied yet."""

    dz: np.ndarray  # (n_l, m_b) dL_sum/dZ of the layer's rows in that step
    a_prev: np.ndarray  # (n_{l-1}, m_b) the layer's input in that step
    learning_rate: float  # that step's
    t: int = 1  # that step's update number

    @property
    def made(self) -> Made:
        return Made(self.a_prev.shape[1], self.t, self.learning_rate)


# layer (0-based) -> its pending update; `settle` applies them all
Deferred = dict[int, Pending]


@dataclass(frozen=True)
class Step:
    """What one step produced: its cost, and the weights after it, except that the layers
    in `deferred` still hold their rows from before it (their update is pending)."""

    cost: float
    weights: Weights
    deferred: Deferred
    state: OptimiserState  # as of the weights: the deferred layers' is one step behind too


def step(
    weights: Weights,
    blocks: list[list[Block]],
    inp: StepInputs,
    invoke: Invoker,
    deferred: Deferred | None = None,
    state: OptimiserState | None = None,
) -> Step:
    """One forward/backward/update over the invocation plan's blocks; with `settle`, equals
    `network.train_step`. `deferred`: the previous step's pending updates, which the
    layers' blocks apply in this step's forward invocations; `state`: the optimiser's, as
    of `weights` (None: the initial one)."""
    deferred = deferred or {}
    state = state or OptimiserState.initial(inp.rule, weights)
    slots = list(state.slots)
    scale, v_scale = state.scale, state.v_scale
    cur: Weights = list(weights)
    acts: list[np.ndarray] = []
    p0 = None
    if inp.p0 is not None:
        p0 = inp.p0 if inp.indices is None else inp.p0[:, inp.indices]
        if scale != 1.0:
            p0 = scale * p0
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
            carried = _deferred(pending, slots[layer], inp.rule)
            reqs = [
                _request(inp, blk, phase, w[blk.lo : blk.hi], b, a_prev, **carried(blk))
                for blk in layer_blocks
            ]
        outs = invoke(reqs)
        if pending is not None:  # the blocks applied it before their forward pass
            g = _gradients(outs)
            cur[layer], slots[layer] = _update(w, b, g, slots[layer], pending.made, inp.rule)
        acts.append(np.vstack([_need(o.a, "a") for o in outs]))
        if phase == "output":
            output_grads = _gradients(outs, with_dz=True)
    m_b = inp.y.shape[1]
    cost = cross_entropy(acts[-1], inp.y) + _l2_term(cur, p0 is not None, scale, inp)
    da = cross_entropy_grad(acts[-1], inp.y)
    new: Weights = list(cur)
    pend: Deferred = {}
    now = Made(m_b, inp.t, inp.learning_rate)  # an update made in this step
    for layer in reversed(range(len(blocks))):
        w, b = cur[layer]
        a_prev = None if layer == 0 else acts[layer - 1]
        act = inp.activations[layer]
        if layer == 0 and p0 is not None:
            g = dual.backward(acts[0], da, act, w.shape[1], inp.indices)
            if inp.rule is None:
                new[0] = neurons.update(w, b, g, inp.learning_rate)
                continue
            d = dual.update_coefficients(
                scale, w, v_scale, slots[0].vw, b, slots[0].vb, g.dw, g.db, m_b, inp.t, inp.rule
            )
            new[0], slots[0] = (d.c, d.b), Slots(vw=d.vc, vb=d.vb)
            scale, v_scale = d.scale, d.v_scale
            continue
        if not blocks[layer]:
            a_in = _local_input(a_prev, layer)
            g = neurons.backward(w, acts[layer], a_in, da, act, a_in.shape[1], True)
            new[layer], slots[layer] = _update(w, b, g, slots[layer], now, inp.rule)
            da = g.da_prev
            continue
        if layer == last and output_grads is not None:
            dz = output_grads.dz  # computed with the forward pass
            new[layer], slots[layer] = _update(w, b, output_grads, slots[layer], now, inp.rule)
        else:
            dz = neurons.dz_of(da, acts[layer], act)
            if a_prev is not None:
                # A hidden layer's blocks apply this update in their next forward invocation
                # (or `settle` does): no backward wave for it.
                pend[layer] = Pending(
                    dz=dz, a_prev=a_prev, learning_rate=inp.learning_rate, t=inp.t
                )
            else:  # the first layer in the primal form: its inputs live with the neurons
                reqs = [_backward_request(inp, blk, w, b, None, dz) for blk in blocks[layer]]
                g = _gradients(invoke(reqs))
                new[layer], slots[layer] = _update(w, b, g, slots[layer], now, inp.rule)
        if layer > 0:
            da = w.T @ dz  # dL/dA_prev from every block's dZ rows, with W before the update
    return Step(cost=cost, weights=new, deferred=pend, state=OptimiserState(slots, scale, v_scale))


def _update(
    w: np.ndarray,
    b: np.ndarray,
    g: neurons.Backward,
    slots: Slots,
    made: Made,
    rule: Parameters | None,
) -> tuple[tuple[np.ndarray, np.ndarray], Slots]:
    """A layer's update with the raw gradients `g` of the step `made`: plain gd without a
    rule, else L2 and the optimiser's rule."""
    if rule is None:
        return neurons.update(w, b, g, made.learning_rate), slots
    dw = optimizers.regularised(g.dw, w, rule.l2, made.m)
    w2, b2, slots2 = optimizers.apply(w, b, dw, g.db, slots, made.t, rule)
    return (w2, b2), slots2


def _l2_term(cur: Weights, in_dual: bool, scale: float, inp: StepInputs) -> float:
    """The cost's L2 term, of the weights this step's forward pass used (0 without L2)."""
    if inp.rule is None or inp.rule.l2 == 0:
        return 0.0
    norms = 0.0
    for layer, (w, _) in enumerate(cur):
        if layer == 0 and in_dual:
            if inp.w0 is None or inp.gram is None or inp.p0 is None:
                raise ValueError("the dual form's L2 term needs W1(0), P0 and the Gram matrix")
            norms += dual.squared_norm(scale, w, inp.w0, inp.p0, inp.gram)
        else:
            norms += optimizers.squared_norm(w)
    return optimizers.l2_penalty(norms, inp.rule.l2, inp.y.shape[1])


def settle(
    weights: Weights,
    deferred: Deferred,
    blocks: list[list[Block]],
    inp: StepInputs,
    invoke: Invoker,
    state: OptimiserState | None = None,
) -> tuple[Weights, OptimiserState]:
    """The weights (and the optimiser's state) with every pending update applied: one wave
    of backward invocations, one per block of the deferred layers (before a commit, a
    hand-over or the end)."""
    state = state or OptimiserState.initial(inp.rule, weights)
    if not deferred:
        return weights, state
    layers = sorted(deferred)
    reqs = [
        _backward_request(inp, blk, *weights[layer], deferred[layer].a_prev, deferred[layer].dz)
        for layer in layers
        for blk in blocks[layer]
    ]
    outs = invoke(reqs)
    new: Weights = list(weights)
    slots = list(state.slots)
    i = 0
    for layer in layers:
        n = len(blocks[layer])
        w, b = weights[layer]
        g = _gradients(outs[i : i + n])
        new[layer], slots[layer] = _update(w, b, g, slots[layer], deferred[layer].made, inp.rule)
        i += n
    return new, replace(state, slots=slots)


def _gradients(outs: list[NeuronResponse], with_dz: bool = False) -> neurons.Backward:
    """The blocks' weight and bias gradients (and, `with_dz`, their dZ rows), stacked in
    block order."""
    return neurons.Backward(
        dw=np.vstack([_need(o.dw, "dw") for o in outs]),
        db=np.vstack([_need(o.db, "db") for o in outs]),
        da_prev=np.zeros(0),
        dz=np.vstack([_need(o.dz, "dz") for o in outs]) if with_dz else np.zeros(0),
    )


def _deferred(
    pending: Pending | None, slots: Slots, rule: Parameters | None
) -> Callable[[Block], dict[str, Any]]:
    """What a block's forward request carries to apply its pending update first: its rows
    of dZ, the step's input, and with a rule, the rule, t and its rows of the state."""

    def carried(blk: Block) -> dict[str, Any]:
        if pending is None:
            return {}
        out: dict[str, Any] = {
            "dz": pending.dz[blk.lo : blk.hi],
            "grad_input": pending.a_prev,
            "learning_rate": pending.learning_rate,
        }
        if rule is not None:
            rows = slots.rows(blk.lo, blk.hi)
            out.update(rule=rule_of(rule), t=pending.t)
            out.update({k: getattr(rows, k) for k in optimizers.slot_names(rule.optimizer)})
        return out

    return carried


def rule_of(p: Parameters) -> dict[str, Any]:
    """The update rule's hyperparameters, as a forward request carries them."""
    return {
        "optimizer": p.optimizer,
        "lambda": p.l2,
        "beta1": p.beta1,
        "beta2": p.beta2,
        "epsilon": p.epsilon,
    }


def _rule_params(rule: dict[str, Any], learning_rate: float) -> Parameters:
    """A request's rule as `optimizers.apply` reads it (it reads only these fields)."""
    return Parameters(
        epochs=1,
        activations=("sigmoid",),
        neurons=(1,),
        learning_rate=learning_rate,
        l2=float(rule["lambda"]),
        optimizer=str(rule["optimizer"]),
        beta1=float(rule["beta1"]),
        beta2=float(rule["beta2"]),
        epsilon=float(rule["epsilon"]),
    )


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
            m_b = grad_input.shape[1]
            g = neurons.weight_gradients(req.dz, grad_input, m_b)
            lr = _need_float(req.learning_rate, "learning_rate")
            # The trainer's own `_update`: the same operations on the same rows.
            rule = None if req.rule is None else _rule_params(req.rule, lr)
            slots = Slots(vw=req.vw, vb=req.vb, sw=req.sw, sb=req.sb)
            (w, b), _ = _update(w, b, g, slots, Made(m_b, req.t or 1, lr), rule)
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
