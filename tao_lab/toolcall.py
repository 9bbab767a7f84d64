"""Find a tool call in model text and format the tool's answer, for both protocols of METHODS.md §0.

Pure text functions, no I/O: the rollout calls `find_tool_call` on a turn's text, cuts the turn with
`cut_after_call`, runs the code in the sandbox, and appends `format_observation(result)` as forced
(mask 0) tokens.

Protocols
  ``fenced`` (SimpleTIR / TAO-RL): a block opened by three backticks followed by `python`, `py` or
      nothing, then a newline; closed by a line that holds only three backticks. Observation:
      ``"\\nCode execution result: <obs>\\n"``.
  ``tags`` (ARPO / ET-Agent / Tool-Star): ``<python>...</python>`` (no attributes). Observation:
      ``"\\n<result>\\n<obs>\\n</result>\\n"``.

Decisions, each tested in tests/test_toolcall.py
  - Only a *complete* call counts: an opening fence or ``<python>`` with no closing is not a call
    yet (the rollout keeps generating). The first complete call wins; one call per turn.
  - Fenced: the opening fence may follow text on the same line (as the authors' regex allows);
    the closing fence must start its own line (leading spaces allowed) and nothing but spaces may
    follow it. A closing fence glued to the last code line (`print(x)` followed directly by the
    three backticks) does not close the block -- as in the TAO-RL reference regex, which needs a
    newline before the closing fence. Blocks in other languages (bash, output, ...) are skipped
    whole, so their closing fence is never mistaken for an opening one. An info string other than
    python/py/nothing -- including `python3` -- marks another language, as in the reference.
  - A fake result the model writes itself ("Code execution result: 42" or ``<result>42</result>``
    right after its call) is discarded: `cut_after_call` ends the turn at the closing fence/tag and
    the sandbox's real observation is appended instead. A fake result with *no* call before it is
    plain prose: no call, and the turn is void unless it has ``\\boxed{``.
  - Code is taken as written, with CRLF turned into LF, common indentation removed and blank
    lines at both ends stripped (the reference strips but does not dedent, so an indented block
    would be an IndentationError there; dedenting is our deliberate, harmless difference).
  - Observation: stdout with trailing newlines removed (the reference keeps one, which doubles the
    newline before the next turn), or the last non-empty stderr line when stderr is not empty;
    truncated head + " ... " + tail to `max_chars` (512, as in the reference).
  - A call is valid iff stderr is empty and stdout is not (TAO-RL's code); `silent_is_failure=False`
    makes a call that printed nothing and exited cleanly valid too.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass

from tao_lab.sandbox import ExecResult

PROTOCOLS = ("fenced", "tags")
_FENCE = "```"
_PYTHON_LANGS = ("", "python", "py")           # info strings that open a tool call (any case)
_LANG_WORD = re.compile(r"[A-Za-z0-9_+#.-]+")  # info string of some other language's block
_CLOSE_LINE = re.compile(r"^[ \t]*```[ \t\r]*$", re.MULTILINE)
_OPEN_TAG, _CLOSE_TAG = "<python>", "</python>"


@dataclass(frozen=True)
class ToolCallMatch:
    """One complete tool call found in model text."""

    protocol: str   # "fenced" or "tags"
    code: str       # the code to run (CRLF -> LF, dedented, blank edge lines stripped)
    start: int      # index of the opening fence / <python> tag in the text
    end: int        # index just past the closing fence / </python> tag


def _check_protocol(protocol: str):
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown tool-call protocol {protocol!r}; use one of {PROTOCOLS}")


def _clean_code(code: str) -> str:
    return textwrap.dedent(code.replace("\r\n", "\n")).strip("\n")


def _find_fenced(text: str) -> ToolCallMatch | None:
    pos = 0
    while (start := text.find(_FENCE, pos)) != -1:
        line_end = text.find("\n", start)
        if line_end == -1:
            return None  # an opening fence with nothing after it yet
        info = text[start + 3:line_end].strip()
        if info.lower() not in _PYTHON_LANGS and not _LANG_WORD.fullmatch(info):
            pos = start + 3  # inline backticks such as ```x```, not a fence
            continue
        close = _CLOSE_LINE.search(text, line_end + 1)
        if close is None:
            return None  # not complete yet
        end = text.index(_FENCE, close.start()) + 3
        if info.lower() in _PYTHON_LANGS:
            return ToolCallMatch("fenced", _clean_code(text[line_end + 1:close.start()]), start, end)
        pos = end  # a block in another language: skip it whole
    return None


def _find_tags(text: str) -> ToolCallMatch | None:
    start = text.find(_OPEN_TAG)
    if start == -1:
        return None
    close = text.find(_CLOSE_TAG, start + len(_OPEN_TAG))
    if close == -1:
        return None
    code = _clean_code(text[start + len(_OPEN_TAG):close])
    return ToolCallMatch("tags", code, start, close + len(_CLOSE_TAG))


def find_tool_call(text: str, protocol: str = "fenced") -> ToolCallMatch | None:
    """The first complete tool call in `text`, or None."""
    _check_protocol(protocol)
    return _find_fenced(text) if protocol == "fenced" else _find_tags(text)


def cut_after_call(text: str, protocol: str = "fenced") -> str:
    """`text` up to the end of its first complete call (anything after, e.g. a fake result, is
    dropped); `text` unchanged when it holds no complete call."""
    m = find_tool_call(text, protocol)
    return text if m is None else text[:m.end]


def truncate_middle(s: str, max_chars: int = 512) -> str:
    """`s` itself if short enough, else its head + " ... " + its tail, `max_chars` long in total."""
    if len(s) <= max_chars:
        return s
    sep = " ... "
    keep = max_chars - len(sep)
    if keep < 2:
        return s[:max_chars]
    head = keep - keep // 2
    return s[:head] + sep + s[len(s) - keep // 2:]


def observation_text(result: ExecResult, silent_placeholder: str = "") -> str:
    """What the model is shown: the last non-empty stderr line if stderr is not empty, else stdout
    (trailing newlines removed), else `silent_placeholder` (TAO-RL shows nothing)."""
    if result.stderr:
        lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
        return lines[-1].rstrip() if lines else result.stderr.strip()
    if result.stdout:
        return result.stdout.rstrip("\n")
    return silent_placeholder


def format_observation(result: ExecResult, protocol: str = "fenced", max_chars: int = 512,
                       silent_placeholder: str = "") -> str:
    """The exact text appended after a call (forced tokens)."""
    _check_protocol(protocol)
    obs = truncate_middle(observation_text(result, silent_placeholder), max_chars)
    if protocol == "fenced":
        return f"\nCode execution result: {obs}\n"
    return f"\n<result>\n{obs}\n</result>\n"


def is_valid_call(result: ExecResult, silent_is_failure: bool = True) -> bool:
    """Tool success (METHODS.md §0): stderr empty and stdout non-empty. With
    `silent_is_failure=False`, a clean exit (status ok) that printed nothing also counts."""
    if result.stderr:
        return False
    if result.stdout:
        return True
    return not silent_is_failure and result.status == "ok"


def has_boxed(text: str) -> bool:
    """Whether a final answer marker `\\boxed{` is present (ends the episode)."""
    return "\\boxed{" in text


def is_void_turn(turn_text: str, protocol: str = "fenced") -> bool:
    """A turn with neither a complete tool call nor `\\boxed{` (SimpleTIR's void turn)."""
    return find_tool_call(turn_text, protocol) is None and not has_boxed(turn_text)
