"""The tests' one polling helper (tests/st/harness/procs.py): what each of its options promises."""

import pytest

from tests.st.harness import HarnessError, wait_for


def answers_on(call, value):
    """A predicate that is falsy until its `call`th call, which answers `value`."""
    calls = []

    def predicate():
        calls.append(None)
        return value if len(calls) >= call else None
    return predicate


def test_returns_the_first_true_value():
    assert wait_for(answers_on(3, "ready"), timeout=5, interval=0.001) == "ready"


def test_a_timeout_names_what_was_awaited():
    with pytest.raises(HarnessError, match=r"timed out after 0.1s waiting for the moon"):
        wait_for(lambda: False, timeout=0.1, what="the moon")


def test_by_default_an_exception_means_not_yet_and_is_reported_at_the_timeout():
    calls = []

    def refused_then_ready():
        calls.append(None)
        if len(calls) < 3:
            raise ConnectionRefusedError("still starting")
        return True
    assert wait_for(refused_then_ready, timeout=5, interval=0.001)
    assert len(calls) == 3

    def never_up():
        raise ConnectionRefusedError("still starting")
    with pytest.raises(HarnessError, match="still starting"):
        wait_for(never_up, timeout=0.1)


def test_exceptions_outside_retry_on_propagate_at_once():
    def broken():
        raise KeyError("no such record")
    with pytest.raises(KeyError):
        wait_for(broken, timeout=30, retry_on=())
    with pytest.raises(KeyError):
        wait_for(broken, timeout=30, retry_on=(OSError,))


def test_without_raise_on_timeout_the_last_falsy_value_is_returned():
    assert wait_for(lambda: [], timeout=0.1, raise_on_timeout=False) == []
    assert wait_for(answers_on(2, "ready"), timeout=5, interval=0.001,
                    raise_on_timeout=False) == "ready"


def test_without_raise_on_timeout_a_last_call_that_failed_still_raises():
    def failing():
        raise OSError("unreadable")
    with pytest.raises(HarnessError, match="unreadable"):
        wait_for(failing, timeout=0.1, raise_on_timeout=False, what="the state")
