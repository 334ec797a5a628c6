"""The composition root the handlers share: configuration, adapters, logging.

Each is built on first use and cached for the warm worker's life (`functools.cache`); the
handlers call `config()`, `stores()` and `invoker()` at the time of each call, so tests put
their own in place by replacing these functions (e.g. `monkeypatch.setattr(services,
"stores", ...)`).
"""

import functools
import logging
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging import utils as log_utils

from state.costs import CostStore
from state.functions import Functions
from state.models import ModelStore
from state.notifications import Notifier
from state.objects import ObjectStore
from state.runs import RunStore
from state.weights import WeightStore
from trainer_lambdas.config import Config
from trainer_lambdas.coordinator import Stores
from trainer_lambdas.invoker import LambdaInvoker

LOGGERS = ("itsacat.launch", "itsacat.trainer", "itsacat.neuron", "itsacat.watchdog")


@functools.cache
def config() -> Config:
    return Config.from_env()


@functools.cache
def stores() -> Stores:
    cfg = config()
    return Stores(
        runs=RunStore(cfg.runs_table),
        weights=WeightStore(cfg.weights_table),
        costs=CostStore(cfg.costs_table),
        objects=ObjectStore(cfg.bucket),
        models=ModelStore(cfg.bucket),
        notifier=Notifier(cfg.topic_arn),
        functions=Functions(),
    )


@functools.cache
def invoker() -> LambdaInvoker:
    cfg = config()
    return LambdaInvoker(stores().functions, cfg.neuron_function, cfg.neuron_concurrency)


@functools.cache
def _logger() -> Logger:
    logger = Logger(service="itsacat")
    for name in LOGGERS:
        logging.getLogger(name)
    log_utils.copy_config_to_registered_loggers(source_logger=logger, include=set(LOGGERS))
    return logger


def setup_logging(context: Any) -> Logger:
    """Structured JSON logs (Powertools) carrying the request id on every line."""
    logger = _logger()
    logger.append_keys(request_id=getattr(context, "aws_request_id", None))
    return logger
