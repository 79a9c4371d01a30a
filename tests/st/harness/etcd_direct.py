"""Reading and writing a test etcd directly, in whichever API it serves, without calicoctl.

Shared by the unit tests (through tests/unit/etcd_direct.py) and the system-test helpers, which
reach the testbed's etcd as `DirectEtcd(etcd.url, etcd.api)`.  Tests check what calicoctl stored (and plant what another host or an older version would have
left) through this helper rather than through calicoctl's own store, so a bug in the store cannot
hide itself.  `DirectEtcd(url, "2")` speaks the v2 keys API through python-etcd; `"3"` the v3
JSON gateway through plain urllib (not etcd3gw, which the store uses).  Both answer in the same
terms: values are strings, indexes are v2 modifiedIndex or v3 mod_revision.  A read that fails
raises; it never answers "nothing".
"""

import base64
import json
import urllib.error
import urllib.request


def _b64(text):
    return base64.b64encode(text.encode()).decode()


def _unb64(text):
    return base64.b64decode(text).decode() if text else ""


def _prefix_end(prefix):
    raw = prefix.encode()
    return base64.b64encode(raw[:-1] + bytes([raw[-1] + 1])).decode()


class DirectEtcd:
    def __init__(self, url, api):
        if api not in ("2", "3"):
            raise ValueError("api must be '2' or '3', not %r" % (api,))
        self.url = url.rstrip("/")
        self.api = api
        self._v2 = None

    # -- v2 -----------------------------------------------------------------------------------

    @property
    def v2(self):
        if self._v2 is None:
            import etcd
            import urllib.parse
            parsed = urllib.parse.urlsplit(self.url)
            self._v2 = etcd.Client(host=parsed.hostname, port=parsed.port)
        return self._v2

    # -- v3 -----------------------------------------------------------------------------------

    def post(self, path, payload):
        """One v3 gateway call; etcd's JSON answer (an HTTP error raises, with etcd's text)."""
        request = urllib.request.Request(self.url + "/v3" + path, method="POST",
                                         data=json.dumps(payload).encode())
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise RuntimeError("etcd %s: %s %s" % (path, exc.code, exc.read().decode())) from None

    def _range(self, key, prefix=False):
        payload = {"key": _b64(key)}
        if prefix:
            payload["range_end"] = _prefix_end(key)
        return self.post("/kv/range", payload).get("kvs", [])

    # -- both ---------------------------------------------------------------------------------

    def write(self, key, value, ttl=None, prev_index=None):
        """Set key (only if its index is still prev_index, when given); its new index."""
        if self.api == "2":
            kwargs = {"ttl": ttl}
            if prev_index is not None:
                kwargs["prevIndex"] = prev_index
            return self.v2.write(key, value, **kwargs).modifiedIndex
        put = {"key": _b64(key), "value": _b64(value)}
        if ttl:
            put["lease"] = self.post("/lease/grant", {"TTL": ttl})["ID"]
        compare = []
        if prev_index is not None:
            compare = [{"key": _b64(key), "target": "MOD", "result": "EQUAL",
                        "mod_revision": prev_index}]
        answer = self.post("/kv/txn", {"compare": compare, "success": [{"request_put": put}]})
        if not answer.get("succeeded"):
            raise RuntimeError("etcd: %s changed since index %s" % (key, prev_index))
        return int(answer["header"]["revision"])

    def get(self, key):
        """key's value, or None if it does not exist."""
        if self.api == "2":
            import etcd
            try:
                result = self.v2.read(key)
            except etcd.EtcdKeyNotFound:
                return None
            return None if result.dir else result.value
        kvs = self._range(key)
        return _unb64(kvs[0].get("value")) if kvs else None

    def modified_index(self, key):
        """key's modified index (v2 modifiedIndex, v3 mod_revision), or None if absent."""
        if self.api == "2":
            import etcd
            try:
                return self.v2.read(key).modifiedIndex
            except etcd.EtcdKeyNotFound:
                return None
        kvs = self._range(key)
        return int(kvs[0]["mod_revision"]) if kvs else None

    def delete(self, key, recursive=False):
        if self.api == "2":
            import etcd
            try:
                if recursive:
                    self.v2.delete(key, recursive=True, dir=True)
                else:
                    self.v2.delete(key)
            except etcd.EtcdKeyNotFound:
                pass
            return
        self.post("/kv/deleterange", {"key": _b64(key)})
        if recursive:
            self.post("/kv/deleterange", {"key": _b64(key + "/"),
                                          "range_end": _prefix_end(key + "/")})

    def dump(self, prefix="/calico"):
        """Every key below prefix -> value."""
        if self.api == "2":
            import etcd
            try:
                result = self.v2.read(prefix, recursive=True)
            except etcd.EtcdKeyNotFound:
                return {}
            return {n.key: n.value for n in result.leaves if not n.dir}
        return {_unb64(kv["key"]): _unb64(kv.get("value"))
                for kv in self._range(prefix + "/", prefix=True)}

    def revision(self):
        """The store-wide index now."""
        if self.api == "2":
            import etcd
            try:
                return self.v2.read("/").etcd_index
            except etcd.EtcdKeyNotFound as exc:
                return int(exc.payload.get("index", 0))
        return int(self.post("/kv/range", {"key": _b64("/")})["header"]["revision"])

    def forget_history(self):
        """Make etcd drop the history a watch from any index up to now would need: v2 keeps
        only its last 1000 events, so push 1100 more through; v3 compacts up to a revision
        after now (compacting at R keeps R itself)."""
        if self.api == "2":
            for i in range(1100):
                self.v2.write("/scratch/history", str(i))
            return
        after = self.write("/scratch/history", "compact")
        self.post("/kv/compaction", {"revision": after, "physical": True})
