"""Lambda handler: forward or backward for one block of neurons. Pure compute, safe to repeat."""

from typing import Any

from state.objects import ObjectStore
from trainer_lambdas import datacache, fanout, services
from trainer_lambdas.payloads import NeuronRequest, NeuronResponse


def compute(req: NeuronRequest, objects: ObjectStore) -> NeuronResponse:
    """The block's outputs; the training inputs come from the warm worker's cache."""
    if req.p0 is not None:  # first layer, dual form: the inputs enter through their Gram matrix
        data = datacache.load(objects, req.data_key)
        return fanout.compute_dual(req, datacache.gram_columns(data, req.indices))
    data: datacache.TrainingData | None = None
    if req.a_prev is None:
        data = datacache.load(objects, req.data_key)
        a_prev = datacache.columns(data, req.indices)
    else:
        a_prev = req.a_prev
    y = None
    if req.phase == "output":  # the loss gradient needs the batch's labels
        data = data or datacache.load(objects, req.data_key)
        y = data.y if req.indices is None else data.y[:, req.indices]
    return fanout.compute(req, a_prev, y)


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return compute(NeuronRequest.from_event(event), services.stores().objects).to_dict()
