"""Run records for tests that exercise the runs table's transitions directly."""

from state.runs import Prepared, Progress, RunRecord, RunStore

PREPARED = Prepared(
    params={},
    params_source="default",
    params_version=None,
    warnings=[],
    data_key="runs/test/train.npz",
    test_key=None,
    n_x=1,
    m=1,
    m_test=0,
    image_shape=[1, 1, 1],
    classes=["non-cat", "cat"],
    steps_per_epoch=1,
    total_steps=1,
    first_layer="primal",
)


def started_run(runs: RunStore, run_id: str, stale: bool = True) -> RunRecord:
    """A TRAINING run at cursor 0; `stale`: no heartbeat ever (its trainer is gone)."""
    runs.create(run_id, {"key": f"training_input/{run_id}.h5"}, started_at=0.0)
    run = runs.start(run_id, PREPARED)
    if stale:
        run = runs._update(run_id, "test: no heartbeat", set_={"heartbeat": 0})
    return run


def progress(cursor: int, writer: str = "", **fields: object) -> Progress:
    """The state a commit at `cursor` moves a run to (costs and sums are placeholders)."""
    values: dict = {
        "cursor": cursor,
        "weights_version": cursor,
        "weights_writer": writer,
        "epochs_done": cursor,
        "last_cost": None,
        "partial_sum": 0.0,
        "partial_n": 0,
    }
    values.update(fields)
    return Progress(**values)
