"""Blue/green model stages (`state/models.py`): offer, promote, rollback, against moto's S3.

Promotion is one conditional PUT of the production pointer. These tests interleave a second
writer between a promotion's read and its write, and lose a write's answer after S3 applied
it, to show that a race is refused rather than lost and that a retried write is not
mistaken for a race.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from api_support import TinyModel
from botocore.exceptions import ClientError

from state.models import (
    HISTORY_LIMIT,
    POINTER_KEYS,
    PRODUCTION,
    STAGING,
    ModelNotFound,
    ModelStore,
    PromotionConflict,
    PromotionRefused,
)


def stored(store: ModelStore, model: TinyModel, run_id: str, test: float, at: str) -> str:
    meta = {**model.metadata, "test_accuracy": test, "trained_at": at}
    store.store(run_id, model.weights, meta)
    return run_id


def stages(store: ModelStore) -> tuple[str | None, str | None]:
    prod, stag = store.pointer(PRODUCTION), store.pointer(STAGING)
    return (prod.run_id if prod else None, stag.run_id if stag else None)


@pytest.fixture
def three(store: ModelStore, tiny_model: TinyModel) -> ModelStore:
    """Runs a (0.8), b (0.9) and c (0.6) stored, in that order, none offered yet."""
    stored(store, tiny_model, "a", 0.8, "2026-11-30T10:00:00+00:00")
    stored(store, tiny_model, "b", 0.9, "2026-11-30T11:00:00+00:00")
    stored(store, tiny_model, "c", 0.6, "2026-11-30T12:00:00+00:00")
    return store


def test_the_first_offer_goes_to_production_later_ones_to_staging(three: ModelStore) -> None:
    first = three.offer("a")
    assert first.promoted and stages(three) == ("a", "a")
    second = three.offer("b")
    assert not second.promoted
    assert second.production is not None and second.production["run_id"] == "a"
    assert stages(three) == ("a", "b")  # production unchanged until promoted
    model = three.current(STAGING)
    assert model is not None and model.run_id == "b" and model.stage == STAGING
    assert three.offer("b") == second  # a repeated offer changes nothing


def test_a_late_offer_of_an_older_run_leaves_the_newer_candidate(three: ModelStore) -> None:
    three.offer("a")
    three.offer("c")
    three.offer("b")  # trained before c: a late (re-delivered) offer
    assert stages(three) == ("a", "c")


def test_promote_refuses_a_worse_candidate_unless_forced(three: ModelStore) -> None:
    three.offer("a")
    three.offer("c")
    before = three.pointer(PRODUCTION)
    with pytest.raises(PromotionRefused, match=r"60\.0% is below production's 80\.0% \(a\)"):
        three.promote("c")
    assert three.pointer(PRODUCTION) == before  # not even rewritten
    done = three.promote("c", force=True)
    assert (done.run_id, done.previous) == ("c", "a")
    assert stages(three)[0] == "c"


def test_promote_then_rollback_restores_production_and_its_legacy_copy(
    three: ModelStore, s3: Any
) -> None:
    three.offer("a")
    three.offer("b")
    assert three.promote("b").previous == "a"
    pointer = three.pointer(PRODUCTION)
    assert pointer is not None and pointer.previous == ("a",)
    assert three.promote("b").changed is False  # already there
    legacy = json.loads(
        s3.get_object(Bucket=three.bucket, Key="training_results/results.json")["Body"].read()
    )
    assert legacy["run_id"] == "b"

    back = three.rollback()
    assert (back.run_id, back.previous) == ("a", "b")
    assert stages(three) == ("a", "b")
    legacy = json.loads(
        s3.get_object(Bucket=three.bucket, Key="training_results/results.json")["Body"].read()
    )
    assert legacy["run_id"] == "a"
    with pytest.raises(PromotionRefused, match="no earlier model"):
        three.rollback()


def test_promote_of_an_unknown_run_and_rollback_of_nothing_are_refused(store: ModelStore) -> None:
    with pytest.raises(ModelNotFound, match="no model 'nope'"):
        store.promote("nope")
    with pytest.raises(PromotionRefused, match="no production model"):
        store.rollback()
    assert stages(store) == (None, None)


class Interleaving:
    """An S3 client that runs `before_put` once, just before the first conditional PUT of a
    stage pointer: another writer acting between this writer's read and its write."""

    def __init__(self, s3: Any, before_put: Any) -> None:
        self.s3 = s3
        self.before_put = before_put

    def put_object(self, **kwargs: Any) -> Any:
        if self.before_put and kwargs["Key"] in POINTER_KEYS.values():
            act, self.before_put = self.before_put, None
            act()
        return self.s3.put_object(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.s3, name)


def test_a_promotion_racing_another_is_refused_not_lost(three: ModelStore, s3: Any) -> None:
    three.offer("a")
    other = ModelStore(three.bucket, s3_client=s3)
    racing = ModelStore(
        three.bucket, s3_client=Interleaving(s3, lambda: other.promote("b", force=True))
    )
    with pytest.raises(PromotionConflict, match="it held a, now b"):
        racing.promote("c", force=True)
    pointer = three.pointer(PRODUCTION)
    assert pointer is not None and (pointer.run_id, pointer.previous) == ("b", ("a",))
    # Retried after the refusal, it sees b and replaces it, keeping both in the history.
    racing.promote("c", force=True)
    pointer = three.pointer(PRODUCTION)
    assert pointer is not None and (pointer.run_id, pointer.previous) == ("c", ("a", "b"))


def test_a_rollback_racing_a_promotion_is_refused(three: ModelStore, s3: Any) -> None:
    three.offer("a")
    three.promote("b")
    other = ModelStore(three.bucket, s3_client=s3)
    racing = ModelStore(
        three.bucket, s3_client=Interleaving(s3, lambda: other.promote("c", force=True))
    )
    with pytest.raises(PromotionConflict):
        racing.rollback()
    assert stages(three)[0] == "c"


def test_two_first_offers_racing_leave_one_production_and_the_other_a_candidate(
    three: ModelStore, s3: Any
) -> None:
    other = ModelStore(three.bucket, s3_client=s3)
    racing = ModelStore(three.bucket, s3_client=Interleaving(s3, lambda: other.offer("a")))
    # racing's staging write comes first and meets a's offer; then production is a's.
    offer = racing.offer("b")
    assert not offer.promoted and offer.production is not None
    assert stages(three) == ("a", "b")


class LostAnswer:
    """S3 applies the first production-pointer PUT, but its answer is lost: the SDK sends
    the same request again, which meets the changed ETag and is refused (412)."""

    def __init__(self, s3: Any) -> None:
        self.s3 = s3
        self.lost = False

    def put_object(self, **kwargs: Any) -> Any:
        answer = self.s3.put_object(**kwargs)
        if not self.lost and kwargs["Key"] == POINTER_KEYS[PRODUCTION]:
            self.lost = True
            return self.s3.put_object(**kwargs)  # the retry: PreconditionFailed
        return answer

    def __getattr__(self, name: str) -> Any:
        return getattr(self.s3, name)


def test_a_promotion_whose_answer_was_lost_is_not_taken_for_a_race(
    three: ModelStore, s3: Any
) -> None:
    three.offer("a")
    flaky = LostAnswer(s3)
    with pytest.raises(ClientError, match="PreconditionFailed"):
        flaky.put_object(
            Bucket=three.bucket, Key=POINTER_KEYS[PRODUCTION], Body=b"{}", IfNoneMatch="*"
        )
    flaky.lost = False
    done = ModelStore(three.bucket, s3_client=flaky).promote("b")
    assert flaky.lost  # the answer was lost, and the store read its own write back
    assert (done.run_id, done.previous) == ("b", "a")
    pointer = three.pointer(PRODUCTION)
    assert pointer is not None and (pointer.run_id, pointer.previous) == ("b", ("a",))


def test_the_history_is_bounded(store: ModelStore, tiny_model: TinyModel) -> None:
    for i in range(HISTORY_LIMIT + 3):
        stored(store, tiny_model, f"r{i}", 0.5, f"2026-11-30T10:{i:02d}:00+00:00")
        store.promote(f"r{i}", force=True)
    pointer = store.pointer(PRODUCTION)
    assert pointer is not None and len(pointer.previous) == HISTORY_LIMIT
    assert pointer.previous[-1] == f"r{HISTORY_LIMIT + 1}"


def test_models_lists_every_model_with_its_stages(three: ModelStore) -> None:
    three.offer("a")
    three.offer("b")
    listing = three.models()
    assert [m["run_id"] for m in listing] == ["a", "b", "c"]
    assert [m["stages"] for m in listing] == [["production"], ["staging"], []]
    assert listing[1]["test_accuracy"] == 0.9
