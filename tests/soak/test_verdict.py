"""The soak's verdict can fail: a job run in-process through the real claim/write path judges clean, and each kind
of damage a fault could do (a result changed, an item left unfinished, a result counted twice, a job stuck, a job
that no accepted submission made) is found and counted."""

from __future__ import annotations

import uuid
from pathlib import Path

from sqlalchemy import update

from inferq.db import make_engine, make_sessionmaker
from inferq.schema import Item, Job
from inferq.settings import ModelSpec, Settings
from inferq.task_specs import TaskName, validate_params
from producer.client import store_job
from producer.inputs import InputRecord
from soak.verdict import SCORE_TOLERANCE, _difference, judge
from soak.workload import JobSpec
from tests.support.tiny_models import corpus
from worker.engines.base import Outcome
from worker.model_cache import ModelCache
from worker.runner import Runner


def test_the_verdict_finds_every_kind_of_damage(sqlite_settings: Settings, tiny_models: dict[str, Path]) -> None:
    settings = Settings(
        database_url=sqlite_settings.database_url,
        broker_url=sqlite_settings.broker_url,
        models={"m": ModelSpec(source=str(tiny_models["cls-distilbert"]), task=TaskName.CLASSIFICATION)},
    )
    engine = make_engine(settings)
    sessions = make_sessionmaker(engine)
    rows = [{"text": t} for t in corpus()[:12]]
    specs = {}
    runner = Runner(settings, sessions, ModelCache(settings), worker="test:1")
    for n in range(2):
        job_id = uuid.uuid4().hex
        records = [InputRecord(line=i + 1, client_id=None, data=r) for i, r in enumerate(rows)]
        with sessions.begin() as session:
            params = validate_params(TaskName.CLASSIFICATION, {})
            store_job(session, job_id, TaskName.CLASSIFICATION, "m", params, records, 4, settings.default_queue)
        for seq in range(3):
            runner.run_chunk(job_id, seq)
        specs[job_id] = JobSpec(n, "small", "m", TaskName.CLASSIFICATION, rows)
    first, second = specs

    # Given two jobs run through the real claim and write path: the verdict is clean
    clean = judge(settings, sessions, specs)
    assert clean.ok and clean.items == 24 and clean.by_state["succeeded"] == 24, clean.to_json()
    # (each of the 24 results compared; the reference ran the 12 distinct texts once)
    assert (clean.compared, clean.reference_runs) == (24, 12)

    # When one result is changed, one item is left queued (its job's counters agreeing), one job counts a result
    # twice, and a job nobody submitted appears
    with sessions.begin() as session:
        session.execute(update(Item).where(Item.job_id == first, Item.index == 3).values(score=Item.score + 1e-3))
        session.execute(update(Item).where(Item.job_id == first, Item.index == 5).values(state="queued", result=None))
        session.execute(update(Job).where(Job.id == first).values(succeeded=Job.succeeded - 1))
        session.execute(update(Job).where(Job.id == second).values(succeeded=Job.succeeded + 1))
    extra = dict(specs)
    stray = extra.pop(second)
    damaged = judge(settings, sessions, extra)

    # Then each is found
    assert not damaged.ok
    assert (damaged.changed, damaged.lost, damaged.leftovers, damaged.duplicated) == (1, 1, 1, 0), damaged.problems
    with_second = judge(settings, sessions, {**extra, second: stray})
    assert with_second.duplicated == 1 and with_second.counter_drift == 1 and with_second.leftovers == 0
    # And a job left unfinished is stuck
    with sessions.begin() as session:
        session.execute(update(Job).where(Job.id == second).values(state="running"))
    assert judge(settings, sessions, specs).stuck == 1
    engine.dispose()


def ner_outcome(label: str, score: float) -> Outcome:
    """An NER outcome of one token, as the token-classification engine writes it (aggregation ``none``)."""
    entity = {"entity": label, "score": score, "index": 1, "word": "paris", "start": 0, "end": 5}
    return Outcome(result=[entity], label=label, score=score, entity_count=1)


def stored(outcome: Outcome) -> Item:
    """The item row the worker writes for it (the columns `_difference` reads)."""
    return Item(result=outcome.result, label=outcome.label, score=outcome.score, entity_count=outcome.entity_count)


def test_a_label_flipped_by_a_near_tie_agrees() -> None:
    # Given the reference's I-PER at 0.125001 and a stored B-MISC at 0.125004 (a random-weight model's near tie)
    reference = ner_outcome("I-PER", 0.125001)
    got = stored(ner_outcome("B-MISC", 0.125004))
    # Then the verdict finds no difference, in the result nor in the label column
    assert _difference(got, reference) is None


def test_a_label_with_a_different_score_is_a_change() -> None:
    # Given the same label flip with scores 1e-3 apart (beyond SCORE_TOLERANCE): a real change
    reference = ner_outcome("I-PER", 0.125)
    got = stored(ner_outcome("B-MISC", 0.126))
    # Then it is reported, naming the label
    difference = _difference(got, reference)
    assert difference is not None and "B-MISC" in difference and "I-PER" in difference
    # And the label column alone (result equal) is judged the same way
    got = stored(ner_outcome("I-PER", 0.125))
    got.label, got.score = "B-MISC", 0.125 + 10 * SCORE_TOLERANCE
    assert _difference(got, reference) is not None
    got.score = 0.125 + SCORE_TOLERANCE / 10
    assert _difference(got, reference) is None


def test_a_near_tie_excuses_the_label_only() -> None:
    # Given a near tie whose entity also moved (another span): the label is excused, the span is not
    reference = ner_outcome("I-PER", 0.125)
    moved = ner_outcome("B-MISC", 0.125)
    moved.result[0]["end"] = 4
    assert _difference(stored(moved), reference) == "result[0].end: 4 != 5"
