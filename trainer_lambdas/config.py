"""The handlers' configuration, read once from the environment the template sets."""

import os
from collections.abc import Mapping
from dataclasses import dataclass


class ConfigError(RuntimeError):
    """The function's environment lacks a setting the template should have provided."""


@dataclass(frozen=True)
class Config:
    bucket: str
    runs_table: str
    weights_table: str
    costs_table: str
    idempotency_table: str
    topic_arn: str
    trainer_function: str
    neuron_function: str
    lease_seconds: float = 60.0  # a trainer that stops heartbeating loses its run after this
    commit_seconds: float = 10.0  # commit (and heartbeat) at least this often
    neuron_concurrency: int = 32  # neuron invocations in flight per trainer
    max_dataset_bytes: int = 512 * 1024 * 1024
    # This function's memory (MB): AWS_LAMBDA_FUNCTION_MEMORY_SIZE, which Lambda (and the
    # embedded runtime) sets; the launch function's MemorySize in the template if absent.
    memory_mb: int = 1024
    # The trainer's and the neuron's memory (MB), which the launch function checks a dataset
    # against: TRAINER_MEMORY_MB and NEURON_MEMORY_MB, their MemorySize in the template.
    trainer_memory_mb: int = 2048
    neuron_memory_mb: int = 2048

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Config":
        env = os.environ if env is None else env
        names = {
            "bucket": "ITSACAT_BUCKET",
            "runs_table": "RUNS_TABLE",
            "weights_table": "WEIGHTS_TABLE",
            "costs_table": "COSTS_TABLE",
            "idempotency_table": "IDEMPOTENCY_TABLE",
            "topic_arn": "TOPIC_ARN",
            "trainer_function": "TRAINER_FUNCTION",
            "neuron_function": "NEURON_FUNCTION",
        }
        missing = [v for v in names.values() if not env.get(v)]
        if missing:
            raise ConfigError(f"missing environment variable(s): {', '.join(missing)}")
        try:
            return cls(
                **{k: env[v] for k, v in names.items()},
                lease_seconds=float(env.get("LEASE_SECONDS", cls.lease_seconds)),
                commit_seconds=float(env.get("COMMIT_SECONDS", cls.commit_seconds)),
                neuron_concurrency=int(env.get("NEURON_CONCURRENCY", cls.neuron_concurrency)),
                max_dataset_bytes=int(env.get("MAX_DATASET_BYTES", cls.max_dataset_bytes)),
                memory_mb=int(env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", cls.memory_mb)),
                trainer_memory_mb=int(env.get("TRAINER_MEMORY_MB", cls.trainer_memory_mb)),
                neuron_memory_mb=int(env.get("NEURON_MEMORY_MB", cls.neuron_memory_mb)),
            )
        except ValueError as e:
            raise ConfigError(f"bad numeric setting: {e}") from e
