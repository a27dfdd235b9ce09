"""The verdict, from SQL: every submitted item accounted for once, with the fault-free result.

The reference is the same stored inputs run in this process through the engines the workers use
(`worker.model_cache.ModelCache`), with no broker, no fault and no batching with other jobs: fp32 results must
agree to `SCORE_TOLERANCE` (the parity tests' tolerance), strings and integers exactly, except a label picked by
its score, which may differ where the two labels' scores are within that tolerance (a near tie, `LABEL_KEYS`), and an
item fails in the reference exactly when it fails in the soak (the poison items, and only they).

The soak's jobs draw their texts from one corpus, so the same input meets the same model and parameters many times
over a long run: the reference runs each distinct (model, parameters, input) once (`References`) and every item
with it is compared with that one outcome. An item's result does not depend on which items share its batch (the
parity tests' guarantee, within the same tolerance), so this changes what is computed, not what is checked.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from inferq.constants import MAX_CHUNK_ATTEMPTS
from inferq.schema import Chunk, Item, Job
from inferq.states import FINISHED_JOB_STATES, ItemState, JobState
from inferq.store.results import StoredItem, items_with_results
from inferq.task_specs import TaskName, read_params
from worker.model_cache import ModelCache

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from inferq.settings import Settings
    from soak.workload import JobSpec

#: Largest accepted difference between a stored float and the reference's. Looser than `tests.reference`'s 1e-5:
#: the soak's reference runs each input in other batches than the worker's (coalesced jobs, other padded lengths),
#: and a token classification score once drifted by 1.02e-5 that way; a result that is not its input's own differs
#: by orders of magnitude more.
SCORE_TOLERANCE = 5e-5

#: Keys of a result's dict that name a label chosen by its ``score`` (an argmax). Two labels whose scores are within
#: `SCORE_TOLERANCE` are a near tie: on a random-weight model the winner flips with the batch's composition (a
#: token's B-MISC at 0.1251 against I-PER at 0.1251), so a different label with the same score agrees; a different
#: label with a different score is a changed result.
LABEL_KEYS = frozenset({"label", "entity", "entity_group"})

#: Examples of each problem kept in the summary.
EXAMPLES = 5


@dataclass
class Verdict:
    items: int = 0
    jobs: int = 0
    by_state: Counter[str] = field(default_factory=Counter)
    jobs_by_state: Counter[str] = field(default_factory=Counter)
    #: Items of submitted jobs with no row, or not ended in a finished job.
    lost: int = 0
    #: Results counted twice (a job's counters above what its items say).
    duplicated: int = 0
    #: Succeeded items whose result differs from the reference, or whose stored input differs from the submitted one.
    changed: int = 0
    #: Jobs not finished after the quiet period.
    stuck: int = 0
    #: Items that failed but should not have, or succeeded but should have failed.
    wrong_failures: int = 0
    #: Items given up after `MAX_CHUNK_ATTEMPTS` claims (a chunk killed that often): explained, counted apart.
    given_up: int = 0
    #: Jobs whose counters disagree with their items.
    counter_drift: int = 0
    #: Jobs in SQL that no accepted submission made (a refused file must leave nothing behind).
    leftovers: int = 0
    #: Items of cancelled jobs that kept a result (and were checked against the reference).
    cancelled_kept: int = 0
    #: Items whose ``attempts`` do not explain their run: ended with a result but never claimed, or claimed
    #: more often than their chunk.
    unexplained_attempts: int = 0
    #: Chunk re-runs (claims past the first), and items run more than once.
    chunk_reruns: int = 0
    item_reruns: int = 0
    poison_failed: int = 0
    #: Succeeded items compared with the reference, and the distinct inputs the reference ran to do it.
    compared: int = 0
    reference_runs: int = 0
    problems: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    @property
    def ok(self) -> bool:
        bad = (self.lost, self.duplicated, self.changed, self.stuck, self.wrong_failures, self.counter_drift)
        return not any(bad) and not self.leftovers and not self.unexplained_attempts

    def problem(self, kind: str, text: str) -> None:
        if len(self.problems[kind]) < EXAMPLES:
            self.problems[kind].append(text)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "items": self.items,
            "jobs": self.jobs,
            "items_by_state": dict(self.by_state),
            "jobs_by_state": dict(self.jobs_by_state),
            "lost": self.lost,
            "duplicated": self.duplicated,
            "changed": self.changed,
            "stuck": self.stuck,
            "wrong_failures": self.wrong_failures,
            "given_up": self.given_up,
            "counter_drift": self.counter_drift,
            "leftovers": self.leftovers,
            "cancelled_kept_results": self.cancelled_kept,
            "poison_failed": self.poison_failed,
            "unexplained_attempts": self.unexplained_attempts,
            "chunk_reruns": self.chunk_reruns,
            "item_reruns": self.item_reruns,
            "compared_with_reference": self.compared,
            "reference_distinct_inputs_run": self.reference_runs,
            "problems": dict(self.problems),
        }


def judge(settings: Settings, sessions: sessionmaker[Session], submitted: dict[str, JobSpec]) -> Verdict:
    """Read every job, chunk and item of the soak's database back and judge them (see this module)."""
    v = Verdict(jobs=len(submitted))
    references = References(ModelCache(settings))
    with sessions() as session:
        all_ids = set(session.scalars(select(Job.id)))
        v.leftovers = len(all_ids - set(submitted))
        for job_id in sorted(all_ids - set(submitted))[:EXAMPLES]:
            v.problem("leftovers", job_id)
        for job_id, spec in submitted.items():
            _judge_job(session, v, references, job_id, spec)
            session.expunge_all()  # a long run's items are read job by job, never held all at once
    v.reference_runs = references.runs
    return v


class References:
    """The fault-free outcome of each distinct (model, task, parameters, input), run once through the engines."""

    def __init__(self, cache: Any) -> None:
        self.cache = cache
        self.known: dict[tuple[str, str, str, str], Any] = {}
        self.runs = 0

    def of(self, job: Job, items: Sequence[StoredItem]) -> dict[int, Any]:
        """The reference outcome of every item that ended with a result or an error, by index."""
        todo = [i for i in items if i.state in (ItemState.SUCCEEDED, ItemState.FAILED)]
        if not todo:
            return {}
        params = json.dumps(job.params, sort_keys=True)
        keys = [(job.model, job.task, params, json.dumps(i.input, sort_keys=True)) for i in todo]
        missing: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        for key, item in zip(keys, todo, strict=True):
            if key not in self.known:
                missing.setdefault(key, item.input)
        if missing:
            task = TaskName(job.task)
            engine = self.cache.engine(job.model, task)
            outcomes = engine.run(list(missing.values()), read_params(task, job.params))
            self.known.update(zip(missing, outcomes, strict=True))
            self.runs += len(missing)
        return {i.index: self.known[k] for i, k in zip(todo, keys, strict=True)}


def _judge_job(session: Session, v: Verdict, references: References, job_id: str, spec: JobSpec) -> None:
    job = session.get(Job, job_id)
    if job is None:
        v.lost += len(spec.rows)
        v.problem("lost", f"job {job_id} ({spec.kind}) has no row")
        return
    v.jobs_by_state[job.state.value] += 1
    if job.state not in FINISHED_JOB_STATES:
        v.stuck += 1
        v.problem("stuck", f"job {job_id} ({spec.kind}) is {job.state.value}")
    items = items_with_results(session, job_id)
    chunks = list(session.scalars(select(Chunk).where(Chunk.job_id == job_id).order_by(Chunk.seq)))
    v.items += len(spec.rows)
    if [i.index for i in items] != list(range(len(spec.rows))) or job.total != len(spec.rows):
        missing = len(spec.rows) - len(items)
        v.lost += max(0, missing)
        v.problem("lost", f"job {job_id}: {len(items)} item rows for {len(spec.rows)} inputs (total {job.total})")
    reference = references.of(job, items)
    succeeded = failed = 0
    for item in items:
        v.by_state[item.state.value] += 1
        row = spec.rows[item.index] if item.index < len(spec.rows) else None
        if row is None or item.input.get("text") != row.get("text"):
            v.changed += 1
            v.problem("changed", f"{job_id}/{item.index}: stored input differs from the submitted one")
        chunk = next((c for c in chunks if c.start <= item.index < c.stop), None)
        if chunk is not None:
            v.item_reruns += item.attempts > 1
            if item.attempts > chunk.attempts:
                v.unexplained_attempts += 1
                v.problem("attempts", f"{job_id}/{item.index}: {item.attempts} attempts, chunk {chunk.attempts}")
        if item.state == ItemState.QUEUED:
            v.lost += 1
            v.problem("lost", f"{job_id}/{item.index} still queued (job {job.state.value})")
            continue
        if item.state == ItemState.CANCELLED:
            if job.state != JobState.CANCELLED:
                v.lost += 1
                v.problem("lost", f"{job_id}/{item.index} cancelled in a {job.state.value} job")
            continue
        if item.attempts < 1:
            v.unexplained_attempts += 1
            v.problem("attempts", f"{job_id}/{item.index} ended {item.state.value} without a claim")
        want = reference.get(item.index)
        if item.state == ItemState.FAILED:
            failed += 1
            if item.error_code == "attempts_exhausted" and chunk is not None and chunk.attempts > MAX_CHUNK_ATTEMPTS:
                v.given_up += 1
            elif item.index in spec.poison and want is not None and not want.ok:
                v.poison_failed += 1
            else:
                v.wrong_failures += 1
                v.problem("wrong_failures", f"{job_id}/{item.index} failed: {item.error_code}: {item.error_message}")
            continue
        succeeded += 1
        if job.state == JobState.CANCELLED:
            v.cancelled_kept += 1
        if item.index in spec.poison or want is None or not want.ok:
            v.wrong_failures += 1
            v.problem("wrong_failures", f"{job_id}/{item.index} succeeded; the reference failed it")
            continue
        v.compared += 1
        difference = _difference(item, want)
        if difference:
            v.changed += 1
            v.problem("changed", f"{job_id}/{item.index}: {difference}")
    if (job.succeeded, job.failed) != (succeeded, failed):
        v.counter_drift += 1
        v.duplicated += max(0, job.succeeded + job.failed - succeeded - failed)
        v.problem("counters", f"job {job_id}: counters {job.succeeded}/{job.failed}, items {succeeded}/{failed}")
    v.chunk_reruns += sum(max(0, c.attempts - 1) for c in chunks)


def _difference(item: StoredItem, want: Any) -> str | None:
    """How the stored result differs from the reference outcome; ``None`` when they agree."""
    where = _first_difference(item.result, want.result, "result")
    if where:
        return where
    if item.label != want.label and not _near_tie(item.score, want.score):
        return f"label: {item.label!r} != {want.label!r} (scores {item.score} and {want.score})"
    for name in ("answer", "start_char", "end_char", "entity_count"):
        if getattr(item, name) != getattr(want, name):
            return f"{name}: {getattr(item, name)!r} != {getattr(want, name)!r}"
    if (item.score is None) != (want.score is None) or (
        item.score is not None and not math.isclose(item.score, want.score, abs_tol=SCORE_TOLERANCE)
    ):
        return f"score: {item.score} != {want.score}"
    if (item.vector is None) != (want.vector is None):
        return "vector present in one only"
    if item.vector is not None:
        import numpy as np

        dtype = (want.result or {}).get("dtype", "float32")
        got, ref = np.frombuffer(item.vector, dtype=dtype), np.frombuffer(want.vector, dtype=dtype)
        if got.shape != ref.shape or not np.allclose(got, ref, atol=SCORE_TOLERANCE, rtol=0):
            return f"vector differs (max {float(np.max(np.abs(got - ref))) if got.shape == ref.shape else 'shape'})"
    return None


def _first_difference(got: Any, want: Any, path: str) -> str | None:
    if isinstance(want, float) or isinstance(got, float):
        if not isinstance(got, int | float) or not isinstance(want, int | float):
            return f"{path}: {got!r} != {want!r}"
        return None if math.isclose(got, want, abs_tol=SCORE_TOLERANCE) else f"{path}: {got} != {want}"
    if isinstance(want, dict):
        if not isinstance(got, dict) or set(got) != set(want):
            return f"{path}: keys {sorted(got) if isinstance(got, dict) else got!r} != {sorted(want)}"
        tied = _near_tie(got.get("score"), want.get("score"))
        for key in want:
            if key in LABEL_KEYS and tied and got[key] != want[key]:
                continue  # a near tie: either label is the model's answer (see LABEL_KEYS)
            if d := _first_difference(got[key], want[key], f"{path}.{key}"):
                return d
        return None
    if isinstance(want, list | tuple):
        if not isinstance(got, list | tuple) or len(got) != len(want):
            return f"{path}: {got!r} != {want!r}"
        for n, (g, w) in enumerate(zip(got, want, strict=True)):
            if d := _first_difference(g, w, f"{path}[{n}]"):
                return d
        return None
    return None if got == want else f"{path}: {got!r} != {want!r}"


def _near_tie(got: Any, want: Any) -> bool:
    """Whether two winning labels' scores are within `SCORE_TOLERANCE`: the two labels were a tie, not a change."""
    numbers = (int, float)
    return isinstance(got, numbers) and isinstance(want, numbers) and math.isclose(got, want, abs_tol=SCORE_TOLERANCE)


def count_rows(sessions: sessionmaker[Session]) -> dict[str, int]:
    with sessions() as session:
        return {
            "jobs": session.scalar(select(func.count()).select_from(Job)) or 0,
            "items": session.scalar(select(func.count()).select_from(Item)) or 0,
        }
