"""The least a routed remote network driver can do: a baseline for bench/container_start.py.

    python bench/null_driver.py SOCKET_PATH        (inside a testbed host, as root)

Docker calls a remote (plugin) network driver over HTTP on a unix socket, where its built-in
bridge driver runs inside the daemon.  This driver answers those calls with no datastore and no
policy agent: Join makes the veth pair, the host side up with proxy ARP, and a /32 route to the
container, the same plumbing a Calico endpoint gets; every other call is answered from the
request alone.  It is also a remote IPAM driver, as Calico is (`--ipam-driver calico`), so
Docker makes the same calls for an address: /32s counted up from 10.99.0.1, never reused, and
no gateway (Data says 0.0.0.0/0, as Calico's does).  A container on it is reachable by its
neighbours the way a Calico container is, so its start time is the engine's cost of a routed
remote driver with its own IPAM, plus the plumbing and a minimal HTTP server: what is left of
Calico's start time above it is ours (etcd, IPAM, the agent's wait).

Forwarding: dockerd sets the FORWARD policy to DROP; the bench accepts nul+ interfaces itself.
"""

import http.server
import json
import os
import socketserver
import sys
import threading

from pyroute2 import IPRoute

GATEWAY = "169.254.1.1"
PREFIX = "nul"
POOL = "10.99.0.0/16"


class Driver:
    def __init__(self):
        self.ipr = IPRoute()
        self.lock = threading.Lock()
        self.addresses = {}          # endpoint ID -> the address RequestAddress gave it
        self.given = 0               # addresses handed out so far (10.99.0.1 is the first)

    def call(self, name, request):
        handler = getattr(self, name.replace(".", "_"), None)
        return handler(request) if handler else {}

    def Plugin_Activate(self, request):
        return {"Implements": ["NetworkDriver", "IpamDriver"]}

    def IpamDriver_GetCapabilities(self, request):
        return {"RequiresMACAddress": False}

    def IpamDriver_GetDefaultAddressSpaces(self, request):
        return {"LocalDefaultAddressSpace": "NullLocal", "GlobalDefaultAddressSpace": "NullGlobal"}

    def IpamDriver_RequestPool(self, request):
        return {"PoolID": "null", "Pool": POOL,
                "Data": {"com.docker.network.gateway": "0.0.0.0/0"}}

    def IpamDriver_RequestAddress(self, request):
        with self.lock:
            self.given += 1
            n = self.given
        return {"Address": "10.99.%d.%d/32" % (n // 256, n % 256), "Data": {}}

    def NetworkDriver_GetCapabilities(self, request):
        return {"Scope": "local", "ConnectivityScope": "local"}

    def NetworkDriver_CreateEndpoint(self, request):
        address = (request.get("Interface") or {}).get("Address") or ""
        with self.lock:
            self.addresses[request["EndpointID"]] = address.split("/")[0]
        return {}

    def NetworkDriver_DeleteEndpoint(self, request):
        with self.lock:
            self.addresses.pop(request["EndpointID"], None)
        return {}

    def NetworkDriver_EndpointOperInfo(self, request):
        return {"Value": {}}

    def NetworkDriver_Join(self, request):
        eid = request["EndpointID"]
        host_side, peer = PREFIX + eid[:11], "tmp" + eid[:11]
        with self.lock:
            address = self.addresses[eid]
            self.ipr.link("add", ifname=host_side, kind="veth", peer=peer)
            index = self.ipr.link_lookup(ifname=host_side)[0]
            # Proxy ARP, answered at once (the kernel otherwise delays each answer by up to
            # 0.8 s), as Calico's host side is set up.
            for path in ("conf/%s/proxy_arp", "neigh/%s/proxy_delay"):
                with open("/proc/sys/net/ipv4/" + path % host_side, "w") as f:
                    f.write("1" if "arp" in path else "0")
            self.ipr.link("set", index=index, state="up")
            self.ipr.route("replace", dst=address + "/32", oif=index)
        return {"InterfaceName": {"SrcName": peer, "DstPrefix": "eth"}, "Gateway": GATEWAY,
                "StaticRoutes": [{"Destination": GATEWAY + "/32", "RouteType": 1,
                                  "NextHop": ""}]}

    def NetworkDriver_Leave(self, request):
        with self.lock:
            found = self.ipr.link_lookup(ifname=PREFIX + request["EndpointID"][:11])
            if found:
                self.ipr.link("del", index=found[0])
        return {}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            answer = self.server.driver.call(self.path.lstrip("/"),
                                             json.loads(body) if body.strip() else {})
        except Exception as exc:  # noqa: BLE001 - answered to Docker, which shows it
            answer = {"Err": "null driver: %s: %s" % (type(exc).__name__, exc)}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.docker.plugins.v1.1+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def address_string(self):
        return "docker"

    def log_message(self, *args):
        pass


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def main():
    path = sys.argv[1]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.exists(path):
        os.unlink(path)
    server = Server(path, Handler)
    server.driver = Driver()
    server.serve_forever()


if __name__ == "__main__":
    main()
