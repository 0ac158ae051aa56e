#!/usr/bin/env python3
"""A varlink client that is not ours, against a real gpuhostd.

Uses only the Python standard library: a raw AF_UNIX stream socket, JSON
messages terminated by a NUL byte, nothing from the project's own codec.
Starts the daemon itself with a temporary config (its socket in a temporary
directory), runs the checks, then stops it with SIGTERM and checks that it
exits 0 and removes its socket.

Environment: GH_GPUHOSTD (the gpuhostd binary) and GH_SOURCE_DIR (the source
tree, for daemon/io.gpuhost.varlink). Prints one line per check and ends
with "N passed, M failed"; exits 1 if any check failed.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

TIMEOUT = 10.0


class Results:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, name, ok, detail=""):
        if ok:
            self.passed += 1
            print(f"PASS: {name}", flush=True)
        else:
            self.failed += 1
            print(f"FAIL: {name}" + (f": {detail}" if detail else ""), flush=True)
        return ok


class Connection:
    """One varlink connection: NUL-terminated JSON both ways."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(path)
        self.buf = b""

    def close(self):
        self.sock.close()

    def send(self, method, parameters=None, **flags):
        msg = {"method": method}
        if parameters is not None:
            msg["parameters"] = parameters
        msg.update(flags)
        self.sock.sendall(json.dumps(msg).encode("utf-8") + b"\0")

    def recv(self, timeout=TIMEOUT):
        """The next message, or None if nothing complete came in |timeout|."""
        deadline = time.monotonic() + timeout
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return None
            if not data:
                raise ConnectionError("connection closed by the daemon")
            self.buf += data
        text, _, self.buf = self.buf.partition(b"\0")
        return json.loads(text.decode("utf-8"))

    def call(self, method, parameters=None, **flags):
        self.send(method, parameters, **flags)
        reply = self.recv()
        if reply is None:
            raise TimeoutError(f"no reply to {method} within {TIMEOUT} s")
        return reply


def wait_for_socket(path, proc, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return True
        except OSError:
            time.sleep(0.05)
        finally:
            s.close()
    return False


def strip_comments(text):
    """The IDL text without comment lines and blank lines."""
    return [l for l in text.splitlines() if l.strip() and not l.lstrip().startswith("#")]


def run_checks(r, conn, daemon, pid, sock_path, source_dir):
    # org.varlink.service.GetInfo
    reply = conn.call("org.varlink.service.GetInfo")
    info = reply.get("parameters", {})
    r.check("GetInfo: a reply, not an error", "error" not in reply, json.dumps(reply))
    r.check("GetInfo: vendor is 'gpuhost'", info.get("vendor") == "gpuhost", repr(info.get("vendor")))
    r.check("GetInfo: product is 'gpuhostd'", info.get("product") == "gpuhostd", repr(info.get("product")))
    out = subprocess.run([daemon, "--version"], capture_output=True, text=True, timeout=TIMEOUT).stdout.split()
    version = info.get("version")
    r.check("GetInfo: version is the one 'gpuhostd --version' prints",
            isinstance(version, str) and re.match(r"^\d+\.\d+\.\d+", version) and out[-1:] == [version],
            f"{version!r} vs {out!r}")
    r.check("GetInfo: url is a string", isinstance(info.get("url"), str), repr(info.get("url")))
    ifaces = info.get("interfaces")
    r.check("GetInfo: interfaces lists org.varlink.service and io.gpuhost",
            isinstance(ifaces, list) and "org.varlink.service" in ifaces and "io.gpuhost" in ifaces, repr(ifaces))

    # org.varlink.service.GetInterfaceDescription
    idl_path = os.path.join(source_dir, "daemon", "io.gpuhost.varlink")
    with open(idl_path, "rb") as f:
        idl = f.read()
    reply = conn.call("org.varlink.service.GetInterfaceDescription", {"interface": "io.gpuhost"})
    desc = reply.get("parameters", {}).get("description")
    r.check("GetInterfaceDescription(io.gpuhost) is daemon/io.gpuhost.varlink byte for byte",
            isinstance(desc, str) and desc.encode("utf-8") == idl,
            f"{len(desc.encode('utf-8')) if isinstance(desc, str) else desc!r} bytes vs {len(idl)}")

    reply = conn.call("org.varlink.service.GetInterfaceDescription", {"interface": "org.varlink.service"})
    desc = reply.get("parameters", {}).get("description")
    lines = strip_comments(desc) if isinstance(desc, str) else []
    r.check("GetInterfaceDescription(org.varlink.service) starts with its interface line",
            lines[:1] == ["interface org.varlink.service"], repr(lines[:1]))

    reply = conn.call("org.varlink.service.GetInterfaceDescription", {"interface": "org.example.nothing"})
    r.check("GetInterfaceDescription(unknown) fails with InterfaceNotFound",
            reply.get("error") == "org.varlink.service.InterfaceNotFound"
            and reply.get("parameters", {}).get("interface") == "org.example.nothing", json.dumps(reply))

    # io.gpuhost.GetStatus
    reply = conn.call("io.gpuhost.GetStatus", {})
    st = reply.get("parameters", {})
    r.check("GetStatus: a reply, not an error", "error" not in reply, json.dumps(reply))
    r.check("GetStatus: version matches GetInfo", st.get("version") == version, repr(st.get("version")))
    r.check("GetStatus: state is 'running'", st.get("state") == "running", repr(st.get("state")))
    up = st.get("uptime_usec")
    r.check("GetStatus: uptime_usec is an integer >= 0",
            isinstance(up, int) and not isinstance(up, bool) and up >= 0, repr(up))
    r.check("GetStatus: pid is the daemon's", st.get("pid") == pid, f"{st.get('pid')!r} vs {pid}")
    devices = st.get("devices")
    fields = ("index", "kind", "name", "memory_total", "memory_free", "memory_budget")
    r.check("GetStatus: devices is a non-empty list of complete devices",
            isinstance(devices, list) and len(devices) > 0
            and all(isinstance(d, dict) and all(k in d for k in fields) for d in devices), repr(devices))
    cfg = st.get("config")
    r.check("GetStatus: config.socket is the configured path",
            isinstance(cfg, dict) and cfg.get("socket") == sock_path, repr(cfg))

    # "more": the daemon may send "continues" replies; Ping ends with one
    # final reply without it.
    conn.send("io.gpuhost.Ping", {"ping": "more"}, more=True)
    replies = []
    while True:
        m = conn.recv()
        if m is None:
            break
        replies.append(m)
        if not m.get("continues"):
            break
    last = replies[-1] if replies else {}
    r.check("Ping with more: ends with a final reply (no 'continues')",
            bool(replies) and "error" not in last and not last.get("continues")
            and last.get("parameters", {}).get("pong") == "more", json.dumps(replies))

    # "oneway": no reply at all; the next call's reply is the only one.
    conn.send("io.gpuhost.Ping", {"ping": "oneway"}, oneway=True)
    conn.send("io.gpuhost.Ping", {"ping": "second"})
    first = conn.recv()
    extra = conn.recv(timeout=0.5)
    r.check("oneway Ping gets no reply; the following Ping gets the only one",
            first is not None and first.get("parameters", {}).get("pong") == "second" and extra is None,
            f"{first!r}, then {extra!r}")

    reply = conn.call("io.gpuhost.NoSuchMethod", {})
    r.check("unknown method fails with MethodNotFound",
            reply.get("error") == "org.varlink.service.MethodNotFound"
            and reply.get("parameters", {}).get("method") == "io.gpuhost.NoSuchMethod", json.dumps(reply))

    # Every method the IDL declares is served.
    methods = re.findall(r"^\s*method\s+([A-Z][A-Za-z0-9]*)\s*\(", idl.decode("utf-8"), re.M)
    r.check("the IDL declares methods", len(methods) > 0, repr(methods))
    for name in methods:
        reply = conn.call(f"io.gpuhost.{name}", {})
        err = reply.get("error")
        r.check(f"IDL method io.gpuhost.{name} is callable",
                err not in ("org.varlink.service.MethodNotFound", "org.varlink.service.InterfaceNotFound",
                            "org.varlink.service.MethodNotImplemented"),
                json.dumps(reply))


def main():
    daemon = os.environ.get("GH_GPUHOSTD")
    source_dir = os.environ.get("GH_SOURCE_DIR")
    if not daemon or not source_dir:
        print("FAIL: GH_GPUHOSTD and GH_SOURCE_DIR must be set", flush=True)
        print("0 passed, 1 failed")
        return 1

    r = Results()
    with tempfile.TemporaryDirectory(prefix="gh-foreign-") as tmp:
        sock_path = os.path.join(tmp, "gpuhost.sock")
        conf = os.path.join(tmp, "gpuhost.conf")
        with open(conf, "w") as f:
            f.write(f"[socket]\npath={sock_path}\n")
        env = {k: v for k, v in os.environ.items()
               if k not in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET")}
        log = open(os.path.join(tmp, "gpuhostd.log"), "w+")
        proc = subprocess.Popen([daemon, "-c", conf], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, env=env)
        try:
            if r.check("gpuhostd accepts connections on its socket", wait_for_socket(sock_path, proc),
                       f"exit status {proc.poll()}"):
                conn = Connection(sock_path)
                try:
                    run_checks(r, conn, daemon, proc.pid, sock_path, source_dir)
                except (OSError, ValueError, TimeoutError) as e:
                    r.check("the conversation completes", False, f"{type(e).__name__}: {e}")
                finally:
                    conn.close()
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    status = proc.wait(timeout=TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    status = f"still running after {TIMEOUT:.0f} s (killed)"
                    proc.wait()
                r.check("SIGTERM: gpuhostd exits 0", status == 0, f"status {status}")
                r.check("SIGTERM: gpuhostd removed its socket", not os.path.exists(sock_path))
            else:
                r.check("gpuhostd was still running at the end", False, f"exit status {proc.returncode}")
            if r.failed:
                log.seek(0)
                print("--- gpuhostd output ---\n" + log.read() + "--- end ---", flush=True)
            log.close()

    print(f"{r.passed} passed, {r.failed} failed", flush=True)
    return 1 if r.failed else 0


if __name__ == "__main__":
    sys.exit(main())
