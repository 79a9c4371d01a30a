"""An engine stand-in that answers the two calls calicoctl makes before it judges an engine
(/version, /_ping) as an old Docker does: no engine older than 20.10 can be installed on this
machine.  Run as its own process, so nothing else in the test process (threads, sockets opened
and closed by other tests) can touch its listening socket:

    python -m tests.unit.engine_standin <socket path> <Version> <ApiVersion>
"""

import http.server
import json
import socketserver
import sys


class EngineStandIn(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def handler_for(version, api):
    answer = {"Version": version, "ApiVersion": api, "MinAPIVersion": "1.12", "Os": "linux",
              "Arch": "amd64"}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            path = self.path.split("?")[0].rsplit("/", 1)[-1]
            if path == "version":
                body, kind = json.dumps(answer).encode(), "application/json"
            elif path == "_ping":
                body, kind = b"OK", "text/plain"
            else:
                body, kind = b'{"message": "page not found"}', "application/json"
            self.send_response(200 if path in ("version", "_ping") else 404)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Api-Version", api)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass
    return Handler


def main(path, version, api):
    with EngineStandIn(path, handler_for(version, api)) as server:
        server.serve_forever()


if __name__ == "__main__":
    main(*sys.argv[1:4])
