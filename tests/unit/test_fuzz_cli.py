"""Fuzz the CLI argument grammar (hypothesis) through `main()` against the real test etcd.

Every configuration command in calicoctl.cli.COMMANDS that exists when the test runs is fuzzed
(commands that serve, or touch Docker or the host, are left out).  argv lists are built from the
command's own usage words, placeholder values of the right and the wrong kind (CIDRs, addresses,
ports, AS numbers, positions, names) and random unicode.  For every case:
  - no traceback: the exit status is 0 or 1, and no traceback on stderr either way;
  - on 1, stderr is exactly one line (a grammar mismatch included);
  - on 1, nothing in etcd changed;
  - on 0 with etcd changed, the command's own show commands still read what was stored.
A fuzz run that only ever reached the refusals would check half of that, so each command's test
asserts floors on the cases that were accepted, refused and (for the commands that write)
accepted with a change to etcd.  The counts are printed (run with -s) and recorded as junit
properties.
"""

import collections
import importlib.util
import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from calicoctl import cli as calico_cli

# Commands that serve forever or need Docker / the host: fuzzed elsewhere or not at all.
NOT_FUZZED = {"plugin", "felix", "dns", "node", "container", "status", "diags", "checksystem"}
# Cases for the whole module, shared out between the commands found.  A case costs about 10 ms
# here (two etcd dumps and the command; profile cases more), so this keeps the module near 30 s.
# A fixed count, not a clock: a clock would make hypothesis's replay of a failure flaky.
TOTAL_CASES = 4800
# Least share of a command's cases that must be accepted and refused, and least number accepted
# with a change to etcd (for the commands that can write with nothing set up first), so each
# branch of the checks below ran.  Well under what runs give (printed with -s): accepted 12-57%,
# refused 43-88%; writes are rare (random values seldom make a new pool, peer or profile: 5-28
# a run), so each writer also runs two known writes first (hypothesis's explicit examples).
MIN_SHARE = {"accepted": 0.02, "refused": 0.1}
MIN_WRITES = 3
WRITE_EXAMPLES = {
    "pool": [["pool", "add", "10.10.0.0/16"], ["pool", "range", "add", "10.20.0.0", "10.20.0.255"]],
    "profile": [["profile", "add", "fuzzprof"],
                ["profile", "fuzzprof", "rule", "add", "inbound", "allow", "tcp", "to", "ports",
                 "80"]],
    "bgp": [["bgp", "peer", "add", "198.51.100.1", "as", "64512"],
            ["bgp", "default-node-as", "64513"]],
    "config": [["config", "felix", "loglevel", "debug"], ["config", "bgp", "loglevel", "info"]],
}
WRITERS = set(WRITE_EXAMPLES)
# What reads back each command's state: an accepted change must leave it readable.
READERS = {
    "pool": [("pool", "show")],
    "profile": [("profile", "show", "--detailed")],
    "bgp": [("bgp", "peer", "show"), ("bgp", "node-mesh"), ("bgp", "default-node-as")],
    "config": [("config", "felix", "loglevel"), ("config", "bgp", "loglevel"),
               ("config", "node", "bgp", "loglevel")],
    "endpoint": [("endpoint", "show", "--detailed")],
    "ipam": [("ipam", "show")],
}
PROFILE_KEY = re.compile(r"^/calico/v1/policy/profile/([^/]+)/")

CASES = {}


def fuzzed_commands():
    found = []
    for name, module in sorted(calico_cli.COMMANDS.items()):
        if name in NOT_FUZZED:
            continue
        if importlib.util.find_spec("calicoctl.commands." + module) is None:
            continue
        found.append(name)
    return found


COMMAND_NAMES = fuzzed_commands()


def _usage_lines(doc):
    """The lines after 'Usage:' up to the first blank line."""
    lines = doc.strip().splitlines()
    start = next(i for i, line in enumerate(lines) if line.lower().startswith("usage:"))
    out = []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        out.append(line)
    return out


def usage_patterns(name):
    """The command's usage patterns (one per 'calicoctl <name> ...' line, continuation lines
    joined), each as a parsed docopt pattern (see parse_pattern)."""
    module = importlib.import_module("calicoctl.commands." + calico_cli.COMMANDS[name])
    lines = _usage_lines(module.__doc__)
    patterns = []
    for line in lines:
        if line.strip().startswith("calicoctl "):
            patterns.append(line.strip().split(None, 2)[2] if len(line.split()) > 2 else "")
        elif patterns:
            patterns[-1] += " " + line.strip()
    return [parse_pattern(p) for p in patterns]


def parse_pattern(text):
    """A small docopt pattern parser: ("seq", [items]), ("alt", [seqs]), ("opt", alt),
    ("repeat", item), ("word", w).  Enough to *generate* argv that docopt mostly accepts."""
    tokens = re.findall(r"\.\.\.|[()\[\]|]|[^\s()\[\]|]+", text)
    pos = 0

    def alternatives(closer):
        nonlocal pos
        seqs = [[]]
        while pos < len(tokens) and tokens[pos] != closer:
            tok = tokens[pos]
            pos += 1
            if tok == "|":
                seqs.append([])
            elif tok in "([":
                inner = alternatives(")" if tok == "(" else "]")
                pos += 1  # the closer
                seqs[-1].append(("alt", inner) if tok == "(" else ("opt", ("alt", inner)))
            elif tok == "..." and seqs[-1]:
                seqs[-1][-1] = ("repeat", seqs[-1][-1])
            else:
                seqs[-1].append(("word", tok))
        return [("seq", s) for s in seqs]

    return ("alt", alternatives(None))


# -- values -----------------------------------------------------------------------------------

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
               max_size=12)
numbers = st.one_of(st.integers(-3, 70000), st.integers(-2 ** 40, 2 ** 40),
                    st.sampled_from([0, 1, 255, 256, 65535, 65536, 4294967295, 4294967296])
                    ).map(str)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
cidrs = st.one_of(
    st.tuples(ipv4, st.integers(-1, 34)).map(lambda t: "%s/%d" % t),
    st.tuples(ipv6, st.integers(-1, 130)).map(lambda t: "%s/%d" % t),
    st.sampled_from(["10.0.0.0/16", "10.0.0.0/26", "10.0.0.0/27", "fd80::/64", "fd80::/122",
                     "0.0.0.0/0", "::/0", "10.0.0.0/8", "1.2.3/24", "10.0.0.0/", "/24"]),
)
addresses = st.one_of(ipv4, ipv6, st.sampled_from(["1.2.3", "::g", "256.1.1.1", "10.0.0.1/32"]))
ports = st.one_of(numbers, st.tuples(st.integers(-2, 70000), st.integers(-2, 70000)).map(
    lambda t: "%d:%d" % t), st.sampled_from(["80,443", "1-2", "80:", ":80", "²", "0x50"]))
as_numbers = st.one_of(numbers, st.tuples(st.integers(0, 70000), st.integers(0, 70000)).map(
    lambda t: "%d.%d" % t), st.sampled_from(["0.0", "1.", ".1", "01.02"]))
names = st.one_of(st.from_regex(r"[a-zA-Z0-9_.-]{1,10}", fullmatch=True),
                  st.sampled_from(["web", "db", "web/x", "..", ".", "-", "a b", "web\n"]), text)
levels = st.sampled_from(["none", "debug", "info", "warning", "error", "critical", "loglevel",
                          "LOGLEVEL", "on", "off"])


def value_for(placeholder):
    """Values for a usage placeholder: mostly of the kind it names, sometimes anything."""
    p = placeholder.upper()
    if "CIDR" in p:
        kind = cidrs
    elif "IP" in p:
        kind = addresses
    elif "PORT" in p:
        kind = ports
    elif "AS" in p:
        kind = as_numbers
    elif "POSITION" in p or "TYPE" in p or "CODE" in p:
        kind = numbers
    elif "VALUE" in p or "NAME" in p:
        kind = st.one_of(levels, names)
    else:
        kind = names
    return st.one_of(kind, kind, kind, cidrs, numbers, text)


def all_words(node, found):
    kind, body = node
    if kind == "word":
        if not body.startswith("<"):
            found.add(body.split("=")[0])
    elif kind in ("seq", "alt"):
        for child in body:
            all_words(child, found)
    else:
        all_words(body, found)
    return found


def fill(token):
    if token.startswith("<"):
        return value_for(token)
    if "=<" in token:
        option, placeholder = token.split("=", 1)
        return value_for(placeholder).map(lambda v, o=option: "%s=%s" % (o, v))
    return st.just(token)


def generate(draw, node, out):
    """Append to out an argv fragment for node, following the pattern with small deviations."""
    kind, body = node
    if kind == "word":
        out.append(draw(fill(body)))
    elif kind == "seq":
        for child in body:
            if draw(st.integers(0, 19)) == 0:
                continue  # now and then leave a required part out
            generate(draw, child, out)
    elif kind == "alt":
        generate(draw, draw(st.sampled_from(body)), out)
    elif kind == "opt":
        if draw(st.booleans()):
            generate(draw, body, out)
    elif kind == "repeat":
        for _ in range(draw(st.integers(1, 3))):
            generate(draw, body, out)


@st.composite
def argv_for(draw, name):
    patterns = usage_patterns(name)
    words = sorted(set().union(*(all_words(p, set()) for p in patterns)) or {name})
    if draw(st.integers(0, 4)) == 0:
        # Unstructured: any mix of the command's words, values and noise.
        parts = st.one_of(st.sampled_from(words), cidrs, numbers, names, addresses, text)
        return [name] + draw(st.lists(parts, max_size=8))
    argv = [name]
    generate(draw, draw(st.sampled_from(patterns)), argv)
    if draw(st.integers(0, 9)) == 0:
        argv.insert(draw(st.integers(1, len(argv))),
                    draw(st.one_of(st.sampled_from(words), text, numbers)))
    return argv


stdin_docs = st.one_of(
    st.just(""), text,
    st.sampled_from(['{"id": "web", "inbound_rules": [], "outbound_rules": []}',
                     '{"inbound_rules": [{"action": "allow", "protocol": "tcp", '
                     '"dst_ports": [99999]}]}', "[]", "null", '{"id": 1}']),
    st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), text),
                 lambda inner: st.one_of(st.lists(inner, max_size=3),
                                         st.dictionaries(text, inner, max_size=3)),
                 max_leaves=8).map(__import__("json").dumps),
)


# -- the property -----------------------------------------------------------------------------

def check_result(name, argv, r, before, after):
    assert r.code in (0, 1), (argv, r)
    assert "Traceback" not in r.err, (argv, r)
    if r.code == 0:
        return
    lines = r.err.rstrip("\n").splitlines()
    assert lines, (argv, r)
    assert len(lines) == 1, (argv, r)
    assert before == after, ("rejected input changed etcd", argv, r)


def check_readable(cli, name, argv, before, after):
    """After an accepted change, the command's show commands read the stored state."""
    readers = list(READERS.get(name, []))
    if name == "profile":
        changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
        for profile in sorted({m.group(1) for k in changed if (m := PROFILE_KEY.match(k))}):
            if profile in {k.split("/")[5] for k in after if PROFILE_KEY.match(k)}:
                readers += [("profile", profile, "rule", "show"),
                            ("profile", profile, "tag", "show")]
    for reader in readers:
        r = cli(*reader)
        assert r.code == 0 and "Traceback" not in r.err, (
            "accepted input left state the CLI cannot show", argv, reader, r)


@pytest.fixture(scope="module", autouse=True)
def report_cases(request):
    yield
    total = sum(CASES.values())
    print("\nCLI fuzz cases run: %d (%s)" % (
        total, ", ".join("%s %d" % kv for kv in sorted(CASES.items()))))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", COMMAND_NAMES)
def test_fuzz_command(name, cli, etcd_dump, record_property):
    cli("pool", "show")  # first use writes the global defaults; later cases start from them
    seen = collections.Counter()

    @settings(max_examples=TOTAL_CASES // max(1, len(COMMAND_NAMES)), deadline=None,
              database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(argv=argv_for(name), stdin=stdin_docs)
    def case(argv, stdin):
        before = etcd_dump()
        r = cli(*argv, stdin=stdin)
        after = etcd_dump()
        check_result(name, argv, r, before, after)
        if r.code == 0 and after != before:
            check_readable(cli, name, argv, before, after)
            seen["wrote"] += 1
        seen["accepted" if r.code == 0 else "refused"] += 1

    for argv in reversed(WRITE_EXAMPLES.get(name, [])):   # example() runs bottom-up
        case = example(argv=argv, stdin="")(case)
    case()
    CASES[name] = sum(seen[k] for k in ("accepted", "refused"))
    for kind, count in sorted(seen.items()):
        record_property("fuzz_" + kind, count)
    floors = {k: int(share * CASES[name]) + 1 for k, share in MIN_SHARE.items()}
    if name in WRITERS:
        floors["wrote"] = MIN_WRITES
    short = {k: (seen[k], floor) for k, floor in floors.items() if seen[k] < floor}
    assert not short, "too few cases of a kind for %s ((got, floor)): %s; all: %s" % (
        name, short, dict(seen))


TOP_LEVEL_CASES = 200


def test_fuzz_top_level(cli, etcd_dump):
    """Unknown commands and stray top-level options: exit 0/1, one line, nothing written."""
    seen = collections.Counter()

    @settings(max_examples=TOP_LEVEL_CASES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(argv=st.lists(st.one_of(text, st.sampled_from(sorted(calico_cli.COMMANDS) +
                                                         ["--debug", "-h", "--version"])),
                         max_size=4))
    @example(argv=["version"])                # accepted cases are rare among random words
    @example(argv=["--version"])
    def case(argv):
        if argv and argv[0] in NOT_FUZZED | {"--debug"}:
            seen["skipped"] += 1   # --debug <command> runs the command: covered per command
            return
        if any(a in ("-h", "--help") for a in argv[1:]) or (
                argv and argv[0] in calico_cli.COMMANDS and argv[0] not in COMMAND_NAMES):
            seen["skipped"] += 1
            return
        before = etcd_dump()
        r = cli(*argv, stdin="")
        name = argv[0] if argv and argv[0] in calico_cli.COMMANDS else None
        if name:
            check_result(name, argv, r, before, etcd_dump())
        else:
            assert r.code in (0, 1), (argv, r)
            assert "Traceback" not in r.err, (argv, r)
            if r.code == 1 and argv:
                assert len(r.err.strip().splitlines()) == 1, (argv, r)
            assert before == etcd_dump()
        seen["accepted" if r.code == 0 else "refused"] += 1

    case()
    CASES["top-level"] = seen["accepted"] + seen["refused"]
    # Most cases get past the filters above (about 75%), and both outcomes occur.
    assert CASES["top-level"] >= TOP_LEVEL_CASES // 2, seen
    assert seen["accepted"] >= 2 and seen["refused"] >= TOP_LEVEL_CASES // 10, seen
