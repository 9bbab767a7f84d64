"""The http tier: a client for a SandboxFusion-style service (POST {http_url}/run_code).

One deadline, `timeout_s + http_grace_s` from the start of the call, bounds connecting, sending and
every read, so a service that hangs, or drips its reply a byte at a time, costs the call at most
that. The reply is read in pieces and reading stops at `reply_cap(cfg)` bytes, so a huge reply
costs that much memory, not its size. The request carries the call's limits: `run_timeout`,
`memory_limit_MB` (SandboxFusion's fields) and `cpu_limit_s` (not a SandboxFusion field: it ignores
it; a service of your own may honour it).
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.parse

from .common import ExecResult, SandboxConfig, SandboxError, last_line


def reply_cap(cfg: SandboxConfig) -> int:
    """Largest reply read: both streams at their cap, each char JSON-escaped (`\\uXXXX`, 6 bytes),
    plus room for the other fields."""
    return 12 * cfg.max_output_bytes + 65_536


class _Deadline(Exception):
    """The service did not answer in full before the call's deadline."""


def _post(cfg: SandboxConfig, body: bytes, deadline: float) -> bytes | None:
    """POST the request and read the reply; None if it grew past reply_cap (reading stopped)."""
    url = urllib.parse.urlsplit(cfg.http_url.rstrip("/") + "/run_code")
    cls = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection

    def left() -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Deadline
        return remaining

    conn = cls(url.hostname, url.port, timeout=left())
    try:
        conn.request("POST", url.path, body=body, headers={"Content-Type": "application/json"})
        sock = conn.sock  # (the connection drops it once the reply is known to close; we keep it)
        sock.settimeout(left())
        resp = conn.getresponse()
        if resp.status != 200:
            raise SandboxError(f"sandbox service at {cfg.http_url} answered HTTP {resp.status} {resp.reason}")
        cap, parts, size = reply_cap(cfg), [], 0
        while True:
            sock.settimeout(left())  # one deadline for every read, not a timeout per read
            chunk = resp.read1(65_536)
            if not chunk:
                return b"".join(parts)
            size += len(chunk)
            if size > cap:
                return None
            parts.append(chunk)
    except (socket.timeout, TimeoutError) as e:
        raise _Deadline from e
    finally:
        conn.close()


def run_http(code: str, cfg: SandboxConfig) -> ExecResult:
    body = json.dumps({"code": code, "language": "python", "run_timeout": cfg.timeout_s,
                       "memory_limit_MB": cfg.memory_mb, "cpu_limit_s": cfg.cpu_limit_s}).encode()
    start = time.monotonic()
    try:
        raw = _post(cfg, body, start + cfg.timeout_s + cfg.http_grace_s)
    except _Deadline:
        note = (f"TimeoutError: the sandbox service at {cfg.http_url} did not answer within"
                f" {cfg.timeout_s:g} + {cfg.http_grace_s:g} s; the call was abandoned\n")
        return ExecResult("timeout", "", note, time.monotonic() - start, "http", None, False, False)
    except (OSError, http.client.HTTPException) as e:
        raise SandboxError(f"sandbox service at {cfg.http_url} did not answer /run_code: {e}. "
                           "Start the service or use tier='auto'") from e
    duration = time.monotonic() - start
    if raw is None:
        note = (f"OutputLimitError: the sandbox service's reply exceeded {reply_cap(cfg)} bytes;"
                " reading stopped and the reply was dropped\n")
        return ExecResult("error", "", note, duration, "http", None, True, True)
    try:
        reply = json.loads(raw.decode("utf-8", "replace"))
    except ValueError as e:
        raise SandboxError(f"sandbox service at {cfg.http_url} sent no JSON: {raw[:300]!r}") from e
    return _from_reply(reply, cfg, duration)


def _from_reply(reply, cfg: SandboxConfig, duration: float) -> ExecResult:
    run = reply.get("run_result") if isinstance(reply, dict) else None
    if not isinstance(run, dict):
        raise SandboxError(f"sandbox service at {cfg.http_url} returned no run_result: {reply!r:.300}")
    cap = cfg.max_output_bytes
    out_b = str(run.get("stdout") or "").encode("utf-8", "replace")
    err_b = str(run.get("stderr") or "").encode("utf-8", "replace")
    out, err = out_b[:cap].decode("utf-8", "replace"), err_b[:cap].decode("utf-8", "replace")
    rc = run.get("return_code")
    if run.get("status") == "TimeLimitExceeded":
        status, rc = "timeout", None
        err += f"TimeoutError: the code ran longer than {cfg.timeout_s:g} s and was stopped\n"
    elif rc == 0:
        status = "ok"
    elif last_line(err).split(":", 1)[0].endswith("MemoryError"):
        status = "memory"
    elif isinstance(rc, int) and rc < 0:
        status = "killed"
    else:
        status = "error"
    return ExecResult(status, out, err, duration, "http",
                      rc if isinstance(rc, int) else None, len(out_b) > cap, len(err_b) > cap)
