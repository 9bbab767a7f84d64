"""Run a notebook headless, the way `make test` does: one kernel, the smoke-size env, the notebook's
own asserts as the checks, and a per-cell timing line in the test output."""

from __future__ import annotations

import time
from pathlib import Path
from queue import Empty

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


# Work-around for jupyter/nbclient#312 (open): after a cell that sends many widget messages, the
# asyncio wake-up for the execute_reply on the shell socket is sometimes missed; the reply sits in
# the socket until nbclient's poll times out (600 s here; we saw it in about 1 run in 3 of
# notebook 04's panel cells). Polling the shell socket in 1 s slices picks the reply up within a
# second. Only the waiting changes: same messages, same timeout overall.
def _sliced_client_class():
    from jupyter_client.asynchronous import AsyncKernelClient
    from jupyter_client.channels import AsyncZMQSocketChannel
    from traitlets import Type

    class SlicedShellChannel(AsyncZMQSocketChannel):
        async def get_msg(self, timeout=None):
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                left = 1.0 if deadline is None else min(1.0, max(0.0, deadline - time.monotonic()))
                try:
                    return await super().get_msg(timeout=left)
                except Empty:
                    if deadline is not None and time.monotonic() >= deadline:
                        raise

    class SlicedClient(AsyncKernelClient):
        shell_channel_class = Type(SlicedShellChannel)

    return SlicedClient


def _kernel_manager_class():
    from jupyter_client import AsyncKernelManager
    from traitlets import default

    class Manager(AsyncKernelManager):
        @default("client_factory")
        def _client_factory_default(self):
            return _sliced_client_class()

    return Manager


def execute_notebook(name: str, monkeypatch, env: dict[str, str] | None = None, timeout: int = 600):
    """Execute notebooks/<name>.ipynb with TAO_LAB_SMOKE=1 (plus `env`); returns the executed notebook.

    The environment is set through pytest's monkeypatch, so the kernel inherits it and the test
    process gets its own back afterwards.
    """
    import nbclient
    import nbformat

    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    for k, v in {"TAO_LAB_SMOKE": "1", **(env or {})}.items():
        monkeypatch.setenv(k, v)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=timeout,
                                     kernel_manager_class=_kernel_manager_class(),
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    started: dict[int, float] = {}
    took: list[tuple[float, int]] = []
    client.on_cell_execute = lambda cell, cell_index: started.__setitem__(cell_index, time.perf_counter())
    client.on_cell_executed = lambda cell, cell_index, execute_reply: took.append(
        (time.perf_counter() - started.get(cell_index, time.perf_counter()), cell_index))
    t = time.perf_counter()
    client.execute()
    slow = ", ".join(f"cell {i}: {s:.0f} s" for s, i in sorted(took, reverse=True)[:3])
    print(f"{name}: {time.perf_counter() - t:.0f} s in all; slowest {slow}")
    return nb


def html_outputs(nb) -> str:
    """All text/html the executed notebook displayed, joined."""
    return "".join(o.get("data", {}).get("text/html", "") for c in nb.cells for o in c.get("outputs", []))
