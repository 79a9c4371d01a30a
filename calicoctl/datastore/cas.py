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

import functools
import random
import time

from calicoctl.errors import ConflictError


class _Conflict:
    def __repr__(self):
        return "CONFLICT"


# What a step returns when its conditional write lost: read again and retry.
CONFLICT = _Conflict()

# The pause before retry n (n = 1, 2, ...): random in [0, BACKOFF_UNIT * 2**min(n, 6)].  Random,
# growing, capped: writers that collided do not collide again in lockstep, and the 40 attempts
# of an IPAM step (ipam/allocator.py) sleep about 1.1 s in all on average, 2.2 s at most.
BACKOFF_UNIT = 0.001
BACKOFF_DOUBLINGS = 6


def pause_before(retry):
    """A random pause before retry number `retry` (1, 2, ...), within its growing bound."""
    return random.uniform(0, BACKOFF_UNIT * 2 ** min(retry, BACKOFF_DOUBLINGS))


def retry_on_conflict(attempts, what, backoff=True):
    """Decorate a step to be run up to `attempts` times in all while it returns CONFLICT.

    Calling the decorated step returns the first result that is not CONFLICT.  When every attempt
    returned CONFLICT it raises ConflictError("Gave up <what> after <attempts> conflicting
    writes; try again.").  backoff=False retries at once instead of after pause_before().

    A loop of our own rather than tenacity (which the agent's executor uses): this runs in every
    CLI command that writes, and importing tenacity (it pulls in asyncio) costs more than 30 ms
    of a command's start, for a dozen lines.
    """
    if attempts < 1:
        raise ValueError("retry_on_conflict needs at least one attempt, not %r" % (attempts,))

    def decorate(step):
        @functools.wraps(step)
        def run(*args, **kwargs):
            for attempt in range(attempts):
                if attempt and backoff:
                    time.sleep(pause_before(attempt))
                result = step(*args, **kwargs)
                if result is not CONFLICT:
                    return result
            raise ConflictError("Gave up %s after %d conflicting writes; try again." % (
                what, attempts))
        return run
    return decorate
