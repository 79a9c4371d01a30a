"""The compare-and-swap retry policy (calicoctl/datastore/cas.py): pure logic, no etcd."""

import random
import time

import pytest

from calicoctl.datastore.cas import CONFLICT, retry_on_conflict
from calicoctl.errors import ConflictError


def bound(retry):
    """The longest pause before retry number `retry` (1, 2, ...)."""
    return 0.001 * 2 ** min(retry, 6)


@pytest.fixture
def sleeps(monkeypatch):
    """Pauses asked for, instead of taken."""
    asked = []
    monkeypatch.setattr(time, "sleep", asked.append)
    return asked


def losing_step(losses, result="won"):
    """A step that loses `losses` times, then returns result; .calls counts its runs."""
    def step():
        step.calls += 1
        return CONFLICT if step.calls <= losses else result
    step.calls = 0
    return step


def test_first_win_returns_at_once_without_a_pause(sleeps):
    step = losing_step(0)
    assert retry_on_conflict(5, "testing")(step)() == "won"
    assert step.calls == 1 and sleeps == []


@pytest.mark.parametrize("result", [None, [], 0, ([], {})])
def test_a_falsy_result_is_not_a_conflict(sleeps, result):
    step = losing_step(0, result)
    assert retry_on_conflict(5, "testing")(step)() == result
    assert step.calls == 1


def test_conflicts_are_retried_until_a_win(sleeps):
    step = losing_step(3)
    assert retry_on_conflict(5, "testing")(step)() == "won"
    assert step.calls == 4 and len(sleeps) == 3


def test_a_win_on_the_last_attempt_counts(sleeps):
    step = losing_step(4)
    assert retry_on_conflict(5, "testing")(step)() == "won"
    assert step.calls == 5


def test_gives_up_after_exactly_the_attempts_with_conflict_error(sleeps):
    step = losing_step(1000)
    with pytest.raises(ConflictError) as caught:
        retry_on_conflict(40, "updating handle h1")(step)()
    assert step.calls == 40
    assert str(caught.value) == ("Gave up updating handle h1 after 40 conflicting writes; "
                                 "try again.")


def test_backoff_grows_to_its_cap_and_never_precedes_the_first_attempt(sleeps, monkeypatch):
    monkeypatch.setattr(random, "uniform", lambda low, high: high)
    with pytest.raises(ConflictError):
        retry_on_conflict(10, "testing")(losing_step(1000))()
    expected = [bound(n) for n in range(1, 10)]    # one pause before each retry, none before 1st
    assert sleeps == expected
    assert expected[:7] == [0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.064]


def test_backoff_is_random_within_its_bounds(sleeps):
    with pytest.raises(ConflictError):
        retry_on_conflict(40, "testing")(losing_step(1000))()
    assert len(sleeps) == 39
    assert all(0 <= pause <= bound(n) for n, pause in enumerate(sleeps, 1))
    assert len(set(sleeps)) > 30          # jittered: writers that collided do not stay in step


def test_without_backoff_retries_at_once(sleeps):
    step = losing_step(1000)
    with pytest.raises(ConflictError, match="^Gave up updating /k after 20 conflicting writes"):
        retry_on_conflict(20, "updating /k", backoff=False)(step)()
    assert step.calls == 20
    assert all(pause == 0 for pause in sleeps)


def test_an_error_in_a_step_is_not_retried(sleeps):
    calls = []

    def step():
        calls.append(1)
        raise ConflictError("raised by the step itself")
    with pytest.raises(ConflictError, match="raised by the step itself"):
        retry_on_conflict(5, "testing")(step)()
    assert len(calls) == 1 and sleeps == []


def test_at_least_one_attempt():
    with pytest.raises(ValueError):
        retry_on_conflict(0, "testing")
