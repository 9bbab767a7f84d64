"""Generate tao_lab's bundled task sets and demonstrations into data/, deterministically.

    python scripts/make_tasks.py              # (re)write data/
    python scripts/make_tasks.py --out DIR    # write somewhere else
    python scripts/make_tasks.py --check      # exit 1 if data/ differs from what this script makes

What it makes (details in the generated data/README.md):
- `arith_L{1..4}_{train,test}.jsonl`: tool-necessary arithmetic (products of 3-6 digit numbers,
  sum/product chains, remainders, large powers, modular powers, digit sums of huge powers).
- `word_L{1..4}_{train,test}.jsonl`: multi-step word problems with computed integer answers
  (2 steps at L1 ... compound interest, loans, combinatorics and geometric sums at L4).
- `demos.jsonl`: one solved example per task kind (two for 3-digit products), each in the fenced
  protocol and in the tags protocol. Their code was run by this script and the printed output is
  what the completion shows; the script checks that the output equals the answer. They serve as
  few-shot demonstrations (tasks.build_messages) and as expert trajectories (E3-TIR, ToolExpander).

Determinism: every set draws from its own `random.Random(f"{SEED}-{name}")` (string seeding is
stable across Python versions), JSON is written with a fixed key order and "\\n" line ends, and
nothing depends on time, locale or dict order. No overlap: a problem is identified by its kind and
numbers (not its wording); a problem drawn twice anywhere (another split, another level, a demo)
is redrawn, so train, test and demos never share a problem.
"""

from __future__ import annotations

import argparse
import contextlib
import filecmp
import io
import json
import math
import random
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable

SEED = 20260601
N_TRAIN, N_TEST = 200, 100     # per family, level and split: a few hundred, data/ stays < 1 MB
LEVELS = (1, 2, 3, 4)
FAMILIES = ("arith", "word")
DATA_DIR = Path(__file__).resolve().parent.parent / "data"

NAMES = ("Ava", "Ben", "Chen", "Dana", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jade", "Kofi",
         "Lena", "Mateo", "Nia", "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tariq")


@dataclass
class Problem:
    """One generated problem and how to solve it with the tool."""

    kind: str
    key: tuple                  # kind + numbers: the identity used for de-duplication
    prompt: str
    answer: str
    # (sentence before the code, code given the printed outputs of the earlier steps)
    steps: list[tuple[str, Callable[[list[str]], str]]] = field(default_factory=list)


def _digits(rng: random.Random, n: int) -> int:
    return rng.randint(10 ** (n - 1), 10 ** n - 1)


def _round_half_safe(x: Fraction) -> int | None:
    """Nearest integer, or None when x is within 0.01 of a .5 tie (float solutions could disagree)."""
    frac = x - math.floor(x)
    if abs(frac - Fraction(1, 2)) < Fraction(1, 100):
        return None
    return math.floor(x + Fraction(1, 2))


def _one_step(expr: str, prose: str = "I'll compute this with Python.") -> list:
    return [(prose, lambda prev, e=expr: f"print({e})")]


# ----------------------------------------------------------------------------------------------
# Arithmetic: numbers too large to work out reliably in one's head.


def a_mul(rng, level):
    da, db = {1: (3, 2), 2: (3, 3), 3: (4, 4), 4: (6, 5)}[level]
    a, b = _digits(rng, da), _digits(rng, db)
    form = rng.choice(["What is {a} × {b}?", "Compute {a} * {b}.", "Calculate the product of {a} and {b}.",
                       "Multiply {a} by {b}."])
    return Problem("mul", ("mul", a, b), form.format(a=a, b=b), str(a * b), _one_step(f"{a} * {b}"))


def a_chain(rng, level):
    if level == 1:
        a, b, c = _digits(rng, 3), _digits(rng, 2), _digits(rng, 3)
        text, expr, value = f"{a} × {b} + {c}", f"{a} * {b} + {c}", a * b + c
        nums = (a, b, c)
    elif level == 2:
        a, b, c, d = _digits(rng, 3), _digits(rng, 2), _digits(rng, 3), _digits(rng, 2)
        text, expr, value = f"{a} × {b} + {c} × {d}", f"{a} * {b} + {c} * {d}", a * b + c * d
        nums = (a, b, c, d)
    elif level == 3:
        a, b, c, d = _digits(rng, 3), _digits(rng, 3), _digits(rng, 2), _digits(rng, 4)
        text, expr, value = f"{a} × {b} × {c} − {d}", f"{a} * {b} * {c} - {d}", a * b * c - d
        nums = (a, b, c, d)
    else:
        a, b, c, d, e = _digits(rng, 4), _digits(rng, 4), _digits(rng, 4), _digits(rng, 4), _digits(rng, 2)
        if a * b < c * d:
            a, b, c, d = c, d, a, b
        text, expr = f"({a} × {b} − {c} × {d}) × {e}", f"({a} * {b} - {c} * {d}) * {e}"
        value, nums = (a * b - c * d) * e, (a, b, c, d, e)
    form = rng.choice(["What is {t}?", "Compute {t}.", "Evaluate {t}."])
    return Problem("chain", ("chain", level) + nums, form.format(t=text), str(value), _one_step(expr))


def a_mod(rng, level):
    a, m = _digits(rng, {1: 5, 2: 8}[level]), _digits(rng, {1: 2, 2: 3}[level])
    form = rng.choice(["What is the remainder when {a} is divided by {m}?", "Compute {a} mod {m}."])
    return Problem("mod", ("mod", a, m), form.format(a=a, m=m), str(a % m), _one_step(f"{a} % {m}"))


def a_mulmod(rng, level):
    a, b, m = _digits(rng, 4), _digits(rng, 4), _digits(rng, 3)
    form = rng.choice(["What is the remainder when {a} × {b} is divided by {m}?", "Compute ({a} × {b}) mod {m}."])
    return Problem("mulmod", ("mulmod", a, b, m), form.format(a=a, b=b, m=m), str(a * b % m),
                   _one_step(f"({a} * {b}) % {m}"))


def a_pow(rng, level):
    if level == 2 and rng.random() < 0.5:
        a, e = _digits(rng, 3), 3
    else:
        a = _digits(rng, 2)
        e = {1: 3, 2: 5, 3: rng.randint(9, 12), 4: rng.randint(20, 40)}[level]
    form = rng.choice(["What is {a}^{e}?", "Compute {a} to the power of {e}.", "Calculate {a}**{e}."])
    return Problem("pow", ("pow", a, e), form.format(a=a, e=e), str(a ** e), _one_step(f"{a} ** {e}"))


def a_powmod(rng, level):
    a, e, m = _digits(rng, rng.choice([2, 3])), rng.randint(100, 9999), _digits(rng, rng.choice([4, 5]))
    form = rng.choice(["What is {a}^{e} mod {m}?", "Find the remainder when {a}^{e} is divided by {m}."])
    return Problem("powmod", ("powmod", a, e, m), form.format(a=a, e=e, m=m), str(pow(a, e, m)),
                   _one_step(f"pow({a}, {e}, {m})"))


def a_digitsum(rng, level):
    a, e = _digits(rng, 2), rng.randint(20, 60)
    prompt = f"What is the sum of the digits of {a}^{e}?"
    return Problem("digitsum", ("digitsum", a, e), prompt, str(sum(map(int, str(a ** e)))),
                   _one_step(f"sum(int(d) for d in str({a} ** {e}))"))


ARITH_KINDS = {1: [a_mul, a_chain, a_mod, a_pow], 2: [a_mul, a_chain, a_mod, a_pow],
               3: [a_mul, a_chain, a_mulmod, a_pow], 4: [a_mul, a_chain, a_powmod, a_pow, a_digitsum]}


# ----------------------------------------------------------------------------------------------
# Word problems: several steps, integer answers computed exactly.


def w_boxes(rng, level):
    a, b = rng.randint(120, 999), rng.randint(12, 96)
    c = rng.randint(100, a * b - 1)
    prompt = (f"A warehouse has {a} boxes with {b} bottles in each box. It ships {c} bottles. "
              f"How many bottles are left in the warehouse?")
    code = f"boxes = {a}\nbottles_per_box = {b}\nshipped = {c}\nprint(boxes * bottles_per_box - shipped)"
    return Problem("boxes", ("boxes", a, b, c), prompt, str(a * b - c),
                   [("Total bottles minus the shipped ones:", lambda p: code)])


def w_savings(rng, level):
    name, a = rng.choice(NAMES), rng.randint(400, 999)
    b, w = rng.randint(150, a - 50), rng.randint(12, 52)
    prompt = (f"{name} earns ${a} a week and spends ${b} a week. "
              f"How many dollars does {name} save in {w} weeks?")
    code = f"earned = {a}\nspent = {b}\nweeks = {w}\nprint((earned - spent) * weeks)"
    return Problem("savings", ("savings", a, b, w), prompt, str((a - b) * w),
                   [("Weekly savings times the number of weeks:", lambda p: code)])


def w_bus(rng, level):
    a, b, d = rng.randint(24, 90), rng.randint(6, 18), rng.randint(15, 60)
    prompt = (f"A bus carries {a} passengers on each trip and makes {b} trips a day. "
              f"How many passengers does it carry in {d} days?")
    code = f"per_trip = {a}\ntrips_per_day = {b}\ndays = {d}\nprint(per_trip * trips_per_day * days)"
    return Problem("bus", ("bus", a, b, d), prompt, str(a * b * d),
                   [("Passengers per trip times trips times days:", lambda p: code)])


def w_orchard(rng, level):
    a, b, c, d = rng.randint(12, 99), rng.randint(13, 99), rng.randint(12, 99), rng.randint(13, 99)
    prompt = (f"A farmer plants {a} rows of {b} apple trees and {c} rows of {d} pear trees. "
              f"How many trees does the farmer plant in total?")
    code = f"apple = {a} * {b}\npear = {c} * {d}\nprint(apple + pear)"
    return Problem("orchard", ("orchard", a, b, c, d), prompt, str(a * b + c * d),
                   [("Apple trees plus pear trees:", lambda p: code)])


def w_profit(rng, level):
    while True:
        n, c = rng.randint(120, 900), rng.randint(12, 80)
        p, u = rng.randint(c + 5, c + 60), rng.randint(1, n // 10)
        if (n - u) * p - n * c > 0:
            break
    prompt = (f"A shop buys {n} lamps for ${c} each and sells all but {u} of them for ${p} each. "
              f"What is the shop's profit in dollars?")
    code = f"bought = {n}\ncost = {c}\nunsold = {u}\nprice = {p}\nprint((bought - unsold) * price - bought * cost)"
    return Problem("profit", ("profit", n, c, p, u), prompt, str((n - u) * p - n * c),
                   [("Revenue from the lamps sold minus what all lamps cost:", lambda p_: code)])


def w_discount(rng, level):
    p, r = 20 * rng.randint(20, 120), 5 * rng.randint(1, 8)
    s, n = rng.randint(15, 60), rng.randint(12, 80)
    unit = p * (100 - r) // 100   # exact: p is a multiple of 20 and 100 - r a multiple of 5
    prompt = (f"A laptop costs ${p}. The store takes {r}% off the price, and shipping adds ${s} per "
              f"laptop. How many dollars does a school pay for {n} laptops?")
    steps = [("First, the price of one laptop after the discount:", lambda prev: f"print({p} * (100 - {r}) // 100)"),
             (f"Now add shipping and multiply by {n} laptops:", lambda prev: f"print(({prev[0]} + {s}) * {n})")]
    return Problem("discount", ("discount", p, r, s, n), prompt, str((unit + s) * n), steps)


def w_factory(rng, level):
    a, h = rng.randint(35, 250), rng.randint(6, 16)
    q, d = rng.randint(10, a * h // 5), rng.randint(5, 30)
    prompt = (f"A factory makes {a} toys an hour, {h} hours a day. Each day {q} toys fail inspection. "
              f"How many toys pass inspection in {d} days?")
    code = f"per_day = {a} * {h}\npassed_per_day = per_day - {q}\nprint(passed_per_day * {d})"
    return Problem("factory", ("factory", a, h, q, d), prompt, str((a * h - q) * d),
                   [("Toys that pass each day, times the days:", lambda p: code)])


def w_tank(rng, level):
    leak = rng.randint(3, 40)
    inflow, t = rng.randint(leak + 5, leak + 90), rng.randint(20, 400)
    volume = (inflow - leak) * t
    prompt = (f"A tank holds {volume} liters. Water flows in at {inflow} liters per minute and leaks out "
              f"at {leak} liters per minute. Starting empty, how many minutes does it take to fill the tank?")
    code = f"volume = {volume}\nnet_rate = {inflow} - {leak}\nprint(volume // net_rate)"
    return Problem("tank", ("tank", volume, inflow, leak), prompt, str(t),
                   [("The tank fills at the net rate:", lambda p: code)])


def w_account(rng, level):
    while True:
        p0, r, n = 100 * rng.randint(20, 200), rng.randint(2, 9), rng.randint(5, 15)
        w = rng.randint(10, p0 * r // 100)   # at most the first year's interest: the balance never runs out
        bal = Fraction(p0)
        for _ in range(n):
            bal = bal * (100 + r) / 100 - w
        if (ans := _round_half_safe(bal)) is not None:
            break
    prompt = (f"An account starts with ${p0}. At the end of each year it earns {r}% interest, and then "
              f"${w} is withdrawn. How many dollars are in the account after {n} years? Round to the "
              f"nearest dollar.")
    code = (f"balance = {p0}\nfor year in range({n}):\n    balance = balance * (1 + {r} / 100) - {w}\n"
            f"print(round(balance))")
    return Problem("account", ("account", p0, r, w, n), prompt, str(ans),
                   [("Simulate the account year by year:", lambda p: code)])


def w_population(rng, level):
    while True:
        p0, r, n = rng.randint(5000, 90000), rng.randint(2, 7), rng.randint(6, 20)
        if (ans := _round_half_safe(Fraction(p0) * Fraction(100 + r, 100) ** n)) is not None:
            break
    prompt = (f"A town has {p0} people. The population grows by {r}% every year. How many people live "
              f"there after {n} years? Round to the nearest whole number.")
    code = f"population = {p0} * (1 + {r} / 100) ** {n}\nprint(round(population))"
    return Problem("population", ("population", p0, r, n), prompt, str(ans),
                   [("Compound growth:", lambda p: code)])


def w_shopping(rng, level):
    name = rng.choice(NAMES)
    a, x, b, y = rng.randint(3, 30), rng.randint(2, 15), rng.randint(5, 60), rng.randint(1, 6)
    c, z = rng.randint(2, 9), rng.randint(25, 90)
    total = a * x + b * y + c * z
    k = total // 100 + rng.randint(1, 3)
    prompt = (f"{name} buys {a} notebooks at ${x} each, {b} pens at ${y} each and {c} backpacks at "
              f"${z} each, and pays with {k} hundred-dollar bills. How much change does {name} get, in dollars?")
    code = f"total = {a} * {x} + {b} * {y} + {c} * {z}\nprint({k} * 100 - total)"
    return Problem("shopping", ("shopping", a, x, b, y, c, z, k), prompt, str(100 * k - total),
                   [("Amount paid minus the total cost:", lambda p: code)])


def w_trip(rng, level):
    def leg():
        v = rng.choice(range(40, 185, 5))
        m = rng.choice([m for m in range(30, 301) if v * m % 60 == 0])
        return v, m, v * m // 60
    v1, m1, d1 = leg()
    v2, m2, d2 = leg()
    prompt = (f"A train travels {d1} km at {v1} km/h and then {d2} km at {v2} km/h. "
              f"How many minutes does the whole trip take?")
    code = f"minutes = {d1} / {v1} * 60 + {d2} / {v2} * 60\nprint(round(minutes))"
    return Problem("trip", ("trip", d1, v1, d2, v2), prompt, str(m1 + m2),
                   [("Time of each leg in minutes, added:", lambda p: code)])


def w_loan(rng, level):
    name = rng.choice(NAMES)
    while True:
        p0, r, n = 500 * rng.randint(10, 100), rng.randint(1, 3), rng.randint(12, 36)
        m = rng.randint(p0 * r // 100 + 20, p0 * r // 100 + p0 // 60)
        owed = Fraction(p0)
        for _ in range(n):
            owed = owed * (100 + r) / 100 - m
        if owed > 0 and (ans := _round_half_safe(owed)) is not None:
            break
    prompt = (f"{name} borrows ${p0} at {r}% interest per month. At the end of each month the interest is "
              f"added and then ${m} is paid back. How many dollars are still owed after {n} months? "
              f"Round to the nearest dollar.")
    code = (f"owed = {p0}\nfor month in range({n}):\n    owed = owed * (1 + {r} / 100) - {m}\n"
            f"print(round(owed))")
    return Problem("loan", ("loan", p0, r, m, n), prompt, str(ans),
                   [("Simulate the loan month by month:", lambda p: code)])


def w_committee(rng, level):
    n, k = rng.randint(25, 60), rng.randint(4, 12)
    prompt = (f"A club has {n} members. In how many ways can it choose a committee of {k} members and "
              f"then pick one of the committee members as chair?")
    steps = [(f"Number of ways to choose {k} of {n}:", lambda prev: f"import math\nprint(math.comb({n}, {k}))"),
             (f"Each committee has {k} choices of chair:", lambda prev: f"print({prev[0]} * {k})")]
    return Problem("committee", ("committee", n, k), prompt, str(math.comb(n, k) * k), steps)


def w_beads(rng, level):
    a, m, n = rng.randint(2, 9), rng.randint(2, 5), rng.randint(20, 45)
    prompt = (f"On day 1 a jar gets {a} beads. Each day after that it gets {m} times as many beads as the "
              f"day before. How many beads are in the jar after {n} days?")
    code = f"total = sum({a} * {m} ** day for day in range({n}))\nprint(total)"
    return Problem("beads", ("beads", a, m, n), prompt, str(a * (m ** n - 1) // (m - 1)),
                   [("Add the beads of every day:", lambda p: code)])


def w_deposits(rng, level):
    name = rng.choice(NAMES)
    while True:
        a, d, n, r = rng.randint(20, 300), rng.randint(5, 40), rng.randint(12, 60), rng.randint(2, 9)
        saved = n * a + d * n * (n - 1) // 2
        if (ans := _round_half_safe(Fraction(saved) * Fraction(100 + r, 100))) is not None:
            break
    prompt = (f"{name} saves ${a} in the first month and each month saves ${d} more than the month before. "
              f"After {n} months the bank adds a bonus of {r}% of the total saved. How many dollars does "
              f"{name} have then? Round to the nearest dollar.")
    steps = [("Total saved over the months:", lambda prev: f"print(sum({a} + {d} * k for k in range({n})))"),
             (f"Add the {r}% bonus:", lambda prev: f"print(round({prev[0]} * (1 + {r} / 100)))")]
    return Problem("deposits", ("deposits", a, d, n, r), prompt, str(ans), steps)


WORD_KINDS = {1: [w_boxes, w_savings, w_bus, w_orchard], 2: [w_profit, w_discount, w_factory, w_tank],
              3: [w_account, w_population, w_shopping, w_trip], 4: [w_loan, w_committee, w_beads, w_deposits]}
KINDS = {"arith": ARITH_KINDS, "word": WORD_KINDS}


# ----------------------------------------------------------------------------------------------
# Demonstrations: run the code, check the output, write both protocols.


def run_code(code: str) -> str:
    """Run trusted generator code in a fresh interpreter; its stdout, stripped."""
    res = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=60)
    if res.returncode != 0 or res.stderr:
        raise RuntimeError(f"demo code failed:\n{code}\n{res.stderr}")
    return res.stdout.strip()


def check_solvable(prob: Problem) -> None:
    """Run the problem's reference code in-process (trusted, fast) and compare with the exact answer.

    The code is what a model would write (floats for rates), so this proves float solutions agree
    with the exactly computed gold answer, e.g. that no rounding lands on a .5 tie.
    """
    outputs: list[str] = []
    for _, code_of in prob.steps:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            exec(code_of(outputs), {})  # noqa: S102 — our own generated code
        outputs.append(buf.getvalue().strip())
    if outputs[-1] != prob.answer:
        raise AssertionError(f"{prob.kind} {prob.key}: reference code prints {outputs[-1]!r}, "
                             f"exact answer is {prob.answer!r}")


def fenced_call(code: str, output: str) -> str:
    """Tool call + forced observation, fenced protocol (METHODS.md §0)."""
    return f"```python\n{code}\n```\nCode execution result: {output}\n"


def tags_call(code: str, output: str) -> str:
    """Tool call + forced observation, tags protocol (ARPO / Tool-Star)."""
    return f"<python>\n{code}\n</python>\n<result>\n{output}\n</result>\n"


def make_demo(prob: Problem, family: str, level: int, index: int) -> list[dict]:
    outputs, codes = [], []
    for _, code_of in prob.steps:
        codes.append(code_of(outputs))
        outputs.append(run_code(codes[-1]))
    if outputs[-1] != prob.answer:
        raise AssertionError(f"demo {prob.kind}: code printed {outputs[-1]!r}, answer is {prob.answer!r}")
    rows = []
    for protocol, call, final in (("fenced", fenced_call, f"The answer is \\boxed{{{prob.answer}}}."),
                                  ("tags", tags_call, f"<answer>\\boxed{{{prob.answer}}}</answer>")):
        parts = [f"{prose}\n{call(code, out)}" for (prose, _), code, out in zip(prob.steps, codes, outputs)]
        rows.append({
            "id": f"demo-{protocol}-{index:02d}-{family}-{prob.kind}",
            "protocol": protocol,
            "prompt": prob.prompt,
            "answer": prob.answer,
            "completion": "".join(parts) + final,
            "steps": [{"code": c, "output": o} for c, o in zip(codes, outputs)],
            "meta": {"family": family, "level": level, "kind": prob.kind, "n_tool_calls": len(codes)},
        })
    return rows


# ----------------------------------------------------------------------------------------------
# Assembly


def draw(gen: Callable, rng: random.Random, level: int, seen: set) -> Problem:
    for _ in range(1000):
        prob = gen(rng, level)
        if prob.key not in seen:
            seen.add(prob.key)
            check_solvable(prob)
            return prob
    raise RuntimeError(f"{gen.__name__} at level {level} keeps repeating problems; widen its ranges")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def generate(out: Path, seed: int = SEED) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    seen: set = set()
    written = []

    # Demonstrations first, so that no task repeats a demonstrated problem.
    rng = random.Random(f"{seed}-demos")
    demos, index = [], 0
    for family in FAMILIES:
        demo_levels: dict[Callable, list[int]] = {}
        for level in LEVELS:
            for gen in KINDS[family][level]:
                demo_levels.setdefault(gen, [level])
        demo_levels.get(a_mul, []).append(2)   # products are the headline task: a second demo, 3 x 3 digits
        for gen, levels in demo_levels.items():
            for level in levels:
                demos += make_demo(draw(gen, rng, level, seen), family, level, index)
                index += 1
    path = out / "demos.jsonl"
    write_jsonl(path, demos)
    written.append(path)

    counts = {}
    for family in FAMILIES:
        for level in LEVELS:
            rng = random.Random(f"{seed}-{family}-L{level}")
            probs = [draw(rng.choice(KINDS[family][level]), rng, level, seen) for _ in range(N_TRAIN + N_TEST)]
            for split, part in (("train", probs[:N_TRAIN]), ("test", probs[N_TRAIN:])):
                rows = [{"id": f"{family}-L{level}-{split}-{i:04d}", "prompt": p.prompt, "answer": p.answer,
                         "meta": {"family": family, "level": level, "kind": p.kind, "split": split}}
                        for i, p in enumerate(part)]
                path = out / f"{family}_L{level}_{split}.jsonl"
                write_jsonl(path, rows)
                written.append(path)
                counts[path.name] = len(rows)
    path = out / "README.md"
    path.write_text(readme(counts, len(demos), seed), encoding="utf-8", newline="\n")
    written.append(path)
    return written


def readme(counts: dict[str, int], n_demos: int, seed: int) -> str:
    kinds = {f: {lv: ", ".join(g.__name__[2:] for g in KINDS[f][lv]) for lv in LEVELS} for f in FAMILIES}
    lines = [
        "# Bundled task data",
        "",
        "Everything here is generated by `scripts/make_tasks.py` (seed "
        f"{seed}); regenerate with `python scripts/make_tasks.py` (byte-identical; "
        "`--check` verifies). Load with `tao_lab.tasks.load_tasks(\"arith-L2\", split=\"test\")`.",
        "",
        "Each task file has one JSON object per line: `id`, `prompt`, `answer` (an integer, as text), "
        "`meta` (`family`, `level`, `kind`, `split`). Train and test never share a problem (same kind "
        "and numbers), and neither shares one with the demonstrations.",
        "",
        "| file | tasks | kinds |",
        "| --- | --- | --- |",
    ]
    for name, n in counts.items():
        family, level = name.split("_")[0], int(name.split("_")[1][1])
        lines.append(f"| `{name}` | {n} | {kinds[family][level]} |")
    lines += [
        f"| `demos.jsonl` | {n_demos} | one solved example per kind (two for products), in both protocols |",
        "",
        "Levels: arith L1 = 3-digit × 2-digit products, short chains, 5-digit remainders, cubes; L2 = "
        "3 × 3 digits, 8-digit remainders, fifth powers; L3 = 4 × 4 digits, products mod m, 9th-12th "
        "powers; L4 = 6 × 5 digits, modular powers with 3-4 digit exponents, 20th-40th powers, digit sums "
        "of huge powers. word L1 = two operations (stock left, savings, trips, orchards); L2 = three "
        "(profit, discount plus shipping, factory output, tank filling); L3 = iterated or several "
        "quantities (interest with withdrawals, population growth, change, travel time); L4 = loans, "
        "combinations, geometric sums, growing deposits with a bonus. Answers that need rounding avoid "
        ".5 ties, so float and exact solutions agree (the generator checks each problem's float code).",
        "",
        "`demos.jsonl` fields: `id`, `protocol` (`fenced` or `tags`), `prompt`, `answer`, `completion` "
        "(the assistant message: prose, a tool call, the forced observation `Code execution result: ...` "
        "or `<result>...</result>`, ..., then `\\boxed{answer}`), `steps` (`code` and its `output`, "
        "produced by running the code when the file was generated), `meta` (`family`, `level`, `kind`, "
        "`n_tool_calls`). They are few-shot demonstrations and expert trajectories (E3-TIR, ToolExpander).",
        "",
        "GSM8K is not copied here: load it with `load_tasks(\"path/to/gsm8k_test.jsonl\")` or "
        "`load_tasks(\"hf:openai/gsm8k:main:test\")`.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DATA_DIR, help="output folder (default: the repo's data/)")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--check", action="store_true", help="compare data/ with a fresh generation")
    args = ap.parse_args(argv)
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            fresh = generate(Path(tmp), args.seed)
            bad = [p.name for p in fresh
                   if not (args.out / p.name).exists() or not filecmp.cmp(p, args.out / p.name, shallow=False)]
        print("data/ is up to date" if not bad else f"differs from a fresh generation: {bad}")
        return 1 if bad else 0
    paths = generate(args.out, args.seed)
    total = sum(p.stat().st_size for p in paths)
    print(f"wrote {len(paths)} files, {total / 1024:.0f} KiB, to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
