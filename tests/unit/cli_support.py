"""What the CLI's unit tests share."""


def assert_fails_cleanly(cli, etcd_dump, argv, stdin=None, contains=None):
    """Exit 1, one line on stderr, no traceback, and not one etcd key changed."""
    before = etcd_dump()
    r = cli(*argv, stdin=stdin)
    assert r.code == 1, (argv, r)
    assert len(r.err.strip().splitlines()) == 1, (argv, r)
    assert "Traceback" not in r.err and r.out == "", (argv, r)
    if contains:
        assert contains in r.err, (argv, r)
    assert etcd_dump() == before, argv
    return r
