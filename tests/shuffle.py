"""Run tests in a shuffled order, to show that no test depends on another having run first.

    python -m pytest tests/unit -p tests.shuffle [--shuffle-seed=N]

Modules run in a shuffled order and the tests inside each module (parametrized cases included)
in a shuffled order of their own; a module's tests stay together, so module-scoped fixtures are
set up once, as in a normal run.  The seed is printed in the report header and again in the
summary (which -q keeps); the same seed gives the same order, to replay a failure.

A plugin of our own rather than pytest-randomly: that one also reseeds `random` and hypothesis
before every test, which changes what the seeded tests (churn, fuzz) draw; here only the order
changes.
"""

import random

import pytest


def pytest_addoption(parser):
    parser.addoption("--shuffle-seed", type=int, default=None,
                     help="seed for the shuffled test order (default: a fresh random seed)")


def pytest_configure(config):
    seed = config.getoption("shuffle_seed")
    config._shuffle_seed = random.SystemRandom().randrange(2 ** 32) if seed is None else seed


def _seed_line(config):
    return "shuffled order: --shuffle-seed=%d" % config._shuffle_seed


def pytest_report_header(config):
    return _seed_line(config)


def pytest_terminal_summary(terminalreporter, config):
    # Again at the end, where -q (which hides the header) still shows it.
    terminalreporter.write_line(_seed_line(config))


def shuffled(items, seed):
    """items with the modules in a shuffled order and each module's items shuffled."""
    rng = random.Random(seed)
    modules = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::", 1)[0], []).append(item)
    names = sorted(modules)
    rng.shuffle(names)
    out = []
    for name in names:
        group = modules[name]
        rng.shuffle(group)
        out.extend(group)
    return out


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    items[:] = shuffled(items, config._shuffle_seed)
