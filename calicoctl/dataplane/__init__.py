"""Host networking for workloads: veths, addresses, routes, proxy ARP/NDP and sysctls.

Shared by the libnetwork plugin (which hands the container end to Docker) and `calicoctl
container` (which moves it into a running container's namespace itself).  Every netlink call
goes through `netlink.Executor` and every sysctl through `sysctl.py` (the agent's and `calicoctl
node`'s too); both turn failures into DataplaneError.
"""


class Dataplane:
    """The host's workload networking, in this process's namespace or (netns = a path such as
    /proc/<pid>/ns/net) in another one: tests run the real thing in a throwaway namespace."""

    def __init__(self, netns=None):
        self.netns = netns

    def _run(self, fn, *args, **kwargs):
        if self.netns is None:
            return fn(*args, **kwargs)
        from calicoctl.dataplane.netlink import run_in_netns
        return run_in_netns(self.netns, fn, *args, **kwargs)

    def set_up_workload(self, *args, **kwargs):
        from calicoctl.dataplane import veth
        return self._run(veth.set_up_workload, *args, **kwargs)

    def remove_veth(self, host_ifname):
        from calicoctl.dataplane import veth
        return self._run(veth.remove_veth, host_ifname)

    def veth_exists(self, host_ifname):
        from calicoctl.dataplane import veth
        return self._run(veth.veth_exists, host_ifname)

    def list_veths(self, prefix):
        from calicoctl.dataplane import veth
        return self._run(veth.list_veths, prefix)

    def workload_mtu(self, override=None, ipip=False):
        from calicoctl.dataplane import veth
        return self._run(veth.workload_mtu, override, ipip)
