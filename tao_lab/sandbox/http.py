"""The http tier: a client for a SandboxFusion-style service (POST {http_url}/run_code)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from .common import ExecResult, SandboxConfig, SandboxError, last_line


def run_http(code: str, cfg: SandboxConfig) -> ExecResult:
    body = json.dumps({"code": code, "language": "python", "run_timeout": cfg.timeout_s,
                       "memory_limit_MB": cfg.memory_mb}).encode()
    req = urllib.request.Request(cfg.http_url.rstrip("/") + "/run_code", data=body,
                                 headers={"Content-Type": "application/json"})
    start = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=cfg.timeout_s + 30) as resp:
            reply = json.loads(resp.read().decode("utf-8", "replace"))
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise SandboxError(f"sandbox service at {cfg.http_url} did not answer /run_code: {e}. "
                           "Start the service or use tier='auto'") from e
    duration = time.monotonic() - start
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
