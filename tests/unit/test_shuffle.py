"""tests/shuffle.py, the order shuffler behind `make test-isolation`: a permutation that keeps
each module's tests together, the same for the same seed, and different for another."""

from tests.shuffle import shuffled


class Item:
    def __init__(self, nodeid):
        self.nodeid = nodeid

    def __repr__(self):
        return self.nodeid


ITEMS = [Item("tests/unit/test_%s.py::test_%d[%s]" % (m, i, p))
         for m in "abcdef" for i in range(6) for p in "xy"]


def test_a_permutation_with_modules_kept_together():
    out = shuffled(list(ITEMS), seed=1)
    assert sorted(map(repr, out)) == sorted(map(repr, ITEMS))
    modules = [item.nodeid.split("::")[0] for item in out]
    runs = [m for i, m in enumerate(modules) if i == 0 or modules[i - 1] != m]
    assert len(runs) == len(set(modules)) == 6          # each module's tests contiguous


def test_the_seed_decides_the_order():
    assert shuffled(list(ITEMS), seed=7) == shuffled(list(ITEMS), seed=7)
    assert shuffled(list(ITEMS), seed=7) != shuffled(list(ITEMS), seed=8)
    assert shuffled(list(ITEMS), seed=7) != ITEMS
