"""`opd train --reward-weight w`: the task reward, the grader's verdict on each rollout, mixed into the sampled-token
loss's advantage, A_t = -k_t + w * r (verl's ``use_task_rewards``; :func:`opd_cli.core.maths.task_advantage_B`).

What the task reward is in prefix OPD: the grader (:func:`opd_cli.core.grading.grade`) needs the final answer, and a
rollout cut at L tokens rarely holds it. So a rollout that stopped at the step's length without ending, short of
``--max-new-tokens``, is continued by the same student, with no gradient and no teacher, to ``--max-new-tokens``, and
the verdict on the whole answer rewards its L trained tokens: a Monte-Carlo return of the prefix under the current
policy, the estimate a full rollout gives its own first L tokens. The continuation is sampled like the rollouts (on
the HF path its noise is seeded by (seed, step, row), stage :data:`GRADING_STAGE`), is never scored or trained, and
costs generation only: its tokens are logged as ``tokens_graded``, its time is in ``time_generate`` and its
generation FLOPs (x/3 over the continued part of each sequence) are added to ``flops_step``. A rollout that ended (EOS) or reached ``--max-new-tokens`` is
graded as it is.
"""

from __future__ import annotations

from typing import Any

import torch

REWARD_KEYS = ("reward_mean", "tokens_graded")  # metrics.jsonl keys of a --reward-weight run
REWARD_SUMS = 5  # accumulated per step: verdicts, rollouts, continuation tokens, and the FLOPs sums (s, s^2)
GRADING_STAGE = 2  # rollout_seed stage of the continuations (PG-OPD's second stage is 1)


def complete(trainer: Any, prompt_ids: list[list[int]], comps: list[list[int]], step: int) -> list[list[int]]:
    """Each rollout as the grader reads it: the rollouts that stopped at this step's length without ending,
    continued to ``--max-new-tokens``; the others as they are.

    Every process makes the continuation call with the same number of rows (padded with repeats that are then
    dropped), as PG-OPD's second stage does: vLLM gathers prompts across processes and ZeRO-3 gathers weights."""
    acc, eos = trainer.accelerator, set(trainer.eos_token_ids)
    gen_len = trainer.gen_len(step)
    budget = trainer.opd.max_new_tokens - gen_len
    n = len(prompt_ids)
    first, N = acc.process_index * n, n * acc.num_processes
    full = [list(c) for c in comps]
    todo = [i for i, c in enumerate(full) if budget > 0 and len(c) >= gen_len and c[-1] not in eos]
    m = int(acc.gather(torch.tensor([len(todo)], device=acc.device)).max().item())
    if m:
        rows = todo + [todo[0] if todo else 0] * (m - len(todo))
        ext, _ = trainer._sample([list(prompt_ids[i]) + full[i] for i in rows], step, budget, [first + i for i in rows],
                                 N, stage=GRADING_STAGE)
        for j, i in enumerate(todo):
            full[i] += list(ext[j])
    return full


def verdicts(problems: list[Any], tokenizer: Any, answers: list[list[int]]) -> list[float]:
    """1.0 where the grader accepts the decoded answer (the eval's decoding: special tokens dropped), else 0.0."""
    from opd_cli.core.grading import grade

    texts = tokenizer.batch_decode(answers, skip_special_tokens=True)
    return [float(grade(p, t)[0]) for p, t in zip(problems, texts, strict=True)]


def sums(verdict_B: torch.Tensor, prompt_len_B: torch.Tensor, trained_len_B: torch.Tensor,
         graded_len_B: torch.Tensor) -> torch.Tensor:
    """One rollout batch's :data:`REWARD_SUMS`: verdicts, rollouts, continuation tokens, and the FLOPs sums of the
    continued parts, sum over rollouts of (P + G)^a - (P + L)^a for a = 1, 2 (P prompt, L trained, G graded length)."""
    p, lo, g = prompt_len_B.double(), trained_len_B.double(), graded_len_B.double()
    return torch.stack([verdict_B.double().sum(), torch.tensor(float(len(verdict_B)), device=p.device, dtype=torch.float64),
                        (g - lo).sum(), ((p + g) - (p + lo)).sum(), ((p + g) ** 2 - (p + lo) ** 2).sum()])


def step_metrics(s: list[float]) -> dict[str, Any]:
    """The step's reward metrics from the gathered :func:`sums`."""
    return {"reward_mean": s[0] / s[1] if s[1] else None, "tokens_graded": int(s[2])}
