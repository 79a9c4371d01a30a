"""DNS messages, as far as the answerer needs them: pure functions over bytes.

Only one shape of message is ever answered here: a standard query (QR=0, opcode QUERY) with one
question, no answer or authority records, at most one additional record (EDNS's OPT), and every
byte accounted for.  Anything else -- malformed, hostile, another opcode, a name with a
compression pointer -- gets None from parse_query and goes to Docker's resolver byte for byte,
so it fails (or not) exactly as it did before.  That keeps this parser small enough to be sure
of; it is fuzzed against dnspython in tests/unit/test_dns_wire.py.

Answers copy what Docker's resolver (libnetwork resolver.go, createRespMsg) sets: the query's
id, opcode, RD and CD, plus QR and RA, not AA; the question echoed; records naming it by a
pointer to offset 12.  Only the TTL differs (see catalog.TTL).
"""

import struct
from dataclasses import dataclass

TYPE_A, TYPE_AAAA, TYPE_MX, TYPE_OPT = 1, 28, 15, 41
CLASS_IN = 1
HEADER = struct.Struct("!HHHHHH")
RCODE_NOERROR = 0
# RFC 1035 4.2.1: without EDNS, a UDP answer holds at most 512 bytes; a longer one is cut and
# says so with TC, and the client asks again over TCP.
UDP_LIMIT = 512
TCP_LIMIT = 65535
MAX_NAME = 255              # RFC 1035 3.1, wire length including the root label
_QR, _OPCODE, _TC, _RD, _RA, _CD = 0x8000, 0x7800, 0x0200, 0x0100, 0x0080, 0x0010
# Bytes a container name and a network name may hold in a label (Docker: [a-zA-Z0-9_.-], and a
# '.' inside a label cannot be part of either).  Other labels can never name a workload.
_NAME_BYTES = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


@dataclass(frozen=True)
class Query:
    id: int
    flags: int
    name: str              # lower case, dot-joined labels, no trailing dot
    qtype: int
    question: bytes        # the question section as sent, echoed in the answer


def parse_query(data):
    """The Query in `data`, or None when it is not a plain query for a name a workload could
    have (then it is forwarded unchanged)."""
    if len(data) < HEADER.size:
        return None
    qid, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(data)
    if flags & (_QR | _OPCODE) or qdcount != 1 or ancount or nscount or arcount > 1:
        return None
    labels, pos = _labels(data, HEADER.size)
    if labels is None or pos + 4 > len(data):
        return None
    qtype, qclass = struct.unpack_from("!HH", data, pos)
    end = pos + 4
    if arcount:
        end = _skip_record(data, end)
        if end is None:
            return None
    if end != len(data) or qclass != CLASS_IN or not labels:
        return None
    if not all(set(label) <= _NAME_BYTES for label in labels):
        return None
    name = b".".join(labels).decode("ascii").lower()
    return Query(qid, flags, name, qtype, data[HEADER.size:pos + 4])


def _labels(data, pos):
    """(labels, position after the name) of an uncompressed name, or (None, pos)."""
    labels = []
    length = 0
    while pos < len(data):
        size = data[pos]
        if size == 0:
            return labels, pos + 1
        if size & 0xC0:          # a pointer or an extended label type: not in a plain question
            return None, pos
        length += size + 1
        if length + 1 > MAX_NAME or pos + 1 + size > len(data):
            return None, pos
        labels.append(data[pos + 1:pos + 1 + size])
        pos += 1 + size
    return None, pos


def _skip_record(data, pos):
    """Position after one resource record (EDNS's OPT, in a query), or None if it overruns."""
    labels, pos = _labels(data, pos)
    if labels is None or pos + 10 > len(data):
        return None
    rdlength = struct.unpack_from("!H", data, pos + 8)[0]
    pos += 10 + rdlength
    return pos if pos <= len(data) else None


def build_answer(query, rtype, addresses, ttl, limit=UDP_LIMIT):
    """The answer to `query`: one `rtype` record per packed address (4 or 16 bytes), as many as
    fit in `limit` bytes (TC set when some did not).  No address: NOERROR with no records, what
    Docker says for a name it knows without an address of that family."""
    flags = _QR | (query.flags & (_RD | _CD)) | _RA
    records = []
    size = HEADER.size + len(query.question)
    for address in addresses:
        record = struct.pack("!HHHIH", 0xC00C, rtype, CLASS_IN, ttl, len(address)) + address
        if size + len(record) > limit:
            flags |= _TC
            break
        records.append(record)
        size += len(record)
    header = HEADER.pack(query.id, flags, 1, len(records), 0, 0)
    return header + query.question + b"".join(records)


def message_id(data):
    return struct.unpack_from("!H", data)[0]


def with_id(data, qid):
    """The same message under another id (a forwarded query, and its answer on the way back)."""
    return struct.pack("!H", qid) + data[2:]
