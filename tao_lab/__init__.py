"""tao_lab: a notebook-first workbench for tool-integrated RL of small language models.

Pipeline, one module per stage in data-flow order:
    sandbox / toolcall -> models / engine / rollout -> rewards -> filters -> advantages -> loss -> trainer
with records (trajectories + run store), tasks, plots, widgets and tokenview around them.
"""

__version__ = "0.1.0"
