"""Per-epoch metrics in CloudWatch's embedded metric format (Powertools), via the logs.

On AWS, CloudWatch turns these log lines into the metrics `itsacat/EpochSeconds` and
`itsacat/Cost` (dimension: service); locally they are ordinary lines in the trainer's log
group. The trainer records the epochs of each commit together: one line carries up to 50
values per metric, in epoch order, with the run id and the epochs as
metadata (not dimensions, to keep cardinality low).
"""

from aws_lambda_powertools.metrics import Metrics, MetricUnit

NAMESPACE = "itsacat"
MAX_VALUES = 50  # values of one metric per EMF line (EMF allows 100; Powertools flushes at 99)


def record_epochs(run_id: str, rows: list[tuple[int, float, float]]) -> None:
    """Emit (epoch, cost, seconds) rows, in order, as EMF lines of at most 50 epochs."""
    for i in range(0, len(rows), MAX_VALUES):
        chunk = rows[i : i + MAX_VALUES]
        m = Metrics(namespace=NAMESPACE, service="trainer")
        for _, cost, seconds in chunk:
            m.add_metric(name="EpochSeconds", unit=MetricUnit.Seconds, value=seconds)
            m.add_metric(name="Cost", unit=MetricUnit.NoUnit, value=cost)
        m.add_metadata(key="run_id", value=run_id)
        m.add_metadata(key="epochs", value=[epoch for epoch, _, _ in chunk])
        m.flush_metrics()
