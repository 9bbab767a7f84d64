# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · The tool sandbox
#
# In tool-integrated RL the policy writes Python, the rollout runs it, and the output goes back
# into the context as the next tokens. The code comes from a *sampled* model, so it is untrusted:
# it loops forever, allocates the machine's memory, forks, prints megabytes, or tries
# `os.system`. This notebook shows how `tao_lab.sandbox` runs it and how `tao_lab.toolcall`
# finds it in model text:
#
# 1. one call and its `ExecResult`;
# 2. the isolation tier in force here, and what each tier does **not** protect;
# 3. every limit tripping: timeout, memory, output cap, fork bomb, network;
# 4. the warm pool's throughput on a small batch;
# 5. both tool-call protocols parsed on realistic model text, with the observation the model sees.

# %%
import os
import socket
import time

import pandas as pd

from tao_lab.sandbox import TIER_CAVEATS, SandboxConfig, SandboxPool, resolve_tier, run_code, tier_status
from tao_lab.toolcall import (cut_after_call, find_tool_call, format_observation, is_valid_call,
                              is_void_turn, truncate_middle)

SMOKE = os.environ.get("TAO_LAB_SMOKE") == "1"  # headless test run: smaller batches
pd.set_option("display.max_colwidth", 90)

# %% [markdown]
# ## 1. One call, one `ExecResult`
#
# `run_code` starts a fresh interpreter in the sandbox, hands it the code on stdin and waits.
# Whatever the code does, the answer is an `ExecResult`; the code's failures never raise.

# %%
res = run_code("a, b = 123, 456\nprint(a * b)")
res

# %%
assert res.status == "ok" and res.stdout == "56088\n" and res.stderr == ""
print(f"ran on tier {res.tier!r} in {1000 * res.duration_s:.0f} ms")

# %% [markdown]
# An exception is a result with status `error`. The traceback names the line of the tool code;
# the *last* stderr line is what the model will be shown (section 5).

# %%
err = run_code("values = [3, 1, 2]\nprint(values[5])")
print(err.status, err.exit_code)
print(err.stderr)
assert err.status == "error" and err.stderr.strip().splitlines()[-1].startswith("IndexError")

# %% [markdown]
# ## 2. Which isolation runs here
#
# The sandbox picks the best tier that passes a probe call, and every result says which one ran.
#
# | tier | what it adds | what it does **not** protect |
# |---|---|---|
# | `bubblewrap` | new PID/network/IPC namespaces, read-only `/usr` + the Python install, private size-capped `/tmp` as working dir, no host home or repo (so no task files), everything dies with the call; plus the rlimits, NO_NEW_PRIVS and a seccomp filter that refuses new user namespaces | the host kernel (the filter is small), CPU share and disk bandwidth (no cgroup); the code can read the Python install and site-packages it is given |
# | `rlimits` | CPU, address space, file size, process count, core dumps off, scrubbed env, temp working dir, process-group kill; NO_NEW_PRIVS and the user-namespace filter (Linux). As root: a sandbox uid (everything of it killed after the call) and the task files hidden | **no network or filesystem isolation**: the code reads what its uid can -- as a normal user that includes **the task files with their gold answers** (`data/*.jsonl`, a reward-hacking path); it runs as *you* (signals your processes; a `setsid` daemon escapes). macOS: no memory cap. Choosing it warns (`SandboxWarning`) |
# | `http` | whatever the SandboxFusion-style service does | the service's trust boundary is yours to check |

# %%
status = tier_status()
tier = resolve_tier(SandboxConfig())
pd.DataFrame({"tier": list(status), "status": list(status.values())})

# %%
print("tier in force:", tier, "--", TIER_CAVEATS[tier])  # what it does not protect, in one line
assert tier in ("bubblewrap", "rlimits") and status[tier] == "ok" and res.tier == tier

# %% [markdown]
# ## 3. Each limit, tripped on purpose
#
# Limits live in one dataclass, `SandboxConfig`; any field can also be passed to `run_code` as a
# keyword. Below, each hostile program runs with a limit small enough to trip fast.

# %%
SandboxConfig()

# %%
listener = socket.socket()  # something to connect to on the host's loopback
listener.bind(("127.0.0.1", 0))
listener.listen(1)
port = listener.getsockname()[1]

fork_bomb = """
import os
n = 0
try:
    while True:
        if os.fork() == 0:
            os.execv('/bin/sleep', ['sleep', '30'])
        n += 1
except OSError as e:
    print('fork refused after', n, 'children:', type(e).__name__)
"""
hostile = {
    "infinite loop": ("while True:\n    pass", dict(timeout_s=1.0)),
    "memory bomb": ("x = bytearray(4 * 1024 ** 3)", dict(memory_mb=256)),
    "huge output": ("print('x' * 10_000_000)", dict(max_output_bytes=1000)),
    "fork bomb": (fork_bomb, dict(max_procs=8, timeout_s=5)),
    "network": (f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
                "print('connected')", {}),
}
rows = []
for case, (code, limits) in hostile.items():
    r = run_code(code, **limits)
    last_err = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""
    rows.append({"case": case, "limits": limits, "status": r.status, "stdout": r.stdout[:40],
                 "stdout_truncated": r.stdout_truncated, "last stderr line": last_err,
                 "seconds": round(r.duration_s, 2)})
listener.close()
limits_table = pd.DataFrame(rows).set_index("case")
limits_table

# %% [markdown]
# What to read in that table:
# - the loop is stopped at the wall-clock limit and its whole process tree is killed;
# - the allocation fails inside the interpreter (`RLIMIT_AS`), so the status is `memory`;
# - the huge print keeps its first 1000 bytes and sets `stdout_truncated`;
# - the fork bomb hits `RLIMIT_NPROC` after a handful of children (which die with the call);
# - the connection fails under bubblewrap (its own network namespace has no route to the host);
#   the rlimits tier has no network isolation, so there it connects -- the table shows it honestly.

# %%
t = limits_table
assert t.loc["infinite loop", "status"] == "timeout" and t.loc["infinite loop", "seconds"] < 2
assert t.loc["memory bomb", "status"] == "memory"
assert t.loc["huge output", "status"] == "ok" and t.loc["huge output", "stdout_truncated"]
assert t.loc["fork bomb", "status"] == "ok" and "fork refused" in t.loc["fork bomb", "stdout"]
if tier == "bubblewrap":
    assert t.loc["network", "status"] == "error" and t.loc["network", "stdout"] == ""

# %% [markdown]
# ## 4. The pool: many rollouts' calls at once
#
# During a rollout, G × tasks episodes call the tool concurrently. `SandboxPool` is a bounded pool
# whose workers each keep one interpreter already started and waiting for code on stdin, so a call
# pays only for the code. `map` keeps the order of its inputs.

# %%
n_calls = 24 if SMOKE else 120
with SandboxPool(max_workers=4) as pool:
    pool.map(["pass"] * 4)  # every worker now has its next interpreter waiting
    t0 = time.perf_counter()
    results = pool.map([f"print({i} ** 2)" for i in range(n_calls)])
    elapsed = time.perf_counter() - t0
    stats = dict(pool.stats)
print(f"{n_calls} calls in {elapsed:.2f} s = {n_calls / elapsed:.0f} calls/s on {os.cpu_count()} cores;"
      f" pool stats: {stats}")
assert [r.stdout for r in results] == [f"{i ** 2}\n" for i in range(n_calls)]
assert stats.get("cold_starts", 0) == 0

# %% [markdown]
# `benchmarks/sandbox_throughput.py` measures this properly (per tier, cold vs warm, p50/p95).
#
# ## 5. Finding tool calls in model text
#
# Two protocols (METHODS.md §0). **Fenced** (SimpleTIR, TAO-RL): a block opened by three
# backticks and `python`, `py` or nothing, closed by a line holding only three backticks. Here is
# what a small model writes; note the inline `code`, and that it goes on to invent its own result
# after the block -- `cut_after_call` ends the turn at the closing fence, so that invention is
# dropped and the sandbox's real output replaces it.

# %%
FENCE = "`" * 3
model_text = (
    "We need 347 × 829. Doing it by hand is error-prone, so I'll use `python` to multiply.\n"
    f"{FENCE}python\n"
    "a = 347\n"
    "b = 829\n"
    "print(a * b)\n"
    f"{FENCE}\n"
    "Code execution result: 287000\n"  # the model's own guess, never shown back to it
    "So the answer is \\boxed{287000}."
)
call = find_tool_call(model_text, "fenced")
call

# %%
turn = cut_after_call(model_text, "fenced")
out = run_code(call.code)
observation = format_observation(out, "fenced")
print(turn + observation)
assert turn.endswith(FENCE) and "287000" not in turn
assert observation == "\nCode execution result: 287663\n" and is_valid_call(out)

# %% [markdown]
# **Tags** (ARPO, ET-Agent, Tool-Star): `<python>...</python>`, answered by
# `<result>...</result>`. An unfinished call is not a call yet: the rollout keeps generating.

# %%
partial = "<think>Sum the squares.</think>\n<python>\nprint(sum(i * i for i in range(1, 101)))\n"
assert find_tool_call(partial, "tags") is None
tagged = partial + "</python>"
call = find_tool_call(tagged, "tags")
out = run_code(call.code)
print(tagged + format_observation(out, "tags"))
assert format_observation(out, "tags") == "\n<result>\n338350\n</result>\n"

# %% [markdown]
# What the model sees when things go wrong: the **last stderr line** only, and long output is cut
# in the middle (head + `...` + tail, 512 characters by default). A call is *valid* (TAO-RL's tool
# success) iff stderr is empty and stdout is not -- so code that prints nothing counts as failed
# unless `silent_is_failure=False`.

# %%
cases = {
    "exception": "import math\nprint(math.sqrt(-1))",
    "prints nothing": "x = 2 ** 10",
    "long output": "print(list(range(2000)))",
    "timeout": "while True:\n    pass",
}
obs_rows = []
for case, code in cases.items():
    r = run_code(code, timeout_s=1.0)
    obs_rows.append({"case": case, "status": r.status, "valid": is_valid_call(r),
                     "valid if silence is ok": is_valid_call(r, silent_is_failure=False),
                     "observation": format_observation(r, "fenced", max_chars=80)})
obs_table = pd.DataFrame(obs_rows).set_index("case")
obs_table

# %%
o = obs_table
assert o.loc["exception", "observation"] == "\nCode execution result: ValueError: math domain error\n"
assert not o.loc["prints nothing", "valid"] and o.loc["prints nothing", "valid if silence is ok"]
assert " ... " in o.loc["long output", "observation"] and o.loc["long output", "valid"]
assert o.loc["timeout", "status"] == "timeout" and not o.loc["timeout", "valid"]
assert truncate_middle("abcdefghij" * 10, 15) == "abcde ... fghij"

# %% [markdown]
# Finally, a **void turn** -- neither a complete call nor `\boxed{` -- ends the episode in
# SimpleTIR / TAO-RL (and its loss is masked). Code in another language is not a call.

# %%
turns = {
    "prose only": "Let me think about this more carefully.",
    "bash block": f"{FENCE}bash\necho hi\n{FENCE}",
    "unclosed call": f"{FENCE}python\nprint(1)\n",
    "boxed answer": "The product is \\boxed{287663}.",
    "complete call": f"{FENCE}py\nprint(1)\n{FENCE}",
}
void = {name: is_void_turn(text, "fenced") for name, text in turns.items()}
void

# %%
assert void == {"prose only": True, "bash block": True, "unclosed call": True,
                "boxed answer": False, "complete call": False}

# %% [markdown]
# ## Where this goes next
#
# `tao_lab.rollout.generate` does exactly the above inside batched generation: it cuts each turn
# at its first complete call, submits the code to a `SandboxPool`, appends
# `format_observation(...)` as forced tokens (mask 0), and records `is_valid_call` per call -- the
# signal TAO-RL's Filter A reads. Notebook 02 looks at those rollouts.
