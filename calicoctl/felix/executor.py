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

from calicoctl.dataplane import nftlib, sysctl
from calicoctl.dataplane.commands import run_command
from calicoctl.dataplane.routing import RouteManager, best_effort
from calicoctl.errors import DataplaneError
from calicoctl.felix import ipsets as ipset_names
from calicoctl.felix import nft_policy
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


# --- the nft table (nftables dataplane) --------------------------------------------------------

NFT = "nft"


class NftTable:
    """Our nftables table (felix/nft_policy.py): one `nft -f` transaction per batch, so a change
    is atomic and costs a few element updates however many endpoints there are."""

    def __init__(self, runner=run_command, reader=None):
        self.run = runner
        # Reads are not retried: a missing table is an answer, not a transient failure.
        self.read = reader or runner
        self.chains = {}              # name -> rules we last wrote
        self.sets = {}                # name -> kind
        self.elements = {}            # set name -> set(element text) we last wrote

    def _load(self, script):
        if script:
            self.run([NFT, "-f", "-"], script)

    def apply(self, delta):
        script = nft_policy.delta_script(self.chains, self.sets, delta.nft_chains,
                                         delta.nft_sets, delta.nft_added, delta.nft_removed)
        self._load(script)
        for name, rules in delta.nft_chains.items():
            if rules is None:
                self.chains.pop(name, None)
            else:
                self.chains[name] = list(rules)
        for name, kind in delta.nft_sets.items():
            if kind is None:
                self.sets.pop(name, None)
                self.elements.pop(name, None)
            else:
                self.sets[name] = kind
                self.elements.setdefault(name, set())
        for name, items in delta.nft_removed.items():
            if name in self.elements:
                self.elements[name] -= items
        for name, items in delta.nft_added.items():
            if name in self.elements:
                self.elements[name] |= items

    def write_all(self, desired):
        self._load(nft_policy.full_script(desired.nft_chains, desired.nft_sets,
                                          desired.nft_elements))
        self.chains = {c: list(r) for c, r in desired.nft_chains.items()}
        self.sets = dict(desired.nft_sets)
        self.elements = {n: set(e) for n, e in desired.nft_elements.items()}

    def _listing(self, terse=False):
        """`nft -j list table` of ours, or None when there is no table."""
        try:
            return self.read([NFT, "-j"] + (["-t"] if terse else [])
                             + ["list", "table", nft_policy.FAMILY, nft_policy.TABLE])
        except DataplaneError as exc:
            # nft says "No such file or directory" (ENOENT) for a table that is not there.
            if "No such file" in (exc.stderr or ""):
                return None
            raise

    def _desired_listing(self, desired):
        """Our desired table as nft lists it: loaded into a scratch network namespace (where
        it touches no traffic) and listed there."""
        script = nft_policy.full_script(desired.nft_chains, desired.nft_sets,
                                        desired.nft_elements)
        return self.read(["unshare", "-n", "sh", "-c", "%s -f - && %s -j list table %s %s" % (
            NFT, NFT, nft_policy.FAMILY, nft_policy.TABLE)], script)

    def _differs(self, desired, deep):
        """Whether the kernel's table differs from the desired one.  deep: every rule and
        element, compared with the desired table as nft prints it; else (cheap whatever the
        number of endpoints) the chains' rule counts and which sets exist."""
        if not deep:
            text = self._listing(terse=True)
            wanted = nft_policy.expected_listing(desired.nft_chains, desired.nft_sets, None)
            return text is None or nft_policy.parse_listing(text, terse=True) != wanted
        text = self._listing()
        if text is None:
            return True
        try:
            wanted = self._desired_listing(desired)
        except DataplaneError as exc:
            # No scratch namespace (no unshare, or not allowed): counts still catch a lost
            # chain, rule, set or element.
            log.warning("Cannot load our nft table in a scratch namespace to compare it (%s); "
                        "comparing counts only", exc)
            return nft_policy.parse_listing(text) != nft_policy.expected_listing(
                desired.nft_chains, desired.nft_sets, desired.nft_elements)
        return nft_policy.table_content(text) != nft_policy.table_content(wanted)

    def sync(self, desired, full):
        """Full: replace the table in one transaction.  Otherwise compare every rule and
        element of the kernel's table with ours, and replace the table if they differ.
        Returns the number of chains written."""
        if full:
            self.write_all(desired)
            return len(desired.nft_chains)
        return self._repair(desired, deep=True)

    def quick_sync(self, desired):
        """The cheap check (chains, rule counts, sets), for refreshes between deep ones."""
        return self._repair(desired, deep=False)

    def _repair(self, desired, deep):
        if not self._differs(desired, deep):
            return 0
        log.warning("Repairing the nft table %s %s: changed behind our back",
                    nft_policy.FAMILY, nft_policy.TABLE)
        self.write_all(desired)
        return len(desired.nft_chains)

    def remove(self):
        """Delete our table if it is there (the iptables dataplane's start, after a switch);
        without nft there can be no table."""
        import shutil
        if shutil.which(NFT) is None:
            return
        self._load("add table %s %s\ndelete table %s %s\n" % ((nft_policy.FAMILY,
                                                               nft_policy.TABLE) * 2))


DATAPLANES = ("auto", "nftables", "iptables")


def nftables_usable(runner=run_command):
    """(True, what was tried) or (False, why not): a sample of our table (base chains, sets of
    concatenations, interface sets, marks) checked by the kernel with `nft -c`, which commits
    nothing."""
    import shutil
    if shutil.which(NFT) is None:
        return False, "nft is not installed (Debian: apt-get install nftables)"
    try:
        runner([NFT, "-c", "-f", "-"], nft_policy.probe_script())
    except DataplaneError as exc:
        lines = (exc.stderr or exc.stdout or "").strip().splitlines()
        return False, "the kernel refused our nft table (%s)" % (lines[0] if lines else
                                                                  "exit %d" % exc.returncode)
    return True, "nft and the kernel accept our table"


def choose_dataplane(requested, probe=nftables_usable):
    """(dataplane, why).  auto takes nftables where it works: an endpoint is then a few
    elements in one transaction, not chains iptables-nft rewrites (figures in bench/felix.py
    and docs/architecture.md, "The two policy dataplanes")."""
    if requested == "iptables":
        return "iptables", "asked for"
    ok, why = probe()
    if ok:
        return "nftables", why
    if requested == "nftables":
        raise DataplaneError([NFT], 1, "", "the nftables dataplane cannot run here: %s; use "
                             "--dataplane=iptables" % why)
    return "iptables", why


class AgentDataplane:
    """Every table, the ipsets and the routes, applied in a safe order: sets are created before
    the rules that match on them and destroyed only after those rules are gone.

    dataplane "iptables": policy in felix-* chains and tag ipsets (felix/policy.py).
    dataplane "nftables": policy in our nft table (felix/nft_policy.py); the iptables tables keep
    their fixed chains only.  The nft table changes before iptables, so the iptables accepts
    never stand without the policy in front of them."""

    def __init__(self, runner=None, backend="nft", versions=(4, 6), dataplane="iptables"):
        # The real runner loads nft scripts in this process (dataplane/nftlib.py).
        run = retrying(runner or nftlib.runner())
        self.tables = {(t, v): IptablesTable(t, v, run, backend)
                       for t in TOP_JUMPS for v in versions}
        self.ipsets = IpsetManager(run)
        self.routes = RouteManager()
        self.run = run
        self.kind = dataplane               # "nftables" or "iptables"
        self.nft = NftTable(run, reader=runner or run_command)
        self.nft_removed = False

    def desired_state(self):
        """An empty desired state of the kind this dataplane programs."""
        if self.kind == "nftables":
            from calicoctl.felix.nft_calc import NftDesiredState
            return NftDesiredState()
        from calicoctl.felix.calc import DesiredState
        return DesiredState()

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
        if self.kind == "nftables":
            self.nft.apply(delta)

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
        written = 0
        if self.kind == "nftables":
            written += self.nft.sync(desired, full)

        def work(key, table):
            if table is None:
                return True
            return table.sync(desired.chains.get(key, {}), full)
        written += sum(self._each_table(work))
        if self.kind != "nftables" and full and not self.nft_removed:
            # After a switch from the nftables dataplane its table would still drop what it
            # does not know: it goes once the iptables policy is in place (once a process).
            self.nft_removed = True
            try:
                self.nft.remove()
            except DataplaneError as exc:
                log.error("Cannot remove the nftables dataplane's table %s %s, which may still "
                          "drop traffic: %s", nft_policy.FAMILY, nft_policy.TABLE, exc)
        self.ipsets.apply_deletions(stale)
        return written

    def quick_sync(self, desired):
        written = self.nft.quick_sync(desired) if self.kind == "nftables" else 0

        def work(key, table):
            if table is None:
                return True
            return table.quick_sync(desired.chains.get(key, {}))
        return written + sum(self._each_table(work))
