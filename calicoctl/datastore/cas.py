"""Compare-and-swap retries: the one retry policy of every read-modify-write loop in calicoctl.

A step reads what it needs, decides, and makes one conditional write.  It returns its result, or
CONFLICT when that write lost to another writer.  `retry_on_conflict` runs the step again while it
returns CONFLICT, up to a bound, then gives up with ConflictError.  An exception a step raises is
not a conflict: it reaches the caller at once.

    @retry_on_conflict(CAS_ATTEMPTS, "updating handle %s" % handle_id)
    def update_once():
        ...
        return CONFLICT if lost else result
    return update_once()
"""

import tenacity

from calicoctl.errors import ConflictError


class _Conflict:
    def __repr__(self):
        return "CONFLICT"


# What a step returns when its conditional write lost: read again and retry.
CONFLICT = _Conflict()

# The pause before retry n (n = 1, 2, ...): random in [0, 1 ms * 2**min(n, 6)].  Random, growing,
# capped: writers that collided do not collide again in lockstep, and the 40 attempts of an IPAM
# step (ipam/allocator.py) sleep about 1.1 s in all on average, 2.2 s at most.
BACKOFF = tenacity.wait_random_exponential(multiplier=0.002, max=0.064)


def _lost(result):
    return result is CONFLICT


def retry_on_conflict(attempts, what, backoff=True):
    """Decorate a step to be run up to `attempts` times in all while it returns CONFLICT.

    Calling the decorated step returns the first result that is not CONFLICT.  When every attempt
    returned CONFLICT it raises ConflictError("Gave up <what> after <attempts> conflicting
    writes; try again.").  backoff=False retries at once instead of after BACKOFF.
    """
    if attempts < 1:
        raise ValueError("retry_on_conflict needs at least one attempt, not %r" % (attempts,))

    def give_up(retry_state):
        raise ConflictError("Gave up %s after %d conflicting writes; try again." % (
            what, attempts))

    return tenacity.retry(retry=tenacity.retry_if_result(_lost),
                          stop=tenacity.stop_after_attempt(attempts),
                          wait=BACKOFF if backoff else tenacity.wait_none(),
                          retry_error_callback=give_up)
