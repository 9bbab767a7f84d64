"""Rollout logic: every episode exit, both protocols, masks and gates, and exact per-token records."""

from dataclasses import dataclass, field

import pytest
import torch

from fakes import ByteTokenizer, ScriptedPolicy
from runstore_fixture import make_run_store, make_trajectories
from tao_lab.prefix import common_prefix_len, prefix_tree_plan
from tao_lab.rollout import RolloutConfig, generate
from tao_lab.stored_rollouts import sample_or_load, store_name
from tao_lab.sandbox import SandboxConfig, SandboxPool


@dataclass
class T:
    id: str
    prompt: str
    answer: str = ""
    meta: dict = field(default_factory=dict)


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(max_workers=2, config=SandboxConfig(timeout_s=1.0)) as p:
        yield p


def run(scripts, pool, protocol="fenced", G=1, **kw):
    tok = ByteTokenizer()
    policy = ScriptedPolicy(tok, scripts, protocol=protocol)
    tasks = [T(id=f"t{i}", prompt=p) for i, p in enumerate(scripts)]
    cfg = RolloutConfig(group_size=G, protocol=protocol, backend="recompute", seed=0, **kw)
    return generate(policy, tok, tasks, cfg, pool=pool, prompts=list(scripts))


CODE = "```python\nprint(6 * 7)\n```"


def test_boxed_answer_after_a_tool_call_ends_the_episode(pool):
    (tr,), stats = run({"Q: 6*7?\n": [CODE, " so \\boxed{42}."]}, pool)
    assert tr.finish_reason == "boxed" and not tr.truncated
    assert tr.n_tool_calls == 1 and tr.tool_calls[0].valid and tr.tool_calls[0].stdout == "42\n"
    assert "Code execution result: 42" in tr.text and tr.text.endswith("\\boxed{42}.")
    assert stats.n_tool_calls == 1 and stats.finish == {"boxed": 1}


def test_forced_tool_output_has_mask_zero_and_nothing_else_does(pool):
    (tr,), _ = run({"Q: 6*7?\n": [CODE, " so \\boxed{42}."]}, pool)
    tok = ByteTokenizer()
    obs = tr.tool_calls[0].observation
    start = len(CODE.encode())
    assert tr.mask == [1] * start + [0] * len(obs.encode()) + [1] * (len(tr.mask) - start - len(obs.encode()))
    forced = [t for t, m in zip(tr.token_ids, tr.mask) if m == 0]
    assert tok.decode(forced) == obs
    assert all(lp == 0.0 and h == 0.0 for lp, h, m in zip(tr.logprobs, tr.entropies, tr.mask) if m == 0)
    assert tr.full_mask() == [0] * len(tr.prompt_ids) + tr.mask


def test_post_tool_gate_marks_exactly_the_sampled_tokens_of_the_next_turn(pool):
    (tr,), _ = run({"Q: 6*7?\n": [CODE, " so \\boxed{42}."]}, pool)
    second_turn = [i for i, (m, turn) in enumerate(zip(tr.mask, tr.turn_idx)) if m == 1 and turn == 1]
    assert [i for i, g in enumerate(tr.post_tool) if g] == second_turn
    assert len(second_turn) == len(" so \\boxed{42}.") + 1  # + the end-of-sequence token


def test_a_turn_with_neither_tool_call_nor_boxed_answer_is_a_void_turn(pool):
    (tr,), _ = run({"Q: hi\n": ["I think it is forty-two."]}, pool)
    assert tr.finish_reason == "void_turn" and tr.void_turn and tr.n_tool_calls == 0


def test_boxed_answer_without_any_tool_call_ends_the_episode(pool):
    (tr,), _ = run({"Q: 1+1\n": ["It is \\boxed{2}"]}, pool)
    assert tr.finish_reason == "boxed" and tr.n_turns == 1 and not tr.void_turn


def test_turn_budget_ends_the_episode_after_the_last_observation(pool):
    (tr,), _ = run({"Q: loop\n": [CODE, CODE, CODE, "\\boxed{42}"]}, pool, max_turns=2)
    assert tr.finish_reason == "max_turns" and tr.n_tool_calls == 2 and tr.n_turns == 2
    assert tr.mask[-1] == 0  # the last observation is appended before stopping


def test_token_budget_truncates_the_episode(pool):
    (tr,), _ = run({"Q: long\n": ["word " * 50]}, pool, max_new_tokens=20)
    assert tr.finish_reason == "token_budget" and tr.truncated and len(tr.token_ids) == 20


def test_tool_timeout_is_recorded_as_a_failed_call_and_the_episode_goes_on(pool):
    code = "```python\nwhile True:\n    pass\n```"
    (tr,), _ = run({"Q: hang\n": [code, "\\boxed{0}"]}, pool)
    call = tr.tool_calls[0]
    assert call.status == "timeout" and not call.valid
    assert tr.finish_reason == "boxed" and tr.n_turns == 2


def test_boxed_answer_printed_by_the_tool_ends_the_episode(pool):
    code = "```python\nprint('\\\\boxed{5}')\n```"
    (tr,), _ = run({"Q: five\n": [code, "never written"]}, pool)
    assert tr.finish_reason == "boxed" and tr.n_turns == 1 and "never" not in tr.text


def test_tags_protocol_runs_python_tags_and_feeds_back_a_result_tag(pool):
    (tr,), _ = run({"Q: 2\n": ["<python>print(1+1)</python>", " \\boxed{2}"]}, pool, protocol="tags")
    assert tr.n_tool_calls == 1 and tr.tool_calls[0].stdout == "2\n"
    assert "<result>" in tr.tool_calls[0].observation and tr.finish_reason == "boxed"


def test_rows_of_different_tasks_in_one_batch_follow_their_own_scripts(pool):
    scripts = {"Q: a\n": [CODE, "\\boxed{42}"], "Q: b\n": ["no tool"], "Q: c\n": ["x" * 100]}
    trajs, stats = run(scripts, pool, G=2, max_new_tokens=80)
    reasons = [t.finish_reason for t in trajs]
    assert reasons == ["boxed", "boxed", "void_turn", "void_turn", "token_budget", "token_budget"]
    assert [t.group_id for t in trajs] == [0, 0, 1, 1, 2, 2]
    assert [t.sample_idx for t in trajs] == [0, 1, 0, 1, 0, 1]


def test_invalid_rollout_config_names_the_field():
    with pytest.raises(ValueError, match="top_p"):
        RolloutConfig(top_p=0.0)


# ------------------------------------------------------------------------------------------------
# Real models: recorded logprobs / entropies equal a teacher-forced forward over the final sequence


def teacher_forced_check(model, trajs, temperature, atol):
    from tao_lab.advantages import token_entropy, token_logprobs

    for tr in trajs:
        ids = torch.tensor([tr.full_ids()])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[:, :-1]             # position t predicts t+1
        P = len(tr.prompt_ids)
        targets = ids[:, 1:]
        lp = token_logprobs(logits, targets, temperature=temperature)[0, P - 1:]
        ent = token_entropy(logits, temperature=temperature)[0, P - 1:]
        m = torch.tensor(tr.mask, dtype=torch.bool)
        assert torch.allclose(lp[m], torch.tensor(tr.logprobs)[m], atol=atol)
        # entropy sums p·log p over the whole vocabulary, so its fp32 rounding grows with its size
        # (seen: 6e-4 at H = 6 nats with one thread, where the matmuls reduce in another order)
        assert torch.allclose(ent[m], torch.tensor(tr.entropies)[m], atol=atol, rtol=2e-4)


def test_tiny_model_records_match_a_teacher_forced_forward(tiny):
    model, tok = tiny
    tasks = [T("a", "x"), T("b", "y")]
    prompts = ["Hello there, how are", "Compute 123 * 456 with python"]
    cfg = RolloutConfig(group_size=3, max_new_tokens=24, temperature=0.7, seed=0, tools=False)
    trajs, stats = generate(model, tok, tasks, cfg, prompts=prompts)
    assert stats.sampled_tokens == sum(t.n_sampled for t in trajs)
    teacher_forced_check(model, trajs, 0.7, 1e-4)


def test_kv_and_recompute_backends_sample_the_same_tokens(tiny):
    model, tok = tiny
    tasks = [T("a", "x"), T("b", "y")]
    prompts = ["Hello there, how are", "Compute 123 * 456"]
    out = {}
    for backend in ("kv", "recompute"):
        cfg = RolloutConfig(group_size=2, max_new_tokens=16, seed=3, tools=False, backend=backend)
        out[backend] = [t.token_ids for t in generate(model, tok, tasks, cfg, prompts=prompts)[0]]
    assert out["kv"] == out["recompute"]


def test_common_prefix_len_counts_shared_token_ids_and_leaves_every_sequence_a_token():
    assert common_prefix_len([[1, 2, 3, 4], [1, 2, 3, 9], [1, 2, 7]]) == 2
    assert common_prefix_len([[1, 2], [1, 2, 3]]) == 1      # one is a prefix of the other
    assert common_prefix_len([[5], [5]]) == 0
    assert common_prefix_len([[1, 2, 3], [9, 2, 3]]) == 0


def fed_by_a_trie(seqs):
    """Tokens a perfect prefix-tree prefill feeds: every distinct proper prefix once, plus each
    sequence's last token in its own row (its logits start that row's sampling)."""
    return len({tuple(s[:k]) for s in seqs for k in range(1, len(s))}) + len(seqs)


@pytest.mark.parametrize("seed", range(6))
def test_prefix_tree_plan_rebuilds_every_sequence_feeding_each_shared_prefix_once(seed):
    g = torch.Generator().manual_seed(seed)
    stems = [torch.randint(0, 5, (int(n),), generator=g).tolist() for n in torch.randint(0, 6, (3,), generator=g)]
    seqs = [stems[int(torch.randint(0, 3, (1,), generator=g))] + torch.randint(0, 3, (int(n),), generator=g).tolist()
            for n in torch.randint(1, 5, (7,), generator=g)]
    seqs += [seqs[0], seqs[1][:1]]                  # an exact duplicate; a one-token sequence
    rows, last_end, fed = [[] for _ in seqs], {}, 0
    for feeds, forks in prefix_tree_plan(seqs):
        assert feeds
        fed_rows = [i for i, _, _ in feeds]
        assert len(set(fed_rows)) == len(fed_rows) and not {j for _, j, _ in forks} & set(fed_rows)
        for i, a, b in feeds:
            assert len(rows[i]) == a < b
            rows[i] += seqs[i][a:b]
            last_end[i], fed = b, fed + b - a
        for i, j, n in forks:
            rows[j] = rows[i][:n]
    assert rows == seqs and last_end == {i: len(s) for i, s in enumerate(seqs)}
    assert fed == fed_by_a_trie(seqs)


SYS = "You solve problems with python.\n"
DEMO = SYS + "Q: 2+2\nA: ```python\nprint(2+2)\n```\n"
DEMO_B = SYS + "Q: 3*5\nA: ```python\nprint(3*5)\n```\n"
PROMPT_SETS = {
    "few_shot": [DEMO + "Q: 12*3", DEMO + "Q: what is 7 + 5 + 9?", DEMO + "Q: 1"],
    "two_demo_sets": [DEMO + "Q: 12*3", DEMO_B + "Q: what is 7 + 5 + 9?", DEMO + "Q: 1", DEMO_B + "Q: 8"],
    "no_common_prefix": ["Hello there, how are", "Compute 123 * 456"],
    "one_prompt": [DEMO + "Q: 12*3"],
    "one_is_a_prefix": ["Hello there, how are", "Hello there, how are you doing today"],
    # one group shares a long prefix and ends in short tails, the other has long tails: a stage
    # feeds a 1-token tail beside a 20-token one, whose padding must not need room in the cache
    "uneven_groups": [DEMO * 3 + "Q: 1", DEMO * 3 + "Q: 12",
                      DEMO_B + "Q: what is 7 + 5 + 9 + 10 + 11 + 12 + 13?", DEMO_B + "Q: 8*1234+9-8*100"],
}


@pytest.mark.parametrize("case", PROMPT_SETS)
def test_shared_prefix_prefill_samples_the_same_tokens(tiny, case):
    """Seeded rollouts with and without the shared-prefix prefill, and on the recompute reference:
    the same tokens; logprobs and entropies equal to fp32 rounding (atol 1e-5)."""
    model, tok = tiny
    prompts = PROMPT_SETS[case]
    tasks = [T(f"t{i}", p) for i, p in enumerate(prompts)]
    ids = [tok.encode(p, add_special_tokens=False) for p in prompts]
    if case == "one_is_a_prefix":
        assert ids[1][:len(ids[0])] == ids[0]
    want = sum(map(len, ids)) - fed_by_a_trie(ids)
    out = {}
    G, new_tokens = (1, 3) if case == "uneven_groups" else (2, 12)    # (a small cache capacity)
    for backend, shared in (("kv", True), ("kv", False), ("recompute", True)):
        cfg = RolloutConfig(group_size=G, max_new_tokens=new_tokens, temperature=1.0, seed=5, tools=False,
                            backend=backend, shared_prefix=shared)
        trajs, stats = generate(model, tok, tasks, cfg, prompts=prompts)
        out[backend, shared] = trajs
        assert stats.shared_prompt_tokens == (want if (backend, shared) == ("kv", True) else 0)
    assert (want > 0) == (case != "no_common_prefix" and case != "one_prompt")
    ref = out["kv", False]
    for key in (("kv", True), ("recompute", True)):
        assert [t.token_ids for t in out[key]] == [t.token_ids for t in ref]
        for a, b in zip(out[key], ref):
            assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5)
            assert torch.allclose(torch.tensor(a.entropies), torch.tensor(b.entropies), atol=1e-5)


@pytest.mark.smoke
def test_embedded_model_records_match_a_teacher_forced_forward_with_tool_calls(smol, pool):
    from tao_lab.tasks import load_tasks

    model, tok = smol
    tasks = load_tasks("arith-L1", split="test", limit=2)
    cfg = RolloutConfig(group_size=4, max_new_tokens=160, temperature=1.0, seed=0, template="few_shot")
    trajs, stats = generate(model, tok, tasks, cfg, pool=pool)
    assert stats.n_tool_calls > 0, "few-shot SmolLM2 should call the tool at least once in 8 episodes"
    with_calls = [t for t in trajs if t.n_tool_calls]
    assert any(0 in t.mask for t in with_calls)
    teacher_forced_check(model, trajs, 1.0, 1e-3)


def test_sample_or_load_reads_an_existing_run_store_without_loading_a_model(tmp_path, monkeypatch):
    # TAO_LAB_RUN_DIR holds the notebooks' run folders; the store is the one named after the settings
    make_run_store(tmp_path / store_name(["arith-L1"], 2, 4, 64), seed=3)
    monkeypatch.setenv("TAO_LAB_RUN_DIR", str(tmp_path))

    def no_model(*a, **k):
        raise AssertionError("a stored run must not load the model")

    monkeypatch.setattr("tao_lab.models.load_policy", no_model)
    got, run_dir = sample_or_load(["arith-L1"], 2, 4, 64)
    assert run_dir == tmp_path / "nb_tool_2x4_64_s1"
    assert [t.token_ids for t in got] == [t.token_ids for t in make_trajectories(3)]
