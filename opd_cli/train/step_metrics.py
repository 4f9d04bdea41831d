"""One optimizer step's metrics of `opd train`: the accumulators the trainer adds to during the step (local to each
process) and the metrics.jsonl record they become at log time (gathered over the processes).

The trainer (:class:`opd_cli.train.trainer.OpdTrainer`) holds one :class:`StepMetrics` and calls its ``add_*``
methods from its hooks; :meth:`StepMetrics.record` gathers, writes nothing, and resets. The record's keys are
:data:`opd_cli.train.config.METRIC_KEYS` (plus PG-OPD's with ``--rollout pg-opd``).
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from opd_cli.core import maths
from opd_cli.train.pg_opd import PG_SUMS
from opd_cli.train.task_reward import REWARD_SUMS

METRIC_K = 16  # Rethinking-OPD metrics use k = 16


class StepMetrics:
    """The step's accumulators (``acc``), the run's running totals (FLOPs, wall time) and the step clock.

    ``opd``: the run's TrainConfig; ``device``: where the accumulators live; ``flops_fn(sum_s, sum_s2, probe_s,
    probe_s2)``: one step's FLOPs; ``offsets``: the ``flops_total`` and ``wall_time`` a resumed run goes on from.
    """

    def __init__(self, opd: Any, device: Any, flops_fn: Any, offsets: dict[str, float]) -> None:
        self.opd = opd
        self.device = device
        self.flops_fn = flops_fn
        self.flops_total = offsets.get("flops_total", 0.0)
        self.wall_offset = offsets.get("wall_time", 0.0)
        self._t0 = self._t_start = None
        self.dropped_stale = 0  # --async: rollouts TRL dropped as older than --max-staleness, this step (set at log time)
        self.reset()

    def reset(self) -> None:
        nb = math.ceil(self.opd.max_gen_len() / self.opd.kl_bin)
        dev = self.device
        self.acc: dict[str, Any] = {
            "loss": torch.zeros((), device=dev, dtype=torch.float64),
            "sums": torch.zeros(4, device=dev, dtype=torch.float64),  # kl over trained, trained, scored, overlap rows
            "metrics": torch.zeros(len(maths.OVERLAP_KEYS), device=dev, dtype=torch.float64),
            "bin_sum": torch.zeros(nb, device=dev, dtype=torch.float64),
            "bin_cnt": torch.zeros(nb, device=dev, dtype=torch.float64),
            "lens": [],
            "clipped": [],
            "seq": [],
            "time_generate": 0.0,
            "time_teacher": 0.0,
            "pg": torch.zeros(len(PG_SUMS), device=dev, dtype=torch.float64),
            "reward": torch.zeros(REWARD_SUMS, device=dev, dtype=torch.float64),
            # per --teacher-server teacher: KL over its trained tokens, its trained tokens, its rollouts
            "teacher": torch.zeros(max(len(self.opd.teachers), 1), 3, device=dev, dtype=torch.float64),
            # --async: staleness sum, max, rollouts; importance weight sum over trained tokens, their count
            "async": [0.0, 0.0, 0, 0.0, 0.0],
        }

    def start_clock(self) -> None:
        """The run's (and the first step's) start."""
        self._t0 = self._t_start = time.perf_counter()

    # ------------------------------------------------------------------ during the step
    def add_time(self, key: str, seconds: float) -> None:
        """``time_generate`` or ``time_teacher``."""
        self.acc[key] += seconds

    def add_loss(self, loss: torch.Tensor) -> None:
        self.acc["loss"] += loss

    def add_pg(self, sums: torch.Tensor) -> None:
        """PG-OPD's counts of one rollout batch (:data:`opd_cli.train.pg_opd.PG_SUMS`)."""
        self.acc["pg"] += sums

    def add_reward(self, sums: torch.Tensor) -> None:
        """--reward-weight's sums of one rollout batch (:func:`opd_cli.train.task_reward.sums`)."""
        self.acc["reward"] += sums

    def add_teacher_rollouts(self, teacher_B: torch.Tensor) -> None:
        """The rollouts of one batch routed to each teacher (``teacher_B``: indices into --teacher-server's names)."""
        acc = self.acc["teacher"]
        acc[:, 2] += torch.bincount(teacher_B, minlength=acc.shape[0]).to(acc)

    def add_rollouts(self, lengths_B: torch.Tensor, clipped_B: torch.Tensor, seq_B: torch.Tensor, prefix_len: int) -> None:
        """One rollout batch: completion lengths, which were cut at the step's length, prompt + completion lengths."""
        acc = self.acc
        acc["lens"].append(lengths_B.double())
        acc["clipped"].append(clipped_B.double())
        acc["seq"].append(seq_B.double())
        acc["prefix_len"] = prefix_len

    def add_staleness(self, staleness_B: torch.Tensor) -> None:
        """--async: how many weight versions old each trained rollout's policy was when it was trained."""
        a = self.acc["async"]
        a[0] += float(staleness_B.sum())
        a[1] = max(a[1], float(staleness_B.max())) if staleness_B.numel() else a[1]
        a[2] += staleness_B.numel()

    def add_is_ratio(self, rho_N: torch.Tensor, tr_N: torch.Tensor) -> None:
        """--async: the importance weights (:func:`opd_cli.core.maths.is_ratio_BT`) of the trained tokens."""
        a = self.acc["async"]
        a[3] += float((rho_N.double() * tr_N).sum())
        a[4] += float(tr_N.sum())

    def add_tokens(self, old_N, logq_N, ent_p_N, ent_q_N, tr_N, valid_BT, hs_N, ht_N, s_head, t_head,
                   served=None, metrics_step: bool = False, teacher_N: torch.Tensor | None = None) -> None:
        """One micro-batch's scored tokens: KL over trained tokens (and per teacher, ``teacher_N``: each token's
        teacher index with --teacher-column) and per position bin over all scored tokens, entropies every step, the
        overlap metrics on metric steps (``metrics_step``), one row chunk at a time."""
        acc, keys = self.acc, maths.OVERLAP_KEYS
        kl_N = maths.kl_estimate_BT(old_N, logq_N).double()
        tm = tr_N.double()
        acc["sums"][0] += (kl_N * tm).sum()
        acc["sums"][1] += tm.sum()
        if teacher_N is not None:
            acc["teacher"][:, 0].index_add_(0, teacher_N, kl_N * tm)
            acc["teacher"][:, 1].index_add_(0, teacher_N, tm)
        acc["sums"][2] += tr_N.numel()
        ent_p = ent_p_N.double()
        acc["metrics"][keys.index("entropy_student")] += (ent_p * tm).sum()
        if ent_q_N is not None:  # a served teacher sends its top-k only, not its entropy
            ent_q = ent_q_N.double()
            acc["metrics"][keys.index("entropy_teacher")] += (ent_q * tm).sum()
            acc["metrics"][keys.index("entropy_gap")] += ((ent_q - ent_p).abs() * tm).sum()
        # per-token bins, on the device (maths.bin_by_position bins a (B, T) batch into host lists; gathered here)
        B, T = valid_BT.shape
        pos_N = torch.arange(T, device=valid_BT.device).expand(B, T)[valid_BT]
        bins_N = (pos_N // self.opd.kl_bin).clamp(max=acc["bin_sum"].numel() - 1)
        acc["bin_sum"].index_add_(0, bins_N, kl_N)
        acc["bin_cnt"].index_add_(0, bins_N, torch.ones_like(kl_N))
        if not metrics_step:
            return
        k = METRIC_K  # capped at V inside (a ZeRO-3 head's weight has no rows outside its gather)
        hs_M = hs_N[tr_N]
        rows = self.opd.chunk * valid_BT.shape[0]
        for i in range(0, hs_M.shape[0], rows):
            if served is not None:  # the teacher's top-k as the server sent it
                top_ids, top_logp = (x[valid_BT][tr_N][i : i + rows] for x in served)
                m = maths.overlap_metrics_vs_topk_N(hs_M[i : i + rows], s_head, top_ids, top_logp, k)
            else:
                m = maths.overlap_metrics_from_hidden_N(hs_M[i : i + rows], s_head, ht_N[tr_N][i : i + rows], t_head, k)
            for key, v in m.items():
                acc["metrics"][keys.index(key)] += v.double().sum()
        acc["sums"][3] += hs_M.shape[0]

    # ------------------------------------------------------------------ at log time
    def record(self, g: Any, logs: dict[str, float], step: int, prefix_len: int, served_teacher: bool) -> dict[str, Any]:
        """The step's metrics.jsonl record, gathered over the processes of accelerator ``g``; then the accumulators
        start afresh. ``logs``: TRL's (lr, grad_norm); ``prefix_len``: L when no rollout batch recorded one."""
        rec = self._gathered(g, logs, step, prefix_len)
        if served_teacher:
            rec["entropy_teacher"] = rec["entropy_gap"] = None  # not sent by a served teacher
        if self.opd.rollout == "pg-opd":
            from opd_cli.train import pg_opd

            rec.update(pg_opd.step_metrics(self._pg))
        if self.opd.reward_weight:
            from opd_cli.train import task_reward

            rec.update(task_reward.step_metrics(self._reward))
        if self.opd.teacher_column is not None:  # kl/<name>, tokens_trained/<name>, rollouts/<name>
            rec.update(teacher_metrics(list(self.opd.teachers), self._teacher))
        if self.opd.async_rollouts:
            st, mx, n, rho, n_tok = self.acc["async"]
            rec.update({"staleness_mean": st / n if n else None, "staleness_max": int(mx),
                        "is_ratio_mean": rho / n_tok if n_tok else None, "dropped_stale": int(self.dropped_stale)})
        self.reset()
        return rec

    def _gathered(self, g: Any, logs: dict[str, float], step: int, prefix_len: int) -> dict[str, Any]:
        acc = self.acc
        now = time.perf_counter()
        time_step = now - (self._t_start or now)
        self._t_start = now
        loss = g.gather(acc["loss"][None]).sum().item()
        sums = g.gather(acc["sums"][None]).sum(0)
        met = g.gather(acc["metrics"][None]).sum(0)
        bsum = g.gather(acc["bin_sum"][None]).sum(0)
        bcnt = g.gather(acc["bin_cnt"][None]).sum(0)
        lens = g.gather(torch.cat(acc["lens"])) if acc["lens"] else torch.zeros(1)
        clipped = g.gather(torch.cat(acc["clipped"])) if acc["clipped"] else torch.zeros(1)
        seq = g.gather(torch.cat(acc["seq"])) if acc["seq"] else torch.zeros(1)
        times = g.gather(torch.tensor([acc["time_generate"], acc["time_teacher"]], device=g.device, dtype=torch.float64)[None]).max(0).values
        n_tr, n_ov = sums[1].item(), sums[3].item()
        sum_s, sum_s2 = seq.sum().item(), (seq**2).sum().item()
        self._pg = pg = g.gather(acc["pg"][None]).sum(0).tolist()  # PG-OPD's counts (zeros otherwise)
        self._teacher = g.gather(acc["teacher"][None]).sum(0).tolist()
        self._reward = reward = g.gather(acc["reward"][None]).sum(0).tolist()  # --reward-weight's sums (zeros otherwise)
        # + PG-OPD's probe forwards; + the generation of --reward-weight's continuations (grading only)
        grading = {"grade_s": reward[3], "grade_s2": reward[4]} if self.opd.reward_weight else {}
        flops_step = self.flops_fn(sum_s, sum_s2, *pg[-2:], **grading)
        self.flops_total += flops_step
        nz = torch.nonzero(bcnt).flatten()
        nb = int(nz[-1].item()) + 1 if nz.numel() else 0
        rec: dict[str, Any] = {
            "step": step,
            "prefix_len": int(acc.get("prefix_len", prefix_len)),
            "loss": loss,
            "kl": sums[0].item() / n_tr if n_tr else None,
            "kl_bin_size": self.opd.kl_bin,
            "kl_bin_mean": [(s / c if c else None) for s, c in zip(bsum[:nb].tolist(), bcnt[:nb].tolist(), strict=True)],
            "kl_bin_count": [int(c) for c in bcnt[:nb].tolist()],
            "rollout_len_mean": lens.mean().item(),
            "rollout_len_min": int(lens.min().item()),
            "rollout_len_max": int(lens.max().item()),
            "clipped_frac": clipped.mean().item(),
            "tokens_generated": int(lens.sum().item()),
            "tokens_scored": int(sums[2].item()),
            "tokens_trained": int(n_tr),
            "seq_tokens": int(sum_s),
            "seq_tokens_sq": int(sum_s2),
            "flops_step": flops_step,
            "flops_total": self.flops_total,
            "time_generate": times[0].item(),
            "time_teacher": times[1].item(),
            "time_update": max(time_step - times[0].item() - times[1].item(), 0.0),
            "time_step": time_step,
            "wall_time": self.wall_offset + (now - self._t0),
            "lr": logs.get("learning_rate"),
            "grad_norm": logs.get("grad_norm"),
        }
        for i, key in enumerate(maths.OVERLAP_KEYS):
            count = n_tr if key.startswith("entropy") else n_ov  # overlap metrics: metric steps only
            rec[key] = met[i].item() / count if count else None
        return rec


def teacher_metrics(names: list[str], sums: list[list[float]]) -> dict[str, Any]:
    """Per teacher: the mean KL estimate over the trained tokens it scored (None when none), those tokens, its
    rollouts; the token-weighted mean of the kl/<name> is the step's kl."""
    out: dict[str, Any] = {}
    for name, (kl, tokens, rollouts) in zip(names, sums, strict=True):
        out[f"kl/{name}"] = kl / tokens if tokens else None
        out[f"tokens_trained/{name}"] = int(tokens)
        out[f"rollouts/{name}"] = int(rollouts)
    return out
