"""Per-epoch metrics in CloudWatch's embedded metric format (Powertools), via the logs.

On AWS, CloudWatch turns these log lines into the metrics `itsacat/EpochSeconds` and
`itsacat/Cost` (dimension: service); locally they are ordinary lines in the trainer's log
group. The run id and epoch travel as metadata, not dimensions, to keep cardinality low.
"""

from aws_lambda_powertools.metrics import MetricUnit, single_metric

NAMESPACE = "itsacat"


def record_epoch(run_id: str, epoch: int, cost: float, seconds: float) -> None:
    for name, unit, value in (
        ("EpochSeconds", MetricUnit.Seconds, seconds),
        ("Cost", MetricUnit.NoUnit, cost),
    ):
        with single_metric(name=name, unit=unit, value=value, namespace=NAMESPACE) as metric:
            metric.add_dimension(name="service", value="trainer")
            metric.add_metadata(key="run_id", value=run_id)
            metric.add_metadata(key="epoch", value=epoch)
