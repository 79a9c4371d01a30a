"""Run the per-host agent: policy, routes, NAT and BGP for this host's workloads.

Usage:
  calicoctl felix serve [--log-level=<LEVEL>] [--refresh-interval=<SECS>] [--no-bgp]
                        [--run-dir=<DIR>] [--backend=<BACKEND>] [--dataplane=<DP>]

Description:
  Waits for /calico/v1/Ready, programs this host from etcd and keeps it in step: iptables and
  ip6tables chains (felix-*), ipsets for tags, routes and proxy ARP for local workloads,
  outgoing NAT, and BIRD/BIRD6 for BGP.  Runs until interrupted.

Options:
  --log-level=<LEVEL>        DEBUG, INFO, WARNING or ERROR; default: LogSeverityScreen in etcd.
  --refresh-interval=<SECS>  Seconds between repairs of rules removed by hand
                             (default: IptablesRefreshInterval in etcd, else 30).
  --no-bgp                   Do not run BIRD (routes come from elsewhere).
  --run-dir=<DIR>            Where BIRD's config, socket and pid files live [default: /var/run/calico].
  --backend=<BACKEND>        iptables backend: nft (what Docker uses here) or legacy [default: nft].
  --dataplane=<DP>           Where policy lives: nftables (our own nft table), iptables
                             (felix-* chains and ipsets), or auto: nftables where nft and the
                             kernel accept it, else iptables [default: auto].
"""

import logging
import os
import signal

from calicoctl.errors import CalicoError, ValidationError


def run(arguments):
    from calicoctl.datastore import open_store
    from calicoctl.felix.agent import Agent
    from calicoctl.felix.birdproc import BirdProcess
    from calicoctl.felix.config import LOG_LEVELS
    from calicoctl.felix.executor import BACKENDS, DATAPLANES, AgentDataplane
    from calicoctl.nodename import node_name

    level = arguments["--log-level"]
    if level is not None and level.upper() not in LOG_LEVELS:
        raise ValidationError("Invalid --log-level %r: use DEBUG, INFO, WARNING or ERROR." % level)
    interval = arguments["--refresh-interval"]
    if interval is not None:
        try:
            interval = float(interval)
        except ValueError:
            raise ValidationError("Invalid --refresh-interval %r: give seconds." % interval)
        if interval <= 0:
            raise ValidationError("--refresh-interval must be positive.")
    backend = arguments["--backend"] or "nft"
    if backend not in BACKENDS:
        raise ValidationError("Invalid --backend %r: use nft or legacy." % backend)
    dataplane = (arguments["--dataplane"] or "auto").lower()
    if dataplane not in DATAPLANES:
        raise ValidationError("Invalid --dataplane %r: use auto, nftables or iptables." % dataplane)
    return felix_serve(open_store(), node_name(), LOG_LEVELS[level.upper()] if level else None,
                       interval, not arguments["--no-bgp"], arguments["--run-dir"], backend,
                       Agent, BirdProcess, AgentDataplane, dataplane)


def log_to_file(store, host):
    """Also log to LogFilePath at LogSeverityFile (host setting over global), as Felix does:
    `calicoctl node --log-dir` binds the host folder that holds it.  "none" turns it off."""
    from calicoctl.datastore.config import get_config
    from calicoctl.felix.config import LOG_LEVELS

    def setting(name):
        return get_config(store, name, host) or get_config(store, name)
    try:
        path = setting("LogFilePath")
    except CalicoError as exc:      # etcd not there yet: the agent waits for it, logging to stderr
        logging.getLogger(__name__).warning("No log file: cannot read LogFilePath (%s)", exc)
        return None
    if not path or path.lower() == "none":
        return None
    level = LOG_LEVELS.get((setting("LogSeverityFile") or "INFO").upper(), logging.INFO)
    if _is_stderr(path):
        return None           # stderr already goes there (e.g. a service's redirection)
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        handler = logging.FileHandler(path)
    except OSError as exc:
        logging.getLogger(__name__).warning("Cannot log to %s: %s", path, exc)
        return None
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler


def _is_stderr(path):
    try:
        ours, theirs = os.fstat(2), os.stat(path)
    except OSError:
        return False
    return (ours.st_dev, ours.st_ino) == (theirs.st_dev, theirs.st_ino)


def felix_serve(store, host, log_level, interval, bgp, run_dir, backend, agent_cls, bird_cls,
                dataplane_cls, dataplane="auto"):
    from calicoctl.felix.executor import choose_dataplane
    log_to_file(store, host)
    chosen, why = choose_dataplane(dataplane)
    birds = {v: bird_cls(v, run_dir) for v in (4, 6)} if bgp else {}
    agent = agent_cls(store, host, dataplane_cls(backend=backend, dataplane=chosen), birds=birds,
                      refresh_interval=interval, log_level=log_level)
    # The CLI's root logger shows warnings only; the agent is a service and logs its progress.
    logging.getLogger("calicoctl").setLevel(log_level or logging.INFO)

    def _stop(signum, frame):
        agent.stop()
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    logging.getLogger(__name__).info("calicoctl felix serving host %s; policy dataplane %s (%s)",
                                     host, chosen, why)
    agent.run()
