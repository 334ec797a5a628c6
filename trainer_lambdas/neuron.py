"""Lambda handler: one phase (forward, backward or output) of one block of neurons.

Pure compute, safe to repeat.
"""

from typing import Any

from state.objects import ObjectStore
from trainer_lambdas import datacache, distributed_step, services
from trainer_lambdas.payloads import NeuronRequest, NeuronResponse


def compute(req: NeuronRequest, objects: ObjectStore) -> NeuronResponse:
    """The block's outputs; the training inputs (and labels) come from the warm worker's cache."""
    if req.p0 is not None:  # first layer, dual form: the inputs enter through their Gram matrix
        data = datacache.load(objects, req.data_key)
        return distributed_step.compute_dual(req, datacache.gram_columns(data, req.indices))
    if req.a_prev is None:
        a_prev = datacache.columns(datacache.load(objects, req.data_key), req.indices)
    else:
        a_prev = req.a_prev
    y = None
    if req.phase == "output":  # the loss gradient needs the batch's labels
        labels = datacache.load(objects, req.data_key).y
        y = labels if req.indices is None else labels[:, req.indices]
    return distributed_step.compute(req, a_prev, y)


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return compute(NeuronRequest.from_event(event), services.stores().objects).to_dict()
