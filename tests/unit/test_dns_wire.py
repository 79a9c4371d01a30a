"""calicoctl/dnsproxy/wire.py against dnspython: what it answers, what it leaves to Docker, and that
no byte string makes it raise (pure; no services)."""

import collections
import socket
import struct

import dns.flags
import dns.message
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from calicoctl.dnsproxy import wire

E4 = socket.inet_aton("192.168.0.5")
E6 = socket.inet_pton(socket.AF_INET6, "fd80::5")


def query(name, rdtype="A", **kw):
    q = dns.message.make_query(name, rdtype, **kw)
    return q, q.to_wire()


def test_a_plain_query_is_read_in_lower_case():
    q, data = query("Workload-E.NET1", id=0x1234)
    parsed = wire.parse_query(data)
    assert (parsed.id, parsed.name, parsed.qtype) == (0x1234, "workload-e.net1", 1)


def test_an_edns_query_is_read():
    q, data = query("workload-e.net1", "AAAA", use_edns=0, payload=1232)
    assert wire.parse_query(data).qtype == 28


@pytest.mark.parametrize("make", [
    lambda: b"",
    lambda: b"\x12\x34",
    lambda: query("a.net1")[1][:-1],                          # cut short
    lambda: query("a.net1")[1] + b"\x00",                     # a byte too many
    lambda: query("a.net1", "A", use_edns=0)[1][:-1],         # OPT cut short
    lambda: dns.message.make_response(dns.message.make_query("a", "A")).to_wire(),  # QR set
    lambda: _with_flags(query("a")[1], 0x2800),               # opcode UPDATE
    lambda: _with_counts(query("a")[1], 2, 0, 0, 0),          # two questions
    lambda: _with_counts(query("a")[1], 1, 1, 0, 0),          # an answer in a query
    lambda: query(".")[1],                                    # the root
    lambda: query("a.b", "A", rdclass="CH")[1],               # not IN
    lambda: query("we\\.ird.net1")[1],                        # a dot inside a label
    lambda: query("caf\\195\\169.net1")[1],                    # not a container's characters
    lambda: query("a")[1][:12] + b"\xc0\x0c\x00\x01\x00\x01",  # a compression pointer
])
def test_anything_else_is_left_to_docker(make):
    assert wire.parse_query(make()) is None


def _with_flags(data, flags):
    return data[:2] + struct.pack("!H", flags) + data[4:]


def _with_counts(data, qd, an, ns, ar):
    return data[:4] + struct.pack("!HHHH", qd, an, ns, ar) + data[12:]


def test_an_answer_reads_back_as_docker_would_write_it():
    q, data = query("Workload-E.net1", id=7)
    answer = dns.message.from_wire(wire.build_answer(wire.parse_query(data), 1, [E4], 5))
    assert answer.id == 7 and answer.question == q.question
    # Docker's createRespMsg: QR, RD copied, RA; not authoritative.
    assert answer.flags == dns.flags.QR | dns.flags.RD | dns.flags.RA
    assert answer.answer == [dns.rrset.from_text("Workload-E.net1.", 5, "IN", "A",
                                                 "192.168.0.5")]


def test_aaaa_and_nodata():
    _, data = query("e.net1", "AAAA")
    parsed = wire.parse_query(data)
    answer = dns.message.from_wire(wire.build_answer(parsed, 28, [E6], 5))
    assert answer.answer[0][0].address == "fd80::5"
    empty = dns.message.from_wire(wire.build_answer(parsed, 28, [], 5))
    assert empty.rcode() == 0 and empty.answer == []


def test_a_udp_answer_that_would_not_fit_is_cut_and_says_so():
    _, data = query("a" * 60 + "." + "b" * 60 + "." + "c" * 60 + ".net1")
    parsed = wire.parse_query(data)
    many = [struct.pack("!I", 0xC0A80000 + i) for i in range(40)]
    cut = wire.build_answer(parsed, 1, many, 5)
    assert len(cut) <= wire.UDP_LIMIT
    message = dns.message.from_wire(cut)
    assert message.flags & dns.flags.TC and 0 < len(message.answer[0]) < 40
    whole = dns.message.from_wire(wire.build_answer(parsed, 1, many, 5, wire.TCP_LIMIT))
    assert len(whole.answer[0]) == 40 and not whole.flags & dns.flags.TC


def test_ids_are_swapped_and_restored():
    _, data = query("x", id=1)
    assert wire.message_id(wire.with_id(data, 0xBEEF)) == 0xBEEF
    assert wire.with_id(wire.with_id(data, 0xBEEF), 1) == data


# --- fuzzing --------------------------------------------------------------------------------

labels = st.text(alphabet="abcXYZ019-_.\\é\x00", min_size=0, max_size=70)


@st.composite
def messages(draw):
    """Real queries (dnspython), then mangled: bytes flipped, cut, extended, or pure noise."""
    kind = draw(st.sampled_from(["query", "query", "mangled", "noise"]))
    if kind == "noise":
        return draw(st.binary(max_size=600))
    name = ".".join(draw(st.lists(labels.filter(lambda s: s and len(s) < 64), min_size=1,
                                  max_size=5)))
    try:
        q = dns.message.make_query(name, draw(st.sampled_from(["A", "AAAA", "MX", "TXT", "ANY"])),
                                   use_edns=draw(st.sampled_from([None, 0])))
        data = bytearray(q.to_wire())
    except Exception:  # noqa: BLE001 - a name dnspython itself refuses: use noise instead
        return draw(st.binary(max_size=600))
    if kind == "mangled":
        for _ in range(draw(st.integers(1, 4))):
            pos = draw(st.integers(0, len(data) - 1))
            data[pos] = draw(st.integers(0, 255))
        data = data[:draw(st.integers(0, len(data) + 4))] + draw(st.binary(max_size=4))
    return bytes(data)


def test_no_message_makes_the_parser_raise_and_every_answer_is_well_formed():
    seen = collections.Counter()

    @settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))
    @given(messages())
    def case(data):
        parsed = wire.parse_query(data)
        if parsed is None:
            seen["left to Docker"] += 1
            return
        seen["parsed"] += 1
        # Whatever we parse, dnspython parses to the same question.
        original = dns.message.from_wire(data)
        assert original.question[0].name.to_text(omit_final_dot=True).lower() == parsed.name
        assert original.question[0].rdtype == parsed.qtype
        for addresses in ([], [E4], [E4] * 50):
            built = dns.message.from_wire(wire.build_answer(parsed, 1, addresses, 5))
            assert built.id == original.id and built.question == original.question
            assert built.flags & dns.flags.QR
            seen["answers checked"] += 1

    case()
    assert seen["parsed"] >= 300 and seen["left to Docker"] >= 300, seen
    assert seen["answers checked"] == 3 * seen["parsed"], seen
