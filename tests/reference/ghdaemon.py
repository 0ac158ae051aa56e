"""A real gpuhostd for the GPU test and benchmark scripts (stdlib only):
started with a configuration of its own in a temporary folder (socket,
[devices] and [scheduler] lines, a copy of the txt2img/img2img plugins,
model sections), up once its workers offer txt2img; gpuhostctl runs
against it, and io.gpuhost calls go straight over its socket (varlink:
NUL-terminated JSON) for polling without starting processes.
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time


class DaemonError(Exception):
    pass


@contextlib.contextmanager
def serving(d, error):
    """The with-block runs against daemon |d|: a DaemonError in it comes
    out as |error| after the daemon's log tail is printed, and the daemon
    stops either way (its tail printed where it did not exit cleanly)."""
    try:
        yield d
    except DaemonError as e:
        print(d.log_tail(), flush=True)
        raise error(str(e))
    finally:
        if not d.stop():
            print("gpuhostd did not exit cleanly:\n" + d.log_tail(),
                  flush=True)


class Daemon:
    def __init__(self, gpuhostd, ctl, worker, plugins, tmp, devices="",
                 scheduler="", workers="", models="", ready_sec=120,
                 daemon="", plugin_files=("txt2img.so", "img2img.so")):
        self.ctl_path, self.tmp = ctl, tmp
        plugin_dir = os.path.join(tmp, "plugins")
        os.makedirs(plugin_dir)
        mp4 = os.path.join(plugins, "..", "video-mp4")
        if "video.so" in plugin_files and os.path.isdir(mp4):
            shutil.copytree(mp4, os.path.join(tmp, "video-mp4"))  # its encoder
        for p in plugin_files:
            shutil.copy(os.path.join(plugins, p), plugin_dir)
            os.chmod(os.path.join(plugin_dir, p), 0o644)
        self.sock = os.path.join(tmp, "gpuhost.sock")
        self.conf = os.path.join(tmp, "gpuhost.conf")
        with open(self.conf, "w") as f:
            f.write("[daemon]\n%s\n[socket]\npath = %s\n[devices]\n%s\n"
                    "[scheduler]\n%s\n[workers]\nexecutable = %s\n"
                    "plugin_directory = %s\n%s\n%s" % (
                        daemon, self.sock, devices, scheduler, worker,
                        plugin_dir, workers, models))
        self.log_path = os.path.join(tmp, "daemon.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([gpuhostd, "-c", self.conf],
                                     stderr=self.log)
        self.env = dict(os.environ, GPUHOST_SOCKET=self.sock)
        deadline = time.time() + ready_sec
        while time.time() < deadline:
            r = subprocess.run([ctl, "pipelines"], env=self.env,
                               capture_output=True, text=True)
            if r.returncode == 0 and all(
                    f[:-3] in r.stdout for f in plugin_files):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise DaemonError("gpuhostd did not come up:\n" + self.log_tail())

    def ctl(self, *args, timeout=900):
        """gpuhostctl ARGS; its stdout, or DaemonError with its output."""
        r = subprocess.run([self.ctl_path] + list(args), env=self.env,
                           capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise DaemonError("gpuhostctl %s: exit %d\n%s%s"
                              % (" ".join(args), r.returncode, r.stdout,
                                 r.stderr))
        return r.stdout

    def popen(self, *args):
        """gpuhostctl ARGS started, not waited for (stdout/stderr piped)."""
        return subprocess.Popen([self.ctl_path] + list(args), env=self.env,
                                stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def call(self, method, parameters=None, timeout=10.0):
        """One io.gpuhost call on a connection of its own: the reply's
        parameters (DaemonError for an error reply)."""
        msg = {"method": method}
        if parameters is not None:
            msg["parameters"] = parameters
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(self.sock)
            s.sendall(json.dumps(msg).encode() + b"\0")
            buf = b""
            while b"\0" not in buf:
                chunk = s.recv(65536)
                if not chunk:
                    raise DaemonError(method + ": connection closed")
                buf += chunk
        reply = json.loads(buf.split(b"\0", 1)[0])
        if "error" in reply:
            raise DaemonError("%s: %s %s" % (method, reply["error"],
                                             json.dumps(reply.get(
                                                 "parameters"))))
        return reply.get("parameters", {})

    def ledger(self, device):
        """The scheduler's memory ledger of |device| (GetStatus)."""
        for d in self.call("io.gpuhost.GetStatus").get("devices", []):
            if d.get("index") == device:
                return d.get("memory") or {}
        raise DaemonError("no device %d in GetStatus" % device)

    def devices(self):
        return self.call("io.gpuhost.ListDevices").get("devices", [])

    def jobs(self):
        return self.call("io.gpuhost.ListJobs").get("jobs", [])

    def log_tail(self, n=40):
        try:
            with open(self.log_path) as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def log_lines(self, text):
        """The lines of the daemon's log that contain |text|."""
        try:
            with open(self.log_path) as f:
                return [line for line in f if text in line]
        except OSError:
            return []

    def stop(self):
        """SIGTERM, then waits (kills it after 30 s); True if it exited 0."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode == 0
