"""`calicoctl dns serve`: the composition root.

Loop, like the agent's (felix/agent.py): read all of /calico once, then watch from that index,
applying events in batches; after each batch the catalog's new View goes to the answerer, and
the namespaces of this host's workloads are adopted or released to match:

  adopt   once the namespace is bound at its sandbox path and Docker's resolver rules in it are
          complete (rules.docker_ready): our sockets first, registered with the answerer, then
          our two rules at the top of nat OUTPUT.  Until then it is tried again, backing off.
  release when its endpoints are gone: our rules out first (Docker answers alone again), then
          our sockets closed -- a socket keeps its namespace alive, so none may outlive the
          workload.
  refresh every REFRESH seconds: a namespace that vanished is released; rules someone moved
          or removed are put back; a new port of Docker's resolver (dockerd live-restored)
          gets a new forward socket.

A clean stop releases every namespace, so Docker answers alone while we are away; a new start
adopts them again.  While etcd cannot be reached the answerer keeps answering from what it
last knew.
"""

import logging
import os
import time
from dataclasses import dataclass

from calicoctl.datastore import keys
from calicoctl.datastore.result import HistoryLost
from calicoctl.dnsproxy import rules, sandboxes
from calicoctl.dnsproxy.catalog import Records
from calicoctl.dnsproxy.server import Answerer
from calicoctl.errors import CalicoError, DataplaneError, DatastoreError

log = logging.getLogger(__name__)

WATCH_TIMEOUT = 1.0      # seconds a quiet watch waits; also how often refresh gets a chance
MAX_BATCH = 2000         # events applied at once at most
RETRY_DELAY = 1.0        # seconds between attempts while etcd is down
REFRESH = 10.0
# A namespace is tried again this soon after Join (on Docker 20.10 and 26 the namespace is bound
# a little after Join), backing off to ADOPT_MAX_DELAY for one that stays unready (e.g. Docker
# 28's opt-in nftables firewall backend keeps its resolver rules out of iptables).
ADOPT_FIRST_DELAY = 0.01
ADOPT_MAX_DELAY = 5.0


def _later(delay):
    """The next wait: half as long again.  A workload's first lookups go to Docker alone until
    its namespace is taken over, so the first tries come close together."""
    return min(delay * 1.5, ADOPT_MAX_DELAY)


@dataclass
class Adopted:
    path: str
    flavour: str             # the iptables flavour holding Docker's rules (rules.FLAVOURS)
    ports: tuple             # our (udp, tcp) ports
    identity: tuple          # the namespace's (dev, inode)
    docker_ports: dict       # Docker's resolver ports when last seen


class DnsService:
    def __init__(self, store, host, docker_socket, answerer=None, clock=time.monotonic,
                 refresh=REFRESH, ready_file=None, root=None):
        self.store = store
        self.host = host
        self.docker_socket = docker_socket
        self.answerer = answerer or Answerer(clock=clock)
        self.clock = clock
        self.refresh_interval = refresh
        self.ready_file = ready_file
        self.root = root              # dockerd's root as we see it (sandboxes.dockerd_root)
        self.records = Records(host)
        self.index = None
        self.adopted = {}             # sandbox key -> Adopted
        self.waiting = {}             # sandbox key -> (when to try next, delay after that)
        self.warned = set()           # sandbox keys said to be without Docker's rules
        self.next_refresh = 0.0
        self.stopping = False
        self.ready = False

    # -- outer loop ----------------------------------------------------------------------------

    def run(self):
        self.answerer.start()
        try:
            while not self.stopping:
                try:
                    if self.index is None:
                        self.resync()
                    self.poll_once()
                except HistoryLost:
                    log.info("The watch fell behind etcd's history; reading everything again")
                    self.index = None
                except DatastoreError as exc:
                    log.warning("etcd: %s; answering from what was known, retrying", exc)
                    self._wait(RETRY_DELAY)
                    self.tick()
        finally:
            self.shutdown()

    def stop(self):
        self.stopping = True

    def _wait(self, seconds):
        deadline = self.clock() + seconds
        while not self.stopping and self.clock() < deadline:
            time.sleep(0.05)

    def resync(self):
        items, index = self.store.snapshot(keys.ROOT)
        self.records.load(items)
        self.index = index + 1
        self.publish()
        self.tick()
        if not self.ready:
            self.ready = True
            self._write_ready()
            log.warning("Answering names across hosts for %d local sandbox(es)",
                        len(self.adopted))

    def poll_once(self):
        changed = False
        for _ in range(MAX_BATCH):
            node = self.store.watch(keys.ROOT, self.index, self._watch_timeout())
            if node is None:
                break
            self.index = node.modified_index + 1
            value = None if node.deleted else node.value
            if not (node.is_dir and value is not None):
                changed |= self.records.apply(node.key, value)
            if node.store_index is None or node.store_index < self.index:
                break             # nothing more is waiting
        if changed:
            self.publish()
        self.tick()

    def _watch_timeout(self):
        if not self.waiting:
            return WATCH_TIMEOUT
        due = min(when for when, _ in self.waiting.values())
        return min(WATCH_TIMEOUT, max(0.01, due - self.clock()))

    # -- matching the namespaces to the catalog ------------------------------------------------

    def publish(self):
        view = self.records.view()
        self.answerer.set_view(view)
        for key in [k for k in self.adopted if k not in view.sandboxes]:
            self._contained(self.release, key)
        for key in [k for k in self.waiting if k not in view.sandboxes]:
            del self.waiting[key]
        self.warned &= set(view.sandboxes)
        now = self.clock()
        for key in view.sandboxes:
            if key not in self.adopted and key not in self.waiting:
                self.waiting[key] = (now, ADOPT_FIRST_DELAY)

    def tick(self):
        now = self.clock()
        for key, (when, delay) in list(self.waiting.items()):
            if when <= now:
                self._contained(self.adopt, key, delay)
        if now >= self.next_refresh:
            self.refresh()
            self.next_refresh = self.clock() + self.refresh_interval

    def _contained(self, fn, key, *args):
        """fn(key, ...), where a bug in handling one workload must not stop the answers of all
        the others: it is logged whole, and the workload is tried again later."""
        try:
            fn(key, *args)
        except Exception:  # noqa: BLE001 - logged with its traceback; see docstring
            log.exception("Unexpected failure with %s; trying it again later", key)
            if key not in self.adopted:
                self.waiting[key] = (self.clock() + ADOPT_MAX_DELAY, ADOPT_MAX_DELAY)

    def _path(self, key):
        if self.root is None or (self.root and not os.path.isdir(self.root)):
            self.root = sandboxes.dockerd_root(self.docker_socket)   # dockerd restarted
        return sandboxes.path_in_root(self.root, key)

    def adopt(self, key, delay):
        try:
            path = self._path(key)
            identity = sandboxes.identity(path)
            flavour = chains = None
            if identity is not None:
                flavour, chains = sandboxes.in_netns(path, rules.find_docker_rules)
            if flavour is None:
                if identity is not None and delay >= ADOPT_MAX_DELAY and key not in self.warned:
                    self.warned.add(key)
                    log.warning("Docker's resolver rules are not in iptables in %s (is dockerd's "
                                "nftables firewall backend on?); Docker alone answers there", key)
                self.waiting[key] = (self.clock() + delay, _later(delay))
                return
            socks = sandboxes.open_sockets(path)
        except CalicoError as exc:
            log.info("Not yet answering in %s: %s", key, exc)
            self.waiting[key] = (self.clock() + delay, _later(delay))
            return
        if socks.identity != identity:      # replaced while we looked: look again
            socks.close()
            self.waiting[key] = (self.clock() + delay, delay)
            return
        self.answerer.add(key, path, socks)
        try:
            sandboxes.in_netns(path, _install, flavour, chains, socks.ports)
        except CalicoError as exc:
            log.warning("Cannot add our DNS rules in %s: %s", key, exc)
            self.answerer.remove(key)
            self.waiting[key] = (self.clock() + delay, _later(delay))
            return
        del self.waiting[key]
        self.adopted[key] = Adopted(path, flavour, socks.ports, identity,
                                    rules.docker_ports(chains))
        log.info("Answering in %s (udp %d, tcp %d; Docker's rules in iptables-%s)", key,
                 socks.ports[0], socks.ports[1], flavour)

    def release(self, key):
        self.waiting.pop(key, None)
        adopted = self.adopted.pop(key, None)
        if adopted is None:
            return
        try:
            if sandboxes.identity(adopted.path) == adopted.identity:
                try:
                    sandboxes.in_netns(adopted.path, _uninstall, adopted.flavour)
                except CalicoError as exc:     # the workload is going away under us
                    log.info("Could not remove our DNS rules in %s: %s", key, exc)
        finally:
            self.answerer.remove(key)          # a socket must never keep a namespace alive
        log.info("No longer answering in %s", key)

    def refresh(self):
        for key in list(self.adopted):
            self._contained(self._refresh_one, key)

    def _refresh_one(self, key):
        adopted = self.adopted[key]
        if sandboxes.identity(adopted.path) != adopted.identity:
            self.release(key)
            return
        try:
            ports = sandboxes.in_netns(adopted.path, _repair, adopted.flavour, adopted.ports)
        except CalicoError as exc:
            log.warning("Cannot check our DNS rules in %s: %s", key, exc)
            return
        if ports and ports != adopted.docker_ports:
            log.info("Docker's resolver in %s moved to %s", key, ports)
            adopted.docker_ports = ports
            self.answerer.renew_forward(key)

    def shutdown(self):
        for key in list(self.adopted):
            self._contained(self.release, key)
        self.answerer.stop()
        if self.ready_file:
            try:
                os.unlink(self.ready_file)
            except FileNotFoundError:
                pass

    def _write_ready(self):
        if not self.ready_file:
            return
        os.makedirs(os.path.dirname(self.ready_file) or ".", exist_ok=True)
        tmp = self.ready_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % os.getpid())
        os.replace(tmp, self.ready_file)


# --- run inside a workload's namespace (sandboxes.in_netns) -------------------------------------

def _install(flavour, chains, ports):
    rules.apply(flavour, rules.install_text(chains, *ports))
    after = rules.read_nat(flavour)
    if not (rules.in_place(after, *ports) and rules.docker_ready(after)):
        text = rules.removal_text(after)
        if text:
            rules.apply(flavour, text)
        raise DataplaneError(["iptables-%s-restore" % flavour, "--noflush"], 1,
                             stderr="our rules did not land first above Docker's complete rules")


def _uninstall(flavour):
    text = rules.removal_text(rules.read_nat(flavour))
    if text:
        rules.apply(flavour, text)


def _repair(flavour, ports):
    """Put our rules back on top if something moved them; Docker's resolver ports."""
    chains = rules.read_nat(flavour)
    if rules.docker_ready(chains) and not rules.in_place(chains, *ports):
        log.warning("Our DNS rules were moved or removed; putting them back")
        rules.apply(flavour, rules.install_text(chains, *ports))
    return rules.docker_ports(chains)
