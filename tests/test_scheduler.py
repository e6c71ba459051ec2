"""Admission: the queue's order, bound, positions, withdrawals and Retry-After, without a model or a thread."""

import time

import pytest
from fakes import job

from model.job import StreamAborted
from model.scheduler import GenerationStopped, QueueFull, Scheduler


def test_jobs_leave_the_queue_first_come_first_served_and_know_their_position():
    s = Scheduler(capacity=2, max_waiting=4)
    jobs = [job() for _ in range(5)]
    for j in jobs:
        s.submit(j)
    assert [j.position for j in jobs] == [0, 0, 1, 2, 3]  # streams that must end first
    assert s.take(free=2, block=False) == (jobs[:2], None)
    assert s.take(free=0, block=False) == ([], None)
    s.finished([(jobs[1], None)])
    assert s.take(free=1, block=False) == ([jobs[2]], None)
    assert s.active == 2 and s.waiting == 2 and s.started == 3


def test_past_the_bound_a_request_is_refused_with_a_retry_time_and_nothing_queued():
    s = Scheduler(capacity=1, max_waiting=2)
    s.submit(job())
    s.take(free=1, block=False)
    s.submit(job())
    s.submit(job())
    with pytest.raises(QueueFull) as refused:
        s.submit(job())
    assert refused.value.status == 503 and refused.value.retry_after >= 1
    assert s.waiting == 2


def test_a_job_taken_counts_once_against_the_bound():
    """Taken from the queue and not yet ended (being prefilled, say): one place, not two."""
    s = Scheduler(capacity=1, max_waiting=1)
    s.submit(job())
    s.take(free=1, block=False)
    second = job()
    s.submit(second)  # one running, none waiting: room for one more
    assert second.position == 1
    with pytest.raises(QueueFull):
        s.submit(job())


def test_a_job_withdrawn_while_waiting_never_leaves_the_queue_for_the_model():
    s = Scheduler(capacity=1, max_waiting=4)
    running, leaving, after = job(), job(), job()
    for j in (running, leaving, after):
        s.submit(j)
    s.take(free=1, block=False)
    s.withdraw(leaving, "the client disconnected")
    assert leaving.ended == "stopped: the client disconnected while queued"
    with pytest.raises(StreamAborted):
        leaving.output.take()
    s.finished([(running, None)])
    assert s.take(free=1, block=False) == ([after], None)
    assert s.started == 2  # running and after, never leaving


def test_a_solo_job_starts_once_nothing_runs_and_holds_the_ones_behind_it():
    s = Scheduler(capacity=4, max_waiting=4)
    batched, solo, behind = job(), job(lambda: iter(())), job()
    for j in (batched, solo, behind):
        s.submit(j)
    assert s.take(free=4, block=False) == ([batched], None)
    assert s.take(free=3, block=False) == ([], None)  # the solo job waits for the batch to empty
    s.finished([(batched, None)])
    assert s.take(free=4, block=False) == ([], solo)
    assert s.take(free=4, block=False) == ([], None)  # and nothing starts beside it
    s.finished([(solo, None)])
    assert s.take(free=4, block=False) == ([behind], None)


def test_retry_after_learns_from_jobs_that_finish_well():
    s = Scheduler(capacity=1, max_waiting=0)
    s.submit(job())
    with pytest.raises(QueueFull) as before:
        s.submit(job())
    (finished,), _ = s.take(free=1, block=False)
    finished.arrived, finished.waited = time.perf_counter() - 41.5, 2.0  # a 39.5 s generation
    s.finished([(finished, None)])
    s.submit(job())
    with pytest.raises(QueueFull) as after:
        s.submit(job())
    assert before.value.retry_after == 5 and after.value.retry_after == 12  # 0.8 * 5 + 0.2 * 39.5, rounded up


def test_once_closed_nothing_is_taken_and_new_requests_get_a_503():
    s = Scheduler(capacity=1, max_waiting=4)
    waiting = [job(), job()]
    for j in waiting:
        s.submit(j)
    assert s.close("the generation loop failed") == waiting  # for the loop to end
    assert s.take(free=1, block=True) is None
    with pytest.raises(GenerationStopped) as refused:
        s.submit(job())
    assert refused.value.status == 503 and "the generation loop failed" in str(refused.value)
