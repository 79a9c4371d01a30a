"""Every rendering variant accepted by the real BIRDs (`bird -p -c`): this machine's own and the
other major version from a Debian root (bird_support), so BIRD 1.6 and BIRD 2 both check it.

A variant is only meaningful if the binary sees what matters in it, so each one also says a few
lines the config must hold for that BIRD."""

import ipaddress

import pytest

from calicoctl.datastore.models import Pool
from calicoctl.felix.bird import BgpView, render_config
from tests.unit import bird_support

NODES = {"calico-01": {"ip4": "198.18.0.2", "ip6": "fd00::2"},
         "calico-02": {"ip4": "198.18.0.3", "ip6": "fd00::3", "as": "64512"},
         "calico-03": {"ip4": "198.18.0.4"}}
POOLS = [Pool(ipaddress.ip_network("192.168.0.0/16")),
         Pool(ipaddress.ip_network("10.9.0.0/24"), ipam=False),
         Pool(ipaddress.ip_network("172.20.0.0/16"), ipip="tunl0"),
         Pool(ipaddress.ip_network("fd80::/64")),
         Pool(ipaddress.ip_network("fd81::/64"), ipam=False)]
BLOCKS = {"192.168.0.0/26", "172.20.1.0/26", "fd80::/122"}
NETS = {"192.168.0.3/32", "10.9.0.5/32", "10.9.0.6/32", "fd81::5/128", "fd80::7/128"}


def view(**kw):
    base = dict(me="calico-01", nodes=NODES, pools=POOLS, blocks=BLOCKS, endpoint_nets=NETS)
    base.update(kw)
    return BgpView(**base)


# name -> (view, lines every config of the BIRD 1.x pair or the one BIRD 2 config must hold)
VARIANTS = {
    "mesh, per-node AS, IPv4 and IPv6, blocks, Docker-IPAM workloads, IPIP pool": (
        view(), ["neighbor 198.18.0.3 as 64512;", "neighbor fd00::3 as 64512;",
                 "neighbor 198.18.0.4 as 64511;", "route 192.168.0.0/26 blackhole;",
                 "route fd80::/122 blackhole;", "[ 10.9.0.5/32, 10.9.0.6/32 ]",
                 "[ fd81::5/128 ]", "if ( net ~ [ 172.20.0.0/16+ ] ) then reject;"]),
    "mesh off, global and node peers, node AS": (
        view(mesh=False, nodes={**NODES, "calico-01": {**NODES["calico-01"], "as": "65001"}},
             global_peers={4: {"198.18.0.200": "64513"}, 6: {"fd00::200": "64513"}},
             node_peers={4: {"198.18.0.201": "4200000000"}, 6: {"fd00::201": "65000"}}),
        ["local as 65001;", "Global_198_18_0_200", "Node_198_18_0_201", "Global_fd00__200",
         "Node_fd00__201", "as 4200000000;"]),
    "mesh off, no peers": (view(mesh=False), ["route 192.168.0.0/26 blackhole;"]),
    "no pools: nothing exported or imported": (
        view(pools=[]), ["filter calico_export", "{ reject; }"]),
    "no blocks and no workloads": (view(blocks=set(), endpoint_nets=set()), ["protocol static"]),
    "IPv4-only node": (view(nodes={"calico-01": {"ip4": "198.18.0.2"},
                                   "calico-02": {"ip4": "198.18.0.3"}}),
                       ["neighbor 198.18.0.3 as 64511;"]),
    "IPv6-only node: router id made from its address": (
        view(nodes={"calico-01": {"ip6": "fd00::c612:2"}, "calico-02": {"ip6": "fd00::3"}}),
        ["router id 198.18.0.2;", "neighbor fd00::3 as 64511;"]),
    "a link-local peer is left out": (
        view(global_peers={6: {"fe80::1": "64513"}}), ["# Global_fe80__1: a link-local"]),
    "debug logging": (view(loglevel="debug"), ["log stderr all;", "debug protocols all;"]),
    "logging off": (view(loglevel="none"), ["log stderr { fatal, bug };"]),
}


@pytest.fixture(scope="module", params=[0, 1], ids=["this machine's BIRD", "other BIRD"])
def real_bird(request):
    return bird_support.real_birds()[request.param]


def test_both_major_versions_are_covered():
    assert sorted(b.major for b in bird_support.real_birds()) == [1, 2]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_bird_accepts_the_rendering(real_bird, variant):
    v, expected = VARIANTS[variant]
    texts = {}
    for family, (daemon, _client) in real_bird.daemons().items():
        text = render_config(v, real_bird.major, family)
        if text is None:
            continue
        texts[daemon] = text
        proc = real_bird.check(text, daemon)
        assert proc.returncode == 0, "%s rejects the %s config:\n%s\n%s" % (
            real_bird, daemon, proc.stdout + proc.stderr, text)
    assert texts, "no daemon would run"
    if real_bird.major >= 2:
        assert render_config(v, real_bird.major, 6) is None      # BIRD 2 has no bird6
    everything = "".join(texts.values())
    for line in expected:
        assert line in everything, (line, everything)


def test_bird_rejects_a_broken_config(real_bird):
    """The check the agent relies on before replacing a config really rejects."""
    text = render_config(view(), real_bird.major, 4).replace("reject;", "rejekt;", 1)
    assert real_bird.check(text).returncode != 0
