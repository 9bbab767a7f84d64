"""The sandbox holes of issue 13, one regression test each (each failed on the code before the fix).

Local tiers run through test_sandbox's `cfg` fixture (bubblewrap and rlimits, each skipped with its
probe's reason when it cannot run here); the http tier runs against a small local service on
127.0.0.1 that this file starts and stops (threaded, every handler bounded in time).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import warnings
from dataclasses import replace
from pathlib import Path

import pytest

from fakes import ByteTokenizer, ScriptedPolicy
from test_sandbox import IS_ROOT, cfg  # noqa: F401  (the tier fixture)
from tao_lab import tasks as tasks_module
from tao_lab.rollout import RolloutConfig, generate
from tao_lab.sandbox import (TASK_DATA_DIRS, SandboxConfig, SandboxError, SandboxPool, SandboxWarning,
                             run_code, tier_status)
from tao_lab.sandbox import pool as pool_module
from tao_lab.sandbox.runner import Proc, execute
from tao_lab.sandbox.uids import UidLease, drops_root, kill_all_of

FORGED = ["import sys; sys.exit('bwrap: Can\\'t mount proc on /newroot/proc: Operation not permitted')",
          "import sys\nsys.stderr.write('bwrap: execvp python: No such file or directory\\n')\nsys.exit(1)"]


def _lines_of(res) -> list[str]:
    return [ln for ln in res.stdout.splitlines() if ln.strip()]


# ---------------------------------------------------------------------------------------------
# Only the runner may report a tier failure


def test_a_forged_runner_message_is_an_ordinary_error(cfg):
    for code in FORGED:
        res = run_code(code, config=cfg)  # raised SandboxError on the bubblewrap tier before
        assert (res.status, res.exit_code, res.tier) == ("error", 1, cfg.tier)
        assert res.stderr.startswith("bwrap: ")


def test_a_runner_that_dies_before_the_code_runs_is_a_sandbox_error(cfg):
    # The genuine failure still raises: here the interpreter does not exist (bwrap says so on
    # stderr with exit status 1 -- the same thing the forged messages above imitate).
    lease = UidLease() if drops_root() else None
    try:
        broken = replace(cfg, python="/nonexistent/bin/python3")
        with pytest.raises(SandboxError, match="failed to start|cannot start"):
            execute(Proc(broken, cfg.tier, lease.uid if lease else -1), "print(1)")
        # ...and a runner that is not our runner (never writes the status byte) too.
        with pytest.raises(SandboxError, match="failed to start"):
            execute(Proc(replace(cfg, python="/bin/false"), cfg.tier, lease.uid if lease else -1), "print(1)")
    finally:
        if lease:
            lease.release()


def test_the_pool_and_a_rollout_survive_forged_runner_messages(cfg):
    with SandboxPool(max_workers=2, config=cfg) as pool:
        results = pool.map(FORGED + ["print(6 * 7)"] + FORGED)
        assert [r.status for r in results] == ["error", "error", "ok", "error", "error"]
        assert results[2].stdout == "42\n"
        tok = ByteTokenizer()
        script = {"Q: forge\n": [f"```python\n{FORGED[0]}\n```", " so \\boxed{1}."]}
        (tr,), _ = generate(ScriptedPolicy(tok, script), tok, [_Task("t0", "Q: forge\n")],
                            RolloutConfig(group_size=1, backend="recompute", seed=0), pool=pool,
                            prompts=list(script))
    assert tr.tool_calls[0].status == "error" and tr.finish_reason == "boxed"
    assert "bwrap: Can't mount proc" in tr.text


class _Task:
    def __init__(self, id: str, prompt: str):
        self.id, self.prompt, self.answer, self.meta = id, prompt, "1", {}


# ---------------------------------------------------------------------------------------------
# Nothing of the sandbox uid outlives the call, even a fork-then-exit chain under load


# A shell daemon that forks and exits at once, over and over (a link lives ~0.1 ms, far less than a
# pass over /proc), bounded (6 x 700 links). Each link appends a byte to $BEAT: if the file still
# grows after the call returned, part of the chain survived. (A /proc scan cannot be the witness:
# a fast chain is invisible to it, which is the bug.)
_CHAIN = ('n=0; x() { n=$((n+1)); [ $n -lt 700 ] || exec /bin/sh -c "$CHAIN" x $(($1 + 1));'
          ' printf . >> "$BEAT"; x & exit 0; }; [ "$1" -lt 6 ] && x')


def _chain_code(beat: str) -> str:
    return ("import os, subprocess\n"
            f"env = dict(os.environ, CHAIN={_CHAIN!r}, BEAT={beat!r})\n"
            "subprocess.Popen(['/bin/sh', '-c', env['CHAIN'], 'x', '0'], env=env,\n"
            "                 start_new_session=True).wait()\n"
            "print(os.getuid())\n")


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _kill_everything_of(uid: int):
    """Clean up after a failure: kill(-1, SIGKILL) as the sandbox uid, a few times."""
    assert uid >= 61000, uid  # never as root or a real user
    for _ in range(20):
        subprocess.run(["kill", "-9", "-1"], user=uid, group=uid, extra_groups=[],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.01)


def test_a_fork_then_exit_daemon_chain_does_not_outlive_the_call_under_load(cfg):
    if cfg.tier == "bubblewrap":
        pytest.skip("bubblewrap: the runner is PID 1 of its namespace; the kernel kills all in it")
    if not IS_ROOT:
        pytest.skip("rlimits tier as a normal user: the code runs as you, a daemon escapes (documented)")
    busy = [subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 10\n"
                              "while time.time() < end:\n    pass\n"]) for _ in range(3)]
    beats = tempfile.mkdtemp(prefix="tao_lab_beat_")
    os.chmod(beats, 0o777)  # the sandbox uid writes its heartbeat here
    try:
        for run in range(5):
            beat = os.path.join(beats, f"beat{run}")
            res = run_code(_chain_code(beat), config=replace(cfg, timeout_s=3, max_procs=2048))
            assert res.status == "ok", res.stderr
            uid, before = int(res.stdout), _size(beat)
            time.sleep(0.25)
            if _size(beat) != before:
                _kill_everything_of(uid)
                pytest.fail(f"run {run}: the chain outlived the call ({before} links before it returned,"
                            f" {_size(beat)} after)")
            assert before > 0  # the chain did start
    finally:
        for p in busy:
            p.kill()
            p.wait()
        shutil.rmtree(beats, ignore_errors=True)


def test_the_kill_helper_refuses_a_uid_that_is_not_a_sandbox_uid():
    for uid in (0, os.getuid() if not IS_ROOT else 1000):
        with pytest.raises(ValueError, match="not a sandbox uid"):
            kill_all_of(uid)


# ---------------------------------------------------------------------------------------------
# No new privileges, no new user namespaces


def test_the_code_runs_with_no_new_privs(cfg):
    code = "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('NoNewPrivs')][0])"
    res = run_code(code, config=cfg)
    assert (res.status, res.stdout) == ("ok", "1\n"), res.stderr


def test_the_code_cannot_create_a_user_namespace(cfg):
    code = (
        "import ctypes, os, subprocess\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "rc = libc.unshare(0x10000000)\n"  # CLONE_NEWUSER
        "print('unshare', rc, os.strerror(ctypes.get_errno()) if rc else '')\n"
        "pid = libc.syscall(56 if os.uname().machine == 'x86_64' else 220, 0x10000000 | 17, 0, 0, 0, 0)\n"
        "if pid == 0:\n"
        "    os._exit(0)\n"
        "print('clone', -1 if pid < 0 else 'child', os.strerror(ctypes.get_errno()) if pid < 0 else '')\n"
        "print('fork', subprocess.run(['true']).returncode)\n"  # ordinary processes still start
    )
    res = run_code(code, config=cfg)
    assert res.status == "ok", res.stderr
    assert _lines_of(res) == ["unshare -1 Operation not permitted", "clone -1 Operation not permitted",
                              "fork 0"]


# ---------------------------------------------------------------------------------------------
# The task files (gold answers) are out of the code's reach


def test_the_hidden_task_files_are_where_tasks_loads_them_from():
    assert os.path.realpath(tasks_module.DATA_DIR) in {os.path.realpath(p) for p in TASK_DATA_DIRS}
    assert SandboxConfig().hidden == tuple(sorted({os.path.realpath(p) for p in TASK_DATA_DIRS}))


def test_the_code_cannot_read_the_task_files(cfg):
    if cfg.tier == "rlimits" and not IS_ROOT:
        pytest.skip("rlimits tier as a normal user: only root can hide files (documented)")
    files = sorted(str(p) for d in TASK_DATA_DIRS for p in Path(d).glob("*.jsonl"))
    assert files, TASK_DATA_DIRS
    code = (
        "import glob, os\n"
        f"for d in {list(TASK_DATA_DIRS)!r}:\n"
        "    print('listed', len(glob.glob(os.path.join(d, '*'))))\n"
        f"for f in {files!r}:\n"
        "    try:\n"
        "        print('read', len(open(f).read()))\n"
        "    except OSError as e:\n"
        "        print('refused', type(e).__name__)\n"
    )
    res = run_code(code, config=cfg)
    assert res.status == "ok", res.stderr
    lines = _lines_of(res)
    assert lines[:len(TASK_DATA_DIRS)] == ["listed 0"] * len(TASK_DATA_DIRS)
    assert all(ln.startswith("refused ") for ln in lines[len(TASK_DATA_DIRS):]), lines
    assert '"answer"' not in res.stdout


def test_root_without_cap_sys_admin_still_runs_the_rlimits_tier_and_says_the_files_are_visible():
    # A default Docker container: root, but no CAP_SYS_ADMIN, so no mount namespace to hide with.
    from test_sandbox import _rlimits_config
    c = _rlimits_config()
    if not IS_ROOT or c is None or shutil.which("setpriv") is None:
        pytest.skip("needs root, the rlimits tier and setpriv (util-linux)")
    task_file = sorted(Path(TASK_DATA_DIRS[0]).glob("*.jsonl"))[0]
    code = f"print(len(open({str(task_file)!r}).read()) > 0)"
    script = ("from tao_lab.sandbox import SandboxConfig, run_code\n"
              f"res = run_code({code!r}, config=SandboxConfig(tier='rlimits', python={c.python!r}))\n"
              "print(res.status, res.stdout, end='')\n")
    out = subprocess.run(["setpriv", "--bounding-set", "-sys_admin", "--inh-caps", "-sys_admin",
                          sys.executable, "-W", "always", "-c", script], capture_output=True, text=True,
                         timeout=60, env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1])))
    assert out.stdout == "ok True\n", out.stderr
    assert "could not hide" in out.stderr and "SandboxWarning" in out.stderr


# ---------------------------------------------------------------------------------------------
# bubblewrap: /proc/self/mountinfo shows mount points, not where they come from on the host


def test_bubblewrap_mountinfo_shows_no_host_path_beyond_the_mount_points(cfg):
    if cfg.tier != "bubblewrap":
        pytest.skip("the rlimits tier has no mount namespace of its own to show")
    res = run_code("import os, time\nprint(open('/proc/self/mountinfo').read(), end='')\n"
                   "print('etc', sorted(os.listdir('/etc')) != [], time.localtime().tm_zone != '')",
                   config=cfg)
    assert res.status == "ok", res.stderr
    *mounts, etc = res.stdout.splitlines()
    host_fs = []
    for line in mounts:
        fields, fstype = line.split(" - ")[0].split(), line.split(" - ")[1].split()[0]
        root, point = fields[3], fields[4]
        if fstype not in ("tmpfs", "proc", "devtmpfs", "devpts", "mqueue") and root != point:
            host_fs.append((root, point))
    assert host_fs == []  # was [('/usr/share/zoneinfo/Etc/UTC', '/etc/localtime')]
    assert etc == "etc True True"  # /etc is listable and /etc/localtime still resolves


# ---------------------------------------------------------------------------------------------
# The http tier against a local service


class _Service(http.server.BaseHTTPRequestHandler):
    """A SandboxFusion-like /run_code whose behaviour the test picks through `server.mode`."""

    def do_POST(self):
        srv = self.server
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        srv.requests.append(req)
        try:
            if srv.mode == "down" or (srv.mode == "hang" and "6 * 7" not in req["code"]):
                if srv.mode == "hang":
                    srv.release.wait(10)  # bounded: the test sets it when done
                self.send_error(503)
                return
            if srv.mode == "drip" and "6 * 7" not in req["code"]:
                self._headers(10_000)
                for _ in range(200):  # 1 byte / 50 ms: each read is quick, the whole reply is not
                    if srv.release.wait(0.05):
                        return
                    self.wfile.write(b" ")
                    self.wfile.flush()
                return
            if srv.mode == "huge" and "6 * 7" not in req["code"]:
                head = (b'{"status": "Success", "run_result": '
                        b'{"status": "Finished", "return_code": 0, "stdout": "')
                self._headers(len(head) + len(srv.chunk) * 64 + 3)
                self.wfile.write(head)
                for _ in range(64):  # 64 MiB in all
                    self.wfile.write(srv.chunk)
                    srv.sent += len(srv.chunk)
                self.wfile.write(b'"}}')
                return
            body = json.dumps({"status": "Success", "run_result": {
                "status": "Finished", "return_code": 0, "stdout": "42\n", "stderr": ""}}).encode()
            self._headers(len(body))
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading: what a capped reply looks like from here

    def _headers(self, length: int):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(length))
        self.end_headers()

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def _service(mode: str):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Service)
    server.daemon_threads = True
    server.mode, server.requests, server.sent = mode, [], 0
    server.release, server.chunk = threading.Event(), b"x" * (1 << 20)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    stop = threading.Timer(60, server.shutdown)  # stops by itself even if the test hangs
    stop.start()
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.release.set()
        stop.cancel()
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_the_http_tier_caps_a_huge_reply_while_reading_it():
    with _service("huge") as (server, url):
        cfg = SandboxConfig(tier="http", http_url=url, max_output_bytes=4096)
        tier_status(cfg)  # probe first, outside the measurement
        tracemalloc.start()
        try:
            res = run_code("print('x' * 10 ** 9)", config=cfg)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert res.status == "error" and res.stdout_truncated and res.stderr_truncated
    assert "OutputLimitError" in res.stderr
    assert peak < 8 << 20, f"{peak / 2 ** 20:.0f} MiB held for a 64 MiB reply"
    assert server.sent < 32 << 20  # reading stopped long before the end


@pytest.mark.parametrize("mode", ["hang", "drip"])
def test_the_http_tier_gives_up_after_timeout_plus_grace(mode):
    with _service(mode) as (server, url):
        cfg = SandboxConfig(tier="http", http_url=url, timeout_s=0.5, http_grace_s=0.5)
        tier_status(cfg)
        t0 = time.monotonic()
        res = run_code("while True: pass", config=cfg)
        took = time.monotonic() - t0
    assert res.status == "timeout" and res.exit_code is None, res
    assert "did not answer within 0.5 + 0.5 s" in res.stderr
    assert 0.9 <= took < 2.0


def test_the_http_tier_sends_the_cpu_limit():
    with _service("ok") as (server, url):
        cfg = SandboxConfig(tier="http", http_url=url, timeout_s=2, cpu_s=7)
        assert run_code("print(6 * 7)", config=cfg).stdout == "42\n"
    assert server.requests[-1]["cpu_limit_s"] == 7 and server.requests[-1]["run_timeout"] == 2


def test_a_failed_http_probe_is_retried_after_a_while(monkeypatch):
    monkeypatch.setattr(pool_module, "_PROBE_RETRY_S", 0.3)
    with _service("down") as (server, url):
        cfg = SandboxConfig(tier="http", http_url=url, timeout_s=1)
        assert tier_status(cfg)["http"] != "ok"
        server.mode = "ok"
        assert tier_status(cfg)["http"] != "ok"  # not re-probed on every call
        n = len(server.requests)
        time.sleep(0.35)
        assert tier_status(cfg)["http"] == "ok"
        assert len(server.requests) == n + 1
        assert run_code("print(6 * 7)", config=cfg).stdout == "42\n"


# ---------------------------------------------------------------------------------------------
# Choosing the weak tier is said


def test_choosing_the_rlimits_tier_warns_once(monkeypatch):
    from test_sandbox import _rlimits_config
    c = _rlimits_config()
    if c is None:
        pytest.skip("rlimits tier unavailable here")
    monkeypatch.setattr(pool_module, "_warned_rlimits", False)
    with pytest.warns(SandboxWarning, match="network"):
        pool_module.resolve_tier(c)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pool_module.resolve_tier(c)  # said once per process, not per call
