"""One file per method, each reading like the paper's method section, plus the table of arms.

    arms.py          ARMS: method name -> the switches it sets on a TrainConfig (grpo, simpletir, tao,
                     tao_code, dapo, and the seed methods); HOOKS: name -> build(cfg, tasks, tok) ->
                     hooks.MethodHooks (prompt source / reward / advantage replacements)
    dapo.py          DAPO dynamic sampling (FilterConfig.refill="dynamic")
    arpo.py          ARPO entropy-based adaptive branching at tool junctures
    e3tir.py         E3-TIR expert-prefix anchors, branching and mixed advantages
    et_agent.py      ET-Agent efficiency-calibrated reward, Pareto sampling, behaviour calibration
    toolexpander.py  ToolExpander hard-sample replacement and self-exemplifying thinking

Nothing is imported here, so `tao_lab.rewards` (imported by the verifier child process) can import
one method's pure functions without pulling in torch-heavy modules.
"""
