"""Agent configuration: global /calico/v1/config/<Name>, overridden per host by
/calico/v1/host/<host>/config/<Name>, over built-in defaults.  Bad values fall back to the
default with a warning naming the key, so a typo never leaves the host open."""

import logging
from dataclasses import dataclass

from calicoctl.felix.policy import ENDPOINT_TO_HOST_ACTIONS

log = logging.getLogger(__name__)

LOG_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING,
              "WARN": logging.WARNING, "ERROR": logging.ERROR, "CRITICAL": logging.CRITICAL,
              "NONE": logging.CRITICAL + 10}


@dataclass(frozen=True)
class AgentConfig:
    interface_prefix: str = "cali"
    # Felix's own default: a workload may not talk to its host unless told (the node command
    # writes RETURN per host, as the original did).
    endpoint_to_host_action: str = "DROP"
    log_severity_screen: str = "INFO"
    ipip_enabled: bool = False
    # Seconds between checks that our rules, sets and routes are still in the kernel.
    refresh_interval: float = 30.0

    @property
    def log_level(self):
        return LOG_LEVELS.get(self.log_severity_screen.upper(), logging.INFO)


def _bool(text):
    return str(text).strip().lower() in ("true", "1", "yes")


def build_config(global_values, host_values):
    """AgentConfig from {Name: value} of the global and this host's config keys."""
    merged = dict(global_values)
    merged.update(host_values)
    kwargs = {}
    prefix = merged.get("InterfacePrefix")
    if prefix:
        if prefix.isalnum() and len(prefix) <= 8:
            kwargs["interface_prefix"] = prefix
        else:
            log.warning("Ignoring InterfacePrefix %r: use up to 8 letters or digits", prefix)
    action = merged.get("DefaultEndpointToHostAction")
    if action:
        if action.upper() in ENDPOINT_TO_HOST_ACTIONS:
            kwargs["endpoint_to_host_action"] = action.upper()
        else:
            log.warning("Ignoring DefaultEndpointToHostAction %r: use DROP, RETURN or ACCEPT",
                        action)
    level = merged.get("LogSeverityScreen")
    if level:
        if level.upper() in LOG_LEVELS:
            kwargs["log_severity_screen"] = level.upper()
        else:
            log.warning("Ignoring LogSeverityScreen %r", level)
    if "IpInIpEnabled" in merged:
        kwargs["ipip_enabled"] = _bool(merged["IpInIpEnabled"])
    interval = merged.get("IptablesRefreshInterval")
    if interval:
        try:
            kwargs["refresh_interval"] = max(1.0, float(interval))
        except ValueError:
            log.warning("Ignoring IptablesRefreshInterval %r: not a number", interval)
    return AgentConfig(**kwargs)
