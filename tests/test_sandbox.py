"""The sandbox against one hostile or broken program per class, on every tier that works here.

Each test runs on each local tier (bubblewrap, rlimits) that passes its probe; a tier that cannot run
here is skipped with the probe's reason. As root, the rlimits tier needs an interpreter the
unprivileged sandbox uid can read: when the workbench's own Python lives in a private home (pyenv in
/root), the suite uses the system Python for that tier (same stdlib API; the venv's site-packages is
still added). Assertions that only bubblewrap can honour are skipped on the rlimits tier with the
reason stated.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from tao_lab.sandbox import (ExecResult, SandboxConfig, SandboxError, SandboxPool, available_tiers,
                             run_code, tier_status)

REPO = Path(__file__).resolve().parents[1]
IS_ROOT = os.geteuid() == 0


def _rlimits_config() -> SandboxConfig | None:
    cfg = SandboxConfig(tier="rlimits", timeout_s=1.5)
    if tier_status(cfg)["rlimits"] == "ok":
        return cfg
    system_python = shutil.which("python3", path="/usr/bin:/bin")
    if IS_ROOT and system_python:
        cfg = replace(cfg, python=system_python)
        if tier_status(cfg)["rlimits"] == "ok":
            return cfg
    return None


@pytest.fixture(params=["bubblewrap", "rlimits"], scope="module")
def cfg(request) -> SandboxConfig:
    if request.param == "bubblewrap":
        c = SandboxConfig(tier="bubblewrap", timeout_s=1.5)
        why = tier_status(c)["bubblewrap"]
        if why != "ok":
            pytest.skip(f"bubblewrap tier unavailable: {why}")
        return c
    c = _rlimits_config()
    if c is None:
        pytest.skip(f"rlimits tier unavailable: {tier_status(SandboxConfig())['rlimits']}")
    return c


def _needs_bwrap_or_root(cfg: SandboxConfig, what: str):
    if cfg.tier == "rlimits" and not IS_ROOT:
        pytest.skip(f"rlimits tier as a normal user: the code runs as you, so {what}")


def _needs_bwrap(cfg: SandboxConfig, what: str):
    if cfg.tier == "rlimits":
        pytest.skip(f"the rlimits tier has no namespaces: {what}")


def _processes_with(marker: str) -> list[int]:
    """Live processes whose command line contains `marker`."""
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{name}/cmdline").read_bytes():
                    pids.append(int(name))
            except OSError:
                continue
    return pids


def _my_children() -> list[int]:
    me = str(os.getpid())
    kids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if fields[1] == me and fields[0] != "Z":  # (state, ppid, ...)
                kids.append(int(name))
    return kids


def _last_line(text: str) -> str:
    return [ln for ln in text.splitlines() if ln.strip()][-1]


# ---------------------------------------------------------------------------------------------
# Ordinary programs


def test_a_print_returns_ok_with_its_stdout_and_the_tier(cfg):
    res = run_code("print(1 + 1)", config=cfg)
    assert isinstance(res, ExecResult)
    assert (res.status, res.stdout, res.stderr, res.exit_code, res.tier) == ("ok", "2\n", "", 0, cfg.tier)


def test_an_exception_is_an_error_with_the_traceback_last_line_in_stderr(cfg):
    res = run_code("x = 1\ny = x / 0\n", config=cfg)
    assert res.status == "error" and res.exit_code == 1
    assert _last_line(res.stderr) == "ZeroDivisionError: division by zero"
    assert 'File "<tool>", line 2' in res.stderr and "y = x / 0" in res.stderr


def test_a_syntax_error_is_an_error(cfg):
    res = run_code("print(1", config=cfg)
    assert res.status == "error"
    assert _last_line(res.stderr).startswith("SyntaxError:")


def test_sys_exit_codes_are_kept(cfg):
    assert run_code("import sys; print('a'); sys.exit(0)", config=cfg).status == "ok"
    res = run_code("import sys; sys.exit(3)", config=cfg)
    assert (res.status, res.exit_code) == ("error", 3)


def test_input_sees_end_of_file_instead_of_hanging(cfg):
    res = run_code("input()", config=cfg)
    assert res.status == "error" and _last_line(res.stderr).startswith("EOFError")


def test_site_packages_are_importable(cfg):
    res = run_code("import numpy, sympy\nprint(int(numpy.arange(4).sum()), sympy.factorint(360))",
                   config=replace(cfg, timeout_s=10))
    assert res.status == "ok", res.stderr
    assert res.stdout == "6 {2: 3, 3: 2, 5: 1}\n"


def test_non_utf8_output_is_decoded_with_replacement(cfg):
    res = run_code("import sys; sys.stdout.buffer.write(b'caf\\xe9 \\xff ok\\n')", config=cfg)
    assert res.status == "ok"
    assert res.stdout == "caf\ufffd \ufffd ok\n"


# ---------------------------------------------------------------------------------------------
# Limits


def test_an_infinite_loop_times_out_and_leaves_no_process(cfg):
    marker = f"{time.time() % 1000:.6f}"
    code = f"import subprocess\nsubprocess.Popen(['sleep', '{marker}'])\nwhile True:\n    pass\n"
    before = set(_my_children())  # long-lived children of earlier tests (e.g. the verifier process)
    t0 = time.monotonic()
    res = run_code(code, config=cfg)
    assert res.status == "timeout" and res.exit_code is None
    assert cfg.timeout_s <= res.duration_s < cfg.timeout_s + 0.5
    assert time.monotonic() - t0 < cfg.timeout_s + 2
    assert "TimeoutError" in _last_line(res.stderr)
    assert _processes_with(marker) == [] and set(_my_children()) - before == set()


def test_a_memory_bomb_is_a_memory_status(cfg):
    res = run_code("x = bytearray(8 * 1024 ** 3)", config=replace(cfg, memory_mb=256))
    assert res.status == "memory"
    assert _last_line(res.stderr) == "MemoryError"


def test_a_growing_memory_bomb_is_stopped_at_the_cap(cfg):
    code = "chunks = []\nwhile True:\n    chunks.append(bytearray(32 * 1024 ** 2))\n"
    res = run_code(code, config=replace(cfg, memory_mb=256, timeout_s=5))
    assert res.status == "memory", res.stderr


def test_a_fork_bomb_is_capped_and_its_children_are_killed(cfg):
    marker = f"{time.time() % 1000:.6f}"
    code = (
        "import os\n"
        "n = 0\n"
        "try:\n"
        "    while True:\n"
        "        if os.fork() == 0:\n"
        f"            os.execv('/bin/sleep', ['sleep', '{marker}'])\n"
        "        n += 1\n"
        "except OSError as e:\n"
        "    print('refused after', n, type(e).__name__)\n"
    )
    res = run_code(code, config=replace(cfg, max_procs=16, timeout_s=5))
    assert res.status == "ok", res.stderr
    words = res.stdout.split()
    assert words[:2] == ["refused", "after"] and words[3] == "BlockingIOError"
    assert int(words[2]) <= 16
    deadline = time.monotonic() + 2
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_with(marker) == []


def test_enormous_output_is_capped_with_the_head_kept(cfg):
    res = run_code("print('a' * 100 + 'x' * 10_000_000)", config=replace(cfg, max_output_bytes=4096))
    assert res.status == "ok" and res.stdout_truncated and not res.stderr_truncated
    assert res.stdout == "a" * 100 + "x" * (4096 - 100)


def test_endless_output_times_out_with_a_capped_buffer(cfg):
    code = "import sys\nwhile True:\n    print('y' * 1000)\n    sys.stderr.write('e' * 1000)\n"
    res = run_code(code, config=replace(cfg, max_output_bytes=2048, timeout_s=1))
    assert res.status == "timeout" and res.stdout_truncated and res.stderr_truncated
    assert len(res.stdout) == 2048 and "TimeoutError" in _last_line(res.stderr)


def test_a_big_file_is_refused(cfg):
    code = "open('big.bin', 'wb').write(b'0' * (8 * 1024 ** 2))"
    res = run_code(code, config=replace(cfg, max_file_mb=1))
    assert res.status == "error"
    assert "File too large" in res.stderr or "No space left" in res.stderr


# ---------------------------------------------------------------------------------------------
# Containment


def test_the_code_never_runs_as_root(cfg):
    res = run_code("import os; print(os.getuid(), os.geteuid())", config=cfg)
    assert res.status == "ok"
    assert "0" not in res.stdout.split() or not IS_ROOT


def test_writes_outside_the_private_temp_dir_do_not_reach_the_host(cfg):
    _needs_bwrap_or_root(cfg, "it may write wherever you may")
    token = f"tao_lab_write_{uuid.uuid4().hex}"
    targets = [f"/etc/{token}", str(Path.home() / token), str(REPO / token), str(REPO / "tao_lab" / token)]
    code = (
        "import os\n"
        f"for path in {targets!r} + ['{token}']:\n"
        "    try:\n"
        "        open(path, 'w').write('pwned')\n"
        "        print('wrote', path)\n"
        "    except OSError as e:\n"
        "        print('refused', path, type(e).__name__)\n"
    )
    try:
        res = run_code(code, config=cfg)
        assert res.status == "ok", res.stderr
        assert f"wrote {token}" in res.stdout  # the working dir is writable
        assert [p for p in targets if Path(p).exists()] == []
    finally:
        for p in targets:
            Path(p).unlink(missing_ok=True)


def test_the_private_temp_dir_is_not_the_host_tmp(cfg):
    _needs_bwrap(cfg, "/tmp is the host's /tmp there")
    token = f"tao_lab_tmp_{uuid.uuid4().hex}"
    res = run_code(f"open('/tmp/{token}', 'w').write('x')\nimport os\nprint(os.getcwd())", config=cfg)
    assert res.status == "ok" and res.stdout == "/tmp\n"
    assert not Path(f"/tmp/{token}").exists()


def test_an_interpreter_under_host_tmp_still_runs_and_the_rest_of_host_tmp_stays_hidden(tmp_path_factory):
    # A CI clone in /tmp/x has its venv there; the private /tmp must not hide it.
    import subprocess
    import sys

    base = tmp_path_factory.mktemp("venv_in_tmp")
    if not str(base).startswith("/tmp/"):
        pytest.skip(f"pytest's temp dir is not under /tmp here: {base}")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(base / "venv")], check=True)
    (base / "host_secret.txt").write_text("hunter2")
    c = SandboxConfig(tier="bubblewrap", timeout_s=5.0, python=str(base / "venv" / "bin" / "python"),
                      site_packages=False)
    why = tier_status(SandboxConfig(tier="bubblewrap"))["bubblewrap"]
    if why != "ok":
        pytest.skip(f"bubblewrap tier unavailable: {why}")
    assert tier_status(c)["bubblewrap"] == "ok"
    res = run_code("import os, sys\nprint(sys.executable)\n"
                   f"print(os.path.exists({str(base / 'host_secret.txt')!r}))", config=c)
    assert res.status == "ok", res.stderr
    assert res.stdout == f"{base / 'venv' / 'bin' / 'python'}\nFalse\n"


def test_environment_secrets_do_not_reach_the_code(cfg, monkeypatch):
    monkeypatch.setenv("TAO_LAB_SECRET", "hunter2")
    res = run_code("import os; print(os.environ.get('TAO_LAB_SECRET'), 'HOME' in os.environ)", config=cfg)
    assert res.status == "ok" and res.stdout == "None True\n"


def test_a_file_in_the_host_home_cannot_be_read(cfg):
    _needs_bwrap_or_root(cfg, "it can read your home")
    secret = Path.home() / f".tao_lab_secret_{uuid.uuid4().hex}"
    secret.write_text("hunter2")
    secret.chmod(0o600)
    try:
        res = run_code(f"print(open({str(secret)!r}).read())", config=cfg)
    finally:
        secret.unlink()
    assert res.status == "error" and "hunter2" not in res.stdout
    assert _last_line(res.stderr).split(":")[0] in ("FileNotFoundError", "PermissionError")


def test_network_connections_fail(cfg):
    _needs_bwrap(cfg, "there is no network isolation")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        res = run_code(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
                       "print('connected')", config=cfg)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody reached the host's loopback
    finally:
        listener.close()
    assert res.status == "error" and "connected" not in res.stdout
    assert _last_line(res.stderr).startswith(("ConnectionRefusedError", "OSError"))


def test_killing_the_parent_does_not_kill_the_caller(cfg):
    _needs_bwrap_or_root(cfg, "it may signal your processes")
    code = (
        "import os, signal\n"
        f"for pid in (os.getppid(), {os.getpid()}):\n"
        "    try:\n"
        "        os.kill(pid, signal.SIGKILL)\n"
        "    except OSError as e:\n"
        "        print('refused', type(e).__name__)\n"
    )
    res = run_code(code, config=cfg)
    assert res.status in ("ok", "killed")  # alive to assert this: the caller survived


def test_background_processes_do_not_outlive_the_call(cfg):
    _needs_bwrap_or_root(cfg, "a setsid daemon escapes the process-group kill")
    m1, m2 = f"{time.time() % 1000:.6f}1", f"{time.time() % 1000:.6f}2"
    code = (
        "import os, subprocess\n"
        f"subprocess.Popen(['sleep', '{m1}'], start_new_session=True)\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        os.execv('/bin/sleep', ['sleep', '{m2}'])\n"
        "    os._exit(0)\n"
        "print('spawned')\n"
    )
    res = run_code(code, config=cfg)
    assert res.status == "ok" and res.stdout == "spawned\n", res.stderr
    assert _processes_with(m1) == [] and _processes_with(m2) == []


def test_an_interpreter_abort_is_killed(cfg):
    res = run_code("import os; os.abort()", config=cfg)
    assert res.status == "killed" and res.exit_code is None
    assert _last_line(res.stderr).startswith("Killed by signal SIG")


def test_a_segfault_is_killed(cfg):
    res = run_code("import ctypes; ctypes.string_at(0)", config=cfg)
    assert res.status == "killed"
    assert _last_line(res.stderr) == "Killed by signal SIGSEGV"


def test_closing_stdout_does_not_defeat_the_timeout(cfg):
    res = run_code("import os\nprint('hi', flush=True)\nos.close(1); os.close(2)\nwhile True:\n    pass",
                   config=replace(cfg, timeout_s=1))
    assert res.status == "timeout" and res.stdout == "hi\n"


# ---------------------------------------------------------------------------------------------
# The pool


def test_pool_map_keeps_order_and_workers_warm(cfg):
    with SandboxPool(max_workers=3, config=cfg) as pool:
        results = pool.map([f"print({i} * {i})" for i in range(24)])
        assert [r.stdout for r in results] == [f"{i * i}\n" for i in range(24)]
        assert pool.stats["ok"] == 24 and pool.stats["cold_starts"] == 0
        assert {r.tier for r in results} == {cfg.tier}


def test_a_hung_call_does_not_block_the_other_workers(cfg):
    with SandboxPool(max_workers=2, config=replace(cfg, timeout_s=2)) as pool:
        slow = pool.submit("while True:\n    pass")
        t0 = time.monotonic()
        fast = [pool.submit("print('fast')").result() for _ in range(5)]
        assert time.monotonic() - t0 < 1.5 and all(r.stdout == "fast\n" for r in fast)
        assert slow.result().status == "timeout"


def test_closing_the_pool_stops_its_waiting_interpreters(cfg):
    before = set(_my_children())  # long-lived children of earlier tests (e.g. the verifier process)
    pool = SandboxPool(max_workers=2, config=cfg)
    pool.map(["print(1)"] * 4)
    assert len(set(_my_children()) - before) >= 2
    pool.close()
    assert set(_my_children()) - before == set()


# ---------------------------------------------------------------------------------------------
# Configuration, tier selection and the HTTP tier


def test_a_bad_tier_name_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="bubblewrap"):
        SandboxConfig(tier="docker")
    with pytest.raises(ValueError, match="http_url"):
        SandboxConfig(tier="http")


def test_auto_picks_the_best_available_tier():
    tiers = available_tiers()
    assert tiers, tier_status()
    assert run_code("print(1)").tier == tiers[0]


class _FakeSandboxFusion(http.server.BaseHTTPRequestHandler):
    """Answers /run_code like SandboxFusion would, from a tiny table keyed by the code."""

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        code = req["code"]
        if "while True" in code:
            run = {"status": "TimeLimitExceeded", "return_code": None, "stdout": "", "stderr": ""}
        elif "1/0" in code:
            run = {"status": "Finished", "return_code": 1, "stdout": "",
                   "stderr": "Traceback (most recent call last):\nZeroDivisionError: division by zero\n"}
        else:
            run = {"status": "Finished", "return_code": 0, "stdout": "42\n", "stderr": ""}
        body = json.dumps({"status": "Success", "run_result": dict(run, execution_time=0.01)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_the_http_tier_maps_a_sandboxfusion_reply():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeSandboxFusion)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cfg = SandboxConfig(tier="http", http_url=f"http://127.0.0.1:{server.server_address[1]}")
        ok = run_code("print(6 * 7)", config=cfg)
        assert (ok.status, ok.stdout, ok.tier) == ("ok", "42\n", "http")
        err = run_code("1/0", config=cfg)
        assert err.status == "error" and _last_line(err.stderr).startswith("ZeroDivisionError")
        assert run_code("while True: pass", config=cfg).status == "timeout"
    finally:
        server.shutdown()


def test_the_http_tier_without_a_server_raises_a_sandbox_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    cfg = SandboxConfig(tier="http", http_url=f"http://127.0.0.1:{port}", timeout_s=1)
    assert tier_status(cfg)["http"] != "ok"
    with pytest.raises(SandboxError, match="did not answer"):
        run_code("print(1)", config=cfg)


def test_under_bubblewrap_only_the_capped_private_dirs_are_writable(cfg):
    _needs_bwrap(cfg, "the filesystem is the host's")
    code = (
        "for d in ('/', '/etc', '/dev', '/usr', '/tmp', '/dev/shm'):\n"
        "    n = 0\n"
        "    try:\n"
        "        for n in range(1, 9):\n"
        "            open(f'{d}/f{n}', 'wb').write(b'0' * 1024 ** 2)\n"
        "        print(d, 'filled')\n"
        "    except OSError as e:\n"
        "        print(d, n - 1, e.strerror)\n"
    )
    res = run_code(code, config=replace(cfg, max_file_mb=2))
    lines = dict(line.split(" ", 1) for line in res.stdout.splitlines())
    assert [d for d, what in lines.items() if what.startswith("0 ")] == ["/", "/etc", "/dev", "/usr"]
    assert lines["/tmp"].startswith(("1 No space", "2 No space"))
    assert lines["/dev/shm"].startswith(("1 No space", "2 No space"))


def test_the_cpu_limit_stops_a_busy_loop_as_a_timeout(cfg):
    res = run_code("while True:\n    pass", config=replace(cfg, cpu_s=1, timeout_s=10))
    assert res.status == "timeout" and res.duration_s < 5
    assert "CPU time" in _last_line(res.stderr)
