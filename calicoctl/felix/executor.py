"""Where the agent changes the host: iptables and ipsets here, routes and sysctls through the
host-networking package (`calicoctl/dataplane/`) that the plugin and `calicoctl container` use.

- iptables: one `iptables-restore --noflush` per table and family per batch, holding only the
  chains that changed (declaring a chain in --noflush mode flushes just that chain), so an
  incremental change never rewrites the table.
- ipsets: one `ipset restore` per batch: new sets created and filled, changed sets updated
  member by member, and on a full sync every set filled under a temporary name and swapped in.
- routes through `calicoctl/dataplane/routing.py`; sysctls through `calicoctl/dataplane/sysctl.py`.

A failing command raises DataplaneError (command, return code, stdout, stderr, input); commands
are retried a few times first (xtables takes a lock other tools may hold for a moment).
"""

import logging

import tenacity

from calicoctl.dataplane import sysctl
from calicoctl.dataplane.commands import run_command
from calicoctl.dataplane.routing import RouteManager, best_effort
from calicoctl.errors import DataplaneError
from calicoctl.felix import ipsets as ipset_names
from calicoctl.felix.nat import TOP_JUMPS as NAT_JUMPS
from calicoctl.felix.policy import (CHAIN_PREFIX, TOP_JUMPS as FILTER_JUMPS, canonical_protocol,
                                    chain_rank)
from calicoctl.felix.raw import TOP_JUMPS as RAW_JUMPS

log = logging.getLogger(__name__)

# Chains per iptables-restore when a change is large (see IptablesTable.apply); 100-300
# measured best at 10,000 endpoints, 200 keeps changes of up to 200 chains atomic.
BATCH_CHAINS = 200
TOP_JUMPS = {"filter": FILTER_JUMPS, "nat": NAT_JUMPS, "raw": RAW_JUMPS}
BACKENDS = {
    # backend -> (restore, save, list) for IPv4 and IPv6
    "nft": {4: ("iptables-restore", "iptables-save", "iptables"),
            6: ("ip6tables-restore", "ip6tables-save", "ip6tables")},
    "legacy": {4: ("iptables-legacy-restore", "iptables-legacy-save", "iptables-legacy"),
               6: ("ip6tables-legacy-restore", "ip6tables-legacy-save", "ip6tables-legacy")},
}
DOCKER_USER = "-j DOCKER-USER"
# Chains a quick refresh checks (see IptablesTable.quick_sync): the entry points, whose loss
# would open or cut every workload at once.
QUICK_CHAINS = ("felix-INPUT", "felix-FORWARD", "felix-ALLOW", "felix-FROM-ENDPOINT",
                "felix-TO-ENDPOINT", "felix-POSTROUTING", "felix-PREROUTING")


def retrying(runner, attempts=3):
    """Wrap a runner so transient failures (the xtables lock) are retried."""
    @tenacity.retry(retry=tenacity.retry_if_exception_type(DataplaneError),
                    stop=tenacity.stop_after_attempt(attempts),
                    wait=tenacity.wait_exponential(multiplier=0.05, max=1), reraise=True)
    def run(cmd, input_text=None):
        return runner(cmd, input_text)
    return run


# --- iptables ---------------------------------------------------------------------------------

def parse_save(text):
    """iptables-save output of one table -> {chain: [rule text after '-A chain ']}, with each
    rule's protocol in the form we write it (policy.canonical_protocol)."""
    chains = {}
    for line in text.splitlines():
        if line.startswith(":"):
            chains.setdefault(line[1:].split()[0], [])
        elif line.startswith("-A "):
            _, chain, rest = line.split(" ", 2) if line.count(" ") >= 2 else (line, "", "")
            chains.setdefault(chain, []).append(_canonical_rule(rest))
    return chains


def _canonical_rule(rule):
    if "-p " not in rule:
        return rule
    words = rule.split(" ")
    for i, word in enumerate(words[:-1]):
        if word == "-p":
            words[i + 1] = canonical_protocol(words[i + 1])
    return " ".join(words)


class IptablesTable:
    """Our chains in one table of one family."""

    def __init__(self, table, version, runner=run_command, backend="nft"):
        self.table = table
        self.version = version
        self.run = runner
        self.restore_cmd, self.save_cmd, self.list_cmd = BACKENDS[backend][version]
        self.programmed = {}          # chain -> rules we last wrote
        self.jumps = TOP_JUMPS[table]

    def restore_input(self, updates, extra_lines=()):
        """The iptables-restore text for {chain: rules or None}."""
        lines = ["*%s" % self.table]
        lines += [":%s - [0:0]" % chain for chain in sorted(updates)]
        for chain in sorted(updates):
            rules = updates[chain]
            if rules:
                lines += ["-A %s %s" % (chain, r) for r in rules]
        lines += list(extra_lines)
        lines += ["-X %s" % chain for chain in sorted(updates) if updates[chain] is None]
        lines.append("COMMIT")
        return "\n".join(lines) + "\n"

    def apply(self, updates, extra_lines=()):
        """Write only these chains (None = delete) with --noflush.

        Up to BATCH_CHAINS chains go in one restore (one atomic transaction).  Larger changes
        (start-up, resync) are split: iptables-nft's --noflush restore grows much faster than
        linearly with the size of one transaction (20,000 chains: 22 s in one, ~2.5 s in
        batches; bench/felix.py).  Chains are then written in policy.chain_rank order, callees
        before callers, so a chain exists and is complete before anything jumps to it."""
        if not updates and not extra_lines:
            return
        if len(updates) <= BATCH_CHAINS:
            self.run([self.restore_cmd, "--noflush"], self.restore_input(updates, extra_lines))
        else:
            writes = sorted((c for c, r in updates.items() if r is not None),
                            key=lambda c: (chain_rank(c), c))
            for i in range(0, len(writes), BATCH_CHAINS):
                self.run([self.restore_cmd, "--noflush"],
                         self.restore_input({c: updates[c] for c in writes[i:i + BATCH_CHAINS]}))
            deletes = {c: None for c, r in updates.items() if r is None}
            self.run([self.restore_cmd, "--noflush"], self.restore_input(deletes, extra_lines))
        for chain, rules in updates.items():
            if rules is None:
                self.programmed.pop(chain, None)
            else:
                self.programmed[chain] = list(rules)

    def read_kernel(self):
        return parse_save(self.run([self.save_cmd, "-t", self.table]))

    def _jump_lines(self, kernel):
        """Lines putting our one jump at the top of each built-in chain (moving it if needed)."""
        lines = []
        for builtin, ours in self.jumps.items():
            rules = kernel.get(builtin, [])
            jump = "-j %s" % ours
            # First, or right after Docker's DOCKER-USER jump (dockerd puts that first whenever
            # it starts; both insisting on the top would swap places at every refresh).
            if rules.count(jump) == 1 and (rules[:1] == [jump] or rules[:2] == [DOCKER_USER,
                                                                                  jump]):
                continue
            lines += ["-D %s %s" % (builtin, jump)] * rules.count(jump)
            lines.append("-I %s 1 %s" % (builtin, jump))
        return lines

    def sync(self, desired, full):
        """Make the kernel match desired, writing only chains whose rules differ from what
        iptables-save shows (our rule text is in iptables-save's canonical form, so after an
        agent restart nothing is rewritten), removing chains of ours nobody wants and putting
        our jumps at the top of the built-in chains.  full=False (a periodic refresh) logs what
        it had to repair.  Returns the number of chains written."""
        kernel = self.read_kernel()
        updates = {c: r for c, r in desired.items() if kernel.get(c) != r}
        for chain in kernel:
            if chain.startswith(CHAIN_PREFIX) and chain not in desired:
                updates[chain] = None
        jumps = self._jump_lines(kernel)
        if not full and (updates or jumps):
            log.warning("Repaired %d %s chain(s) (IPv%d) changed behind our back%s",
                        len(updates), self.table, self.version,
                        "; top-level jump restored" if jumps else "")
        # Jumps go in after our chains are complete: restore applies lines in order.
        self.apply(updates, jumps)
        self.programmed = {c: list(r) for c, r in desired.items()}
        return len(updates)

    def _list_chain(self, chain):
        try:
            out = self.run([self.list_cmd, "-t", self.table, "-S", chain])
        except DataplaneError:
            return None                       # no such chain
        prefix = "-A %s " % chain
        return [_canonical_rule(line[len(prefix):]) for line in out.splitlines()
                if line.startswith(prefix)]

    def quick_sync(self, desired):
        """A cheap refresh for big rule sets (iptables-save of 100,000 rules takes seconds):
        check only the built-in chains' jumps and our entry chains, one `-S` each."""
        kernel = {b: self._list_chain(b) or [] for b in self.jumps}
        updates = {}
        for chain in QUICK_CHAINS:
            if chain in desired and self._list_chain(chain) != desired[chain]:
                updates[chain] = desired[chain]
        jumps = self._jump_lines(kernel)
        if updates or jumps:
            log.warning("Repaired %d %s entry chain(s) (IPv%d)%s", len(updates), self.table,
                        self.version, "; top-level jump restored" if jumps else "")
            self.apply(updates, jumps)
        return len(updates)


# --- ipsets -----------------------------------------------------------------------------------

def _create_line(name, spec):
    kind, family, _ = spec
    # maxelem: the default 65536 would cap a tag at 64k addresses; a tag may hold every
    # workload of a large cluster.
    return "create %s %s family %s maxelem 1048576" % (name, kind, family)


class IpsetManager:
    def __init__(self, runner=run_command):
        self.run = runner
        self.programmed = {}       # name -> spec

    def read_kernel(self):
        """{name: number of entries} of our sets."""
        out = self.run(["ipset", "list", "-t"])
        sets, name = {}, None
        for line in out.splitlines():
            if line.startswith("Name: "):
                name = line[6:].strip()
            elif line.startswith("Number of entries:") and name:
                if name.startswith(ipset_names.SET_PREFIX):
                    sets[name] = int(line.split(":")[1])
                name = None
        return sets

    def _fill(self, name, spec, exists):
        """Lines that make set `name` hold exactly spec's members."""
        members = sorted(spec[2])
        if not exists:
            return [_create_line(name, spec)] + ["add %s %s" % (name, m) for m in members]
        tmp = ipset_names.temp_name(name)
        return ([_create_line(tmp, spec)] + ["add %s %s" % (tmp, m) for m in members]
                + ["swap %s %s" % (tmp, name), "destroy %s" % tmp])

    def apply_updates(self, updates):
        """Create and update sets (not deletions: those wait until no rule uses them)."""
        lines = []
        for name, spec in sorted(updates.items()):
            if spec is None:
                continue
            old = self.programmed.get(name)
            if old is None or old[:2] != spec[:2]:
                lines += self._fill(name, spec, exists=old is not None)
            else:
                lines += ["del %s %s" % (name, m) for m in sorted(old[2] - spec[2])]
                lines += ["add %s %s" % (name, m) for m in sorted(spec[2] - old[2])]
            self.programmed[name] = spec
        if lines:
            self.run(["ipset", "restore", "-exist"], "\n".join(lines) + "\n")

    def apply_deletions(self, names):
        names = [n for n in names if n in self.programmed or n.startswith(
            ipset_names.SET_PREFIX)]
        if not names:
            return
        self.run(["ipset", "restore", "-exist"],
                 "".join("destroy %s\n" % n for n in sorted(names)))
        for n in names:
            self.programmed.pop(n, None)

    def sync(self, desired, full):
        """Full: refill every set by swap; else repair sets missing or of the wrong size.
        Returns the names of our sets nobody wants (destroy them after the iptables sync)."""
        kernel = self.read_kernel()
        lines = []
        for name, spec in sorted(desired.items()):
            have = kernel.get(name)
            if full or have is None or have != len(spec[2]):
                lines += self._fill(name, spec, exists=have is not None)
        if lines:
            self.run(["ipset", "restore", "-exist"], "\n".join(lines) + "\n")
        self.programmed = dict(desired)
        return [n for n in kernel if n not in desired]


class AgentDataplane:
    """Every table, the ipsets and the routes, applied in a safe order: sets are created before
    the rules that match on them and destroyed only after those rules are gone."""

    def __init__(self, runner=None, backend="nft", versions=(4, 6)):
        run = retrying(runner or run_command)
        self.tables = {(t, v): IptablesTable(t, v, run, backend)
                       for t in TOP_JUMPS for v in versions}
        self.ipsets = IpsetManager(run)
        self.routes = RouteManager()
        self.run = run

    def prepare(self):
        best_effort(sysctl.enable_forwarding, True)

    def _each_table(self, work):
        """Run work(key, table) for every table at once: the IPv4 and IPv6 restores are
        separate processes on separate kernel tables, so a change to both costs one."""
        keys_ = [k for k in sorted(self.tables) if work(k, None) is not False]
        if len(keys_) <= 1:
            return [work(k, self.tables[k]) for k in keys_]
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(max_workers=len(keys_)) as pool:
            return list(pool.map(lambda k: work(k, self.tables[k]), keys_))

    def apply(self, delta):
        self.ipsets.apply_updates(delta.sets)

        def work(key, table):
            updates = delta.chains.get(key)
            if table is None:
                return bool(updates)
            table.apply(updates)
        self._each_table(work)
        self.ipsets.apply_deletions([n for n, spec in delta.sets.items() if spec is None])

    def sync(self, desired, full):
        """Make the kernel match the whole desired state (see IptablesTable.sync)."""
        stale = self.ipsets.sync(desired.sets, full)

        def work(key, table):
            if table is None:
                return True
            return table.sync(desired.chains.get(key, {}), full)
        written = sum(self._each_table(work))
        self.ipsets.apply_deletions(stale)
        return written

    def quick_sync(self, desired):
        def work(key, table):
            if table is None:
                return True
            return table.quick_sync(desired.chains.get(key, {}))
        return sum(self._each_table(work))
