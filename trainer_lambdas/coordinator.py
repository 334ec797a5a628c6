"""Drives one run: takes its lease, walks its steps, commits them, hands over, finishes.

The run record's `cursor` counts the committed steps (a step is one batch of one epoch);
the weights of the committed state, with the optimiser's state beside each row (L2 and
momentum or Adam, `distributed_step.OptimiserState`), are version `cursor` in the weights
table. A commit writes the new version's rows, then moves the cursor with a conditional
update that also requires our lease: a duplicated, late or superseded trainer cannot move
it, and training is deterministic, so whoever recomputes a step computes the same numbers.
"""

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from state import clients
from state.costs import CostStore
from state.errors import Conflict, StateError
from state.functions import Functions
from state.models import ModelStore
from state.notifications import Notifier
from state.objects import ObjectStore
from state.runs import CANCELLED, FAILED, Outcome, Progress, RunRecord, RunStore
from state.weights import WeightStore
from trainer_lambdas import datacache, distributed_step, invocation_plan, metrics
from trainer_lambdas.config import Config
from trainer_lambdas.invoker import LambdaInvoker, LeaseLost
from trainer_lambdas.nn import dual, network, schedule
from trainer_lambdas.nn import params as params_mod
from trainer_lambdas.nn.init import initial_weights
from trainer_lambdas.nn.network import Weights
from trainer_lambdas.nn.optimizers import Slots
from trainer_lambdas.nn.preprocess import flatten_images
from trainer_lambdas.payloads import TrainerEvent

log = logging.getLogger("itsacat.trainer")

# Hand over when less than this is left, plus a few times the slowest step and commit
# seen so far in this invocation.
MIN_MARGIN_SECONDS = 2.5
# Hand-overs in a row that did not do one step: the function's time limit leaves no time
# for a step, and handing over again would loop forever.
MAX_IDLE_HANDOVERS = 3


@dataclass
class Stores:
    runs: RunStore
    weights: WeightStore
    costs: CostStore
    objects: ObjectStore
    models: ModelStore
    notifier: Notifier
    functions: Functions


class Heartbeat:
    """Keeps the lease alive from a background thread while the trainer works.

    A live trainer never loses its run because one step was slow (a cold start, a long
    fan-out); a dead one stops heartbeating and the watchdog takes the run over. A beat
    that finds the lease lost (cancelled, taken over) sets `lost`, and the trainer stops
    at once: no neuron round is sent after it (`LambdaInvoker.halt`), no version written.
    """

    def __init__(
        self,
        runs: RunStore,
        run_id: str,
        owner: str,
        lease_seconds: float,
        lost: threading.Event,
    ) -> None:
        self.runs, self.run_id, self.owner, self.lease = runs, run_id, owner, lease_seconds
        self.lost = lost
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self.lease / 3):
            try:
                self.runs.heartbeat(self.run_id, self.owner, self.lease)
            except Conflict:
                log.warning("the lease was lost; stopping", extra={"run_id": self.run_id})
                self.lost.set()
                return
            except Exception:  # a failed heartbeat is retried at the next beat
                log.warning("heartbeat failed", extra={"run_id": self.run_id}, exc_info=True)


@dataclass
class _State:
    """Where the trainer is, in memory, between commits."""

    cursor: int
    committed: int
    writer: str  # who wrote the committed version (`weights_writer`)
    weights: Weights  # as of `cursor`, except the layers in `deferred`: one step behind
    optim: distributed_step.OptimiserState  # the optimiser's, as of the weights
    epochs_done: int
    last_cost: float | None
    partial_sum: float
    partial_n: int
    stop: bool = False
    # the last step's updates that the neurons apply in the next one (`distributed_step.step`)
    deferred: distributed_step.Deferred = field(default_factory=dict)
    # (epoch, cost, seconds) of the epochs since the last commit: written with it
    costs: list[tuple[int, float, float]] = field(default_factory=list)


def optimiser_extras(
    optim: distributed_step.OptimiserState, weights: Weights
) -> list[dict[str, np.ndarray]]:
    """The optimiser's state as the weights table stores it beside each row: the slots'
    rows, and layer 1's scale and v_scale in the dual form (only once they left 1 and 0)."""
    out: list[dict[str, np.ndarray]] = []
    for layer, slots in enumerate(optim.slots):
        extra = {name: getattr(slots, name) for name in slots.names()}
        if layer == 0 and (optim.scale != 1.0 or optim.v_scale != 0.0):
            rows = weights[0][0].shape[0]
            extra.update(
                scale=np.full((rows, 1), optim.scale), v_scale=np.full((rows, 1), optim.v_scale)
            )
        out.append(extra)
    return out


def optimiser_state(
    rule: params_mod.Parameters | None, weights: Weights, extras: list[dict], version: int
) -> distributed_step.OptimiserState:
    """The optimiser's state stored with version `version` of the weights (the launcher's
    version 0 holds none: the initial state, zeros)."""
    initial = distributed_step.OptimiserState.initial(rule, weights)
    slots = []
    for layer, (init, stored) in enumerate(zip(initial.slots, extras, strict=True)):
        names = init.names()
        if all(name in stored for name in names):
            slots.append(Slots(**{name: stored[name] for name in names}))
        elif version == 0 and not any(name in stored for name in names):
            slots.append(init)
        else:
            raise StateError(
                f"weights v{version} layer {layer + 1} lack the optimiser's state "
                f"({', '.join(names)}): stored {', '.join(sorted(stored)) or 'none'}"
            )
    first = extras[0] if extras else {}
    scale = float(first["scale"][0, 0]) if "scale" in first else 1.0
    v_scale = float(first["v_scale"][0, 0]) if "v_scale" in first else 0.0
    return distributed_step.OptimiserState(slots, scale, v_scale)


class Coordinator:
    def __init__(self, cfg: Config, stores: Stores, invoker: LambdaInvoker) -> None:
        self.cfg = cfg
        self.stores = stores
        self.invoker = invoker

    def drive(
        self, event: TrainerEvent, owner: str, remaining_ms: Callable[[], int]
    ) -> dict[str, Any]:
        """Train the run as far as this invocation's time allows; say how it ended."""
        run_id = event.run_id
        # A warm function's invoker and counters outlive an invocation: start clean.
        self.invoker.halt = threading.Event()
        self.invoker.counters.take()
        clients.UNPROCESSED.take()
        try:
            run = self.stores.runs.acquire(run_id, owner, self.cfg.lease_seconds)
        except Conflict:
            # Another trainer holds the lease, or the run is not training: nothing to do,
            # except what an ended run's trainer may have left undone before it stopped.
            self.stores.runs.count(run_id, {"duplicates": 1})
            log.info(
                "lease held or run not training; this invocation stops", extra={"run_id": run_id}
            )
            self._announce_if_ended(run_id)
            return {"run_id": run_id, "outcome": "not-ours"}
        log.info(
            "trainer holds the lease",
            extra={"run_id": run_id, "reason": event.reason, "cursor": run.cursor},
        )
        try:
            with Heartbeat(
                self.stores.runs, run_id, owner, self.cfg.lease_seconds, self.invoker.halt
            ):
                return self._train(run, owner, remaining_ms)
        except LeaseLost:
            return {"run_id": run_id, "outcome": "lost-lease"}
        except Exception as e:
            self._release_after_error(run_id, owner, e)
            raise

    def _train(self, run: RunRecord, owner: str, remaining_ms: Callable[[], int]) -> dict[str, Any]:
        run_id = run.run_id
        if run.params is None or run.data_key is None or run.cursor is None:
            raise ValueError(f"run {run_id} is TRAINING without its prepared fields")
        p = params_mod.parse(run.params)
        data = datacache.load(self.stores.objects, run.data_key)
        m, n_x = data.y.shape[1], data.x.shape[0]
        steps_per_epoch = schedule.batches_per_epoch(p, m)
        total = p.epochs * steps_per_epoch
        blocks = invocation_plan.for_run(
            n_x, p.neurons, p.neurons_per_invocation, m, p.distribution
        )
        # The first layer in the dual form (`nn.dual`): its state is C (n1 x m), and the
        # neurons need P0 = W1(0) X; W1 itself is rebuilt when the run finishes.
        basis = None
        if run.first_layer == "dual":  # as the launcher decided
            basis = dual.Basis.of(initial_weights(p, n_x)[0][0], data.x)
        # L2 or an optimiser other than gd: the update rule (None: plain gd, as always).
        rule = None if p.l2 == 0 and p.optimizer == "gd" else p
        weights, extras = self.stores.weights.read_with_extras(
            run_id, run.weights_version, n_x if basis is None else m, p.neurons, run.weights_writer
        )
        st = _State(
            cursor=run.cursor,
            committed=run.cursor,
            writer=run.weights_writer,
            weights=weights,
            optim=optimiser_state(rule, weights, extras, run.weights_version),
            epochs_done=run.epochs_done,
            last_cost=run.last_cost,
            partial_sum=run.partial_sum,
            partial_n=run.partial_n,
        )
        st.stop = (
            p.threshold > 0
            and st.last_cost is not None
            and st.last_cost <= p.threshold
            and st.partial_n == 0
        )
        # What every step shares; a step adds its batch's labels and columns.
        base = distributed_step.StepInputs(
            run_id=run_id,
            data_key=run.data_key,
            activations=p.activations,
            learning_rate=p.learning_rate,
            y=data.y,
            indices=None,
            p0=None if basis is None else basis.p0,
            rule=rule,
            # the dual form's L2 term (`dual.squared_norm`): W1(0) and the Gram matrix
            w0=None if basis is None or p.l2 == 0 else basis.w0,
            gram=None if basis is None or p.l2 == 0 else dual.gram(data.x),
        )
        lost = self.invoker.halt
        last_commit = time.monotonic()
        slowest_step = slowest_commit = 0.0
        epoch_started: float | None = None
        while st.cursor < total and not st.stop:
            if lost.is_set():
                raise LeaseLost("the heartbeat found the lease lost")
            margin = MIN_MARGIN_SECONDS + 3 * slowest_step + 2 * slowest_commit
            if remaining_ms() / 1000 < margin:
                self._settle(st, blocks, base)
                idle = run.idle_handovers + 1 if st.cursor == run.cursor else 0
                if idle > MAX_IDLE_HANDOVERS:
                    return self._end_failed(
                        run_id,
                        owner,
                        f"the trainer handed over {MAX_IDLE_HANDOVERS} times in a row without "
                        f"doing a step (at step {st.cursor}): its time limit leaves less than "
                        f"{margin:.1f} s for one; raise TrainerTimeout",
                        "handover-loop",
                    )
                return self._hand_over(run_id, owner, st, p.neurons, idle)
            t0 = time.monotonic()
            epoch, batch = divmod(st.cursor, steps_per_epoch)
            idx = schedule.batch_indices(p, m, epoch, batch)
            y = data.y if idx is None else data.y[:, idx]
            inputs = replace(
                base, y=y, indices=None if idx is None else idx.tolist(), t=st.cursor + 1
            )
            result = distributed_step.step(
                st.weights, blocks, inputs, self.invoker, st.deferred, st.optim
            )
            if not math.isfinite(result.cost):
                return self._diverged(run_id, owner, epoch, result.cost)
            st.weights, st.deferred, st.optim = result.weights, result.deferred, result.state
            st.cursor += 1
            st.partial_sum += result.cost * y.shape[1]
            st.partial_n += y.shape[1]
            if batch == 0 or epoch_started is None:
                epoch_started = t0
            if batch == steps_per_epoch - 1:
                cost = st.partial_sum / st.partial_n
                seconds = time.monotonic() - epoch_started
                st.costs.append((epoch, cost, seconds))
                st.epochs_done, st.last_cost = epoch + 1, cost
                st.partial_sum, st.partial_n = 0.0, 0
                st.stop = p.threshold > 0 and cost <= p.threshold
            now = time.monotonic()
            if (
                st.stop
                or st.cursor == total
                or st.cursor - st.committed >= p.commit_every
                or now - last_commit >= self.cfg.commit_seconds
            ):
                self._settle(st, blocks, base)
                if not self._commit(run_id, owner, st, p.neurons):
                    return {"run_id": run_id, "outcome": "lost-lease", "cursor": st.cursor}
                last_commit = time.monotonic()
                slowest_commit = max(slowest_commit, last_commit - now)
            slowest_step = max(slowest_step, now - t0)
        weights = st.weights
        if basis is not None:
            weights = dual.primal(st.weights, basis, data.x, st.optim.scale)
        return self._finish(run, owner, st, p, data, weights)

    def _diverged(self, run_id: str, owner: str, epoch: int, cost: float) -> dict[str, Any]:
        """A NaN or infinite cost: training cannot go on, and recomputing the step gives the
        same cost, so the run ends FAILED at once (nothing is raised: nothing to retry)."""
        log.error("run diverged", extra={"run_id": run_id, "epoch": epoch})
        return self._end_failed(
            run_id,
            owner,
            f"diverged at epoch {epoch} (cost is {cost}); try a smaller learning_rate "
            "(or a threshold that stops it earlier)",
            "diverged",
            epoch=epoch,
        )

    def _end_failed(
        self, run_id: str, owner: str, reason: str, outcome: str, **details: Any
    ) -> dict[str, Any]:
        """End the run FAILED for a reason no retry can change, and say so."""
        try:
            self.stores.runs.fail(run_id, reason)
        except Conflict:
            return {"run_id": run_id, "outcome": "not-ours"}
        self.stores.notifier.run_failed(run_id, reason)
        self.stores.runs.mark_notified(run_id)
        return {"run_id": run_id, "outcome": outcome, **details}

    def _settle(
        self,
        st: _State,
        blocks: list[list[invocation_plan.Block]],
        inputs: distributed_step.StepInputs,
    ) -> None:
        """Apply the updates still pending from the last step (before storing the weights)."""
        if st.deferred:
            st.weights, st.optim = distributed_step.settle(
                st.weights, st.deferred, blocks, inputs, self.invoker, st.optim
            )
            st.deferred = {}

    def _commit(
        self,
        run_id: str,
        owner: str,
        st: _State,
        sizes: tuple[int, ...],
        release: bool = False,
        counters: dict[str, int] | None = None,
        idle_handovers: int = 0,
    ) -> bool:
        """Write version `cursor` (under our own writer name) and the new epochs' costs, and
        move the run to it; False if the run is no longer ours."""
        if self.invoker.halt.is_set():
            raise LeaseLost("the heartbeat found the lease lost")
        done = st.costs
        if done:
            self.stores.costs.put_many(run_id, done)
            st.costs = []
        moved = st.cursor != st.committed
        if moved:
            self.stores.weights.write(
                run_id, st.cursor, st.weights, owner, optimiser_extras(st.optim, st.weights)
            )
        writer = owner if moved else st.writer
        try:
            self.stores.runs.commit(
                run_id,
                owner,
                expected_cursor=st.committed,
                progress=Progress(
                    cursor=st.cursor,
                    weights_version=st.cursor,
                    weights_writer=writer,
                    epochs_done=st.epochs_done,
                    last_cost=st.last_cost,
                    partial_sum=st.partial_sum,
                    partial_n=st.partial_n,
                    idle_handovers=idle_handovers,
                ),
                counters={
                    **self.invoker.counters.take(),
                    "unprocessed": clients.UNPROCESSED.take(),
                    **(counters or {}),
                },
                lease_seconds=self.cfg.lease_seconds,
                release=release,
            )
        except Conflict:
            log.warning(
                "commit refused: the run was cancelled or another trainer took it over",
                extra={"run_id": run_id, "cursor": st.cursor},
            )
            if moved and not self._points_to(run_id, st.cursor, owner):
                # ours alone, and never pointed to: nobody else will remove it
                self.stores.weights.delete(run_id, st.cursor, sizes, owner)
            return False
        if moved:
            self.stores.weights.delete(run_id, st.committed, sizes, st.writer)
        st.committed, st.writer = st.cursor, writer
        if done:
            metrics.record_epochs(run_id, done)
            log.info(
                "epochs done",
                extra={
                    "run_id": run_id,
                    "epochs": [done[0][0], done[-1][0]],
                    "cost": done[-1][1],
                    "epoch_seconds": sum(s for _, _, s in done) / len(done),
                },
            )
        return True

    def _points_to(self, run_id: str, version: int, writer: str) -> bool:
        """Does the run's record point at `version` by `writer`? A refused commit may have
        been applied after all: its answer was lost, and by the time botocore's retry was
        refused another trainer had taken the lease over, so the record no longer reads as
        our write, yet it points at our version. Unknown counts as yes: a version left
        behind costs storage; a committed one deleted loses the run."""
        try:
            run = self.stores.runs.get(run_id)
        except StateError:
            return True
        return run.weights_version == version and run.weights_writer == writer

    def _hand_over(
        self, run_id: str, owner: str, st: _State, sizes: tuple[int, ...], idle: int
    ) -> dict[str, Any]:
        """Commit, release the lease, and start a fresh trainer invocation to go on
        (`idle`: the hand-overs in a row, this one included, that did no step)."""
        if not self._commit(
            run_id,
            owner,
            st,
            sizes,
            release=True,
            counters={"handovers": 1},
            idle_handovers=idle,
        ):
            return {"run_id": run_id, "outcome": "lost-lease", "cursor": st.cursor}
        self.stores.functions.start(
            self.cfg.trainer_function, TrainerEvent(run_id, "handover").to_dict()
        )
        log.info(
            "handed over to a new trainer invocation", extra={"run_id": run_id, "cursor": st.cursor}
        )
        return {"run_id": run_id, "outcome": "handover", "cursor": st.cursor}

    def _finish(
        self,
        run: RunRecord,
        owner: str,
        st: _State,
        p: params_mod.Parameters,
        data: datacache.TrainingData,
        weights: Weights,
    ) -> dict[str, Any]:
        """Store the model (`weights`: the primal weights of the final state), end the run
        SUCCEEDED, and only then offer the model (staging, or production when there is
        none yet) and announce it."""
        run_id = run.run_id
        train_acc = network.accuracy(weights, p.activations, data.x, data.y)
        test_acc = None
        if run.test_key:
            arrays = self.stores.objects.get_arrays(run.test_key)
            x_test = flatten_images(arrays["x"])
            y_test = arrays["y"].reshape(1, -1)
            test_acc = network.accuracy(weights, p.activations, x_test, y_test)
        seconds = time.time() - (run.started_at or time.time())
        metadata = {
            "run_id": run_id,
            "parameters": p.to_json(),
            "activations": list(p.activations),
            "input_shape": list(run.image_shape),
            "classes": list(run.classes),
            "final_cost": st.last_cost,
            "train_accuracy": train_acc,
            "test_accuracy": test_acc,
            "epochs": st.epochs_done,
            "seconds": seconds,
            "dataset": run.dataset,
        }
        model_uri = self.stores.models.store(run_id, weights, metadata)
        try:
            done = self.stores.runs.finish(
                run_id,
                owner,
                st.cursor,
                Outcome(
                    model_uri=model_uri,
                    train_accuracy=train_acc,
                    test_accuracy=test_acc,
                    final_cost=st.last_cost,
                    seconds=seconds,
                ),
            )
        except Conflict:
            return {"run_id": run_id, "outcome": "lost-lease", "cursor": st.cursor}
        self._after_success(done, len(p.neurons))
        log.info("run succeeded", extra={"run_id": run_id, "model_uri": model_uri})
        return {"run_id": run_id, "outcome": "succeeded", "model_uri": model_uri}

    def _after_success(self, run: RunRecord, layers: int) -> None:
        """What follows a run's SUCCEEDED, each step idempotent: offer its model (the
        staging candidate; production if there is none), drop its weights, announce it
        (asking for approval when production did not change), note the announcement. A
        trainer of the run that finds it ended and not announced does it all again
        (`_announce_if_ended`)."""
        offer = self.stores.models.offer(run.run_id)
        self.stores.weights.delete_run(run.run_id, layers)
        self.stores.notifier.run_succeeded(run, offer)
        self.stores.runs.mark_notified(run.run_id)

    def _announce_if_ended(self, run_id: str) -> None:
        """An ended run whose end was never announced (its trainer stopped between the end
        and the notification): finish the job. SNS delivers at least once anyway."""
        try:
            run = self.stores.runs.get(run_id)
        except StateError:
            return
        if not run.ended or run.notified or run.status == CANCELLED:
            return
        log.info("announcing the end of the run", extra={"run_id": run_id})
        if run.status == FAILED:
            self.stores.notifier.run_failed(run_id, run.error or "unknown error")
            self.stores.runs.mark_notified(run_id)
        elif run.params is not None:  # SUCCEEDED: its parameters are there since its start
            self._after_success(run, len(params_mod.parse(run.params).neurons))

    def _release_after_error(self, run_id: str, owner: str, error: Exception) -> None:
        """Give the lease back so that a retry or the watchdog can go on at once."""
        try:
            self.stores.runs.release(run_id, owner, f"{type(error).__name__}: {error}")
        except Exception:  # the original error matters more
            log.exception("could not release the lease", extra={"run_id": run_id})
