"""A stateful fake of iptables-restore/-save and ipset, for testing the executor's batching and
the agent without root.  It enforces what the real tools enforce that matters here: rules may
only jump to chains that exist, -X needs an unreferenced chain, sets in use cannot be destroyed.
"""

import re
import threading

from calicoctl.errors import DataplaneError

BUILTIN = {"filter": ["INPUT", "FORWARD", "OUTPUT"], "nat": ["PREROUTING", "INPUT", "OUTPUT",
                                                            "POSTROUTING"],
           "raw": ["PREROUTING", "OUTPUT"]}


class FakeKernel:
    def __init__(self):
        self.tables = {}          # (version, table) -> {chain: [rules]}
        self.sets = {}            # name -> (type, set(members))
        self.calls = []           # (cmd, input)
        # The executor runs the IPv4 and IPv6 restores at once; the kernel serialises them.
        self.lock = threading.RLock()

    def table(self, version, name):
        return self.tables.setdefault((version, name), {c: [] for c in BUILTIN[name]})

    def __call__(self, cmd, input_text=None):
        with self.lock:
            return self._call(cmd, input_text)

    def _call(self, cmd, input_text):
        self.calls.append((list(cmd), input_text))
        prog = cmd[0]
        version = 6 if prog.startswith("ip6") else 4
        if prog.endswith("-restore") and "tables" in prog:
            return self._restore(version, cmd, input_text)
        if prog.endswith("-save"):
            return self._save(version, cmd[cmd.index("-t") + 1])
        if prog == "ipset":
            return self._ipset(cmd, input_text)
        if prog == "nft":
            # The iptables dataplane only removes a leftover nft table; nothing to model.
            self.nft_scripts = getattr(self, "nft_scripts", []) + [input_text]
            return ""
        raise DataplaneError(cmd, 127, "", "fake: unknown command")

    # -- iptables ------------------------------------------------------------------------------

    def _restore(self, version, cmd, text):
        assert "--noflush" in cmd, "we must never flush whole tables"
        tables = {k: {c: list(r) for c, r in v.items()} for k, v in self.tables.items()}
        current = None
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            if line.startswith("*"):
                current = self.table(version, line[1:])
                current = tables.setdefault((version, line[1:]), current)
            elif line == "COMMIT":
                self._check(current, cmd, text)
            elif line.startswith(":"):
                current[line[1:].split()[0]] = []
            elif line.startswith("-A "):
                _, chain, rule = line.split(" ", 2)
                self._need(current, chain, cmd, text)
                current[chain].append(rule)
            elif line.startswith("-I "):
                _, chain, pos, rule = line.split(" ", 3)
                self._need(current, chain, cmd, text)
                current[chain].insert(int(pos) - 1, rule)
            elif line.startswith("-D "):
                _, chain, rule = line.split(" ", 2)
                if rule not in current.get(chain, []):
                    raise DataplaneError(cmd, 1, "", "fake: no such rule", text)
                current[chain].remove(rule)
            elif line.startswith("-X "):
                chain = line.split()[1]
                if current.get(chain):
                    raise DataplaneError(cmd, 1, "", "fake: chain not empty", text)
                current.pop(chain, None)
            else:
                raise DataplaneError(cmd, 2, "", "fake: cannot parse %r" % line, text)
        self.tables = tables
        return ""

    @staticmethod
    def _need(table, chain, cmd, text):
        if chain not in table:
            raise DataplaneError(cmd, 1, "", "fake: chain %s does not exist" % chain, text)

    def _check(self, table, cmd, text):
        for chain, rules in table.items():
            for r in rules:
                m = re.search(r"-[jg] (\S+)", r)
                target = m.group(1) if m else None
                if target and target.startswith("felix-") and target not in table:
                    raise DataplaneError(cmd, 1, "", "fake: %s jumps to missing %s" % (
                        chain, target), text)
                for s in re.findall(r"--match-set (\S+)", r):
                    if s not in self.sets:
                        raise DataplaneError(cmd, 1, "", "fake: set %s missing" % s, text)

    def _save(self, version, name):
        out = ["*%s" % name]
        table = self.table(version, name)
        out += [":%s - [0:0]" % c for c in table]
        for c, rules in table.items():
            out += ["-A %s %s" % (c, r) for r in rules]
        out.append("COMMIT")
        return "\n".join(out) + "\n"

    # -- ipset ---------------------------------------------------------------------------------

    def _in_use(self, name):
        return any(("--match-set %s " % name) in r for t in self.tables.values()
                   for rules in t.values() for r in rules)

    def _ipset(self, cmd, text):
        if cmd[1:3] == ["list", "-t"]:
            return "".join("Name: %s\nType: %s\nNumber of entries: %d\n\n" % (
                n, t, len(m)) for n, (t, m) in self.sets.items())
        assert cmd[1] == "restore"
        for line in text.splitlines():
            words = line.split()
            op, name = words[0], words[1]
            if op == "create":
                if name in self.sets and "-exist" not in cmd:
                    raise DataplaneError(cmd, 1, "", "fake: set exists", text)
                self.sets.setdefault(name, (words[2], set()))
            elif op == "add":
                self.sets[name][1].add(words[2])
            elif op == "del":
                self.sets[name][1].discard(words[2])
            elif op == "swap":
                self.sets[name], self.sets[words[2]] = self.sets[words[2]], self.sets[name]
            elif op == "destroy":
                if self._in_use(name):
                    raise DataplaneError(cmd, 1, "", "fake: set %s in use" % name, text)
                self.sets.pop(name, None)
        return ""
