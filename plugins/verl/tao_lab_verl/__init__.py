"""TAO-RL for verl 0.9.1, with tao_lab's own functions as the single source of the method.

Importing this package (verl does it through the `verl.plugins` entry point) registers:

    agent loop  "tao_tool_agent"  fenced-Python / tags tool calls run in tao_lab.sandbox, TAO-RL's
                                  tool-success rule, the post-tool gate, Filter A (mask mode) on the
                                  response mask                                  (agent_loop.py)
    trainer     "tao_sync"        verl's sync v1 trainer + TAO-RL entropy reshaping of the GRPO
                                  advantages, from tao_lab.advantages.shape_advantages (trainer.py)
    reward      tao_lab_verl.reward.compute_score  (custom_reward_function.path/name): the verified
                                  score and binary "acc", so Filter B = verl's filter_groups on acc

Names are module constants so configs and tests refer to one spelling.
"""

AGENT_NAME = "tao_tool_agent"
TRAINER_NAME = "tao_sync"

from tao_lab_verl import agent_loop, trainer  # noqa: E402,F401  (registration side effects)
