"""A teacher behind a vLLM server (`opd train --teacher-server URL`): the rollouts' teacher log-probs over HTTP;
several teachers (`--teacher-server NAME=URL`, repeated), each rollout scored by the one its prompt names
(:class:`ServedTeachers`).

The server scores each rollout (prompt + completion) as a prompt, with ``prompt_logprobs`` = ``--teacher-topk``
(TRL's ``VLLMClient.get_sequence_logprobs``): per completion token the teacher's log-prob of that token, and its
top-k tokens with their log-probs. That is all the sampled-token loss and the KL estimate need (log q of the
sampled token), and the overlap metrics need only the teacher's top-k; a loss over the teacher's whole distribution
cannot be computed from it and is refused when the config is checked.

Start the server on the teacher, e.g. ``vllm serve <teacher> --host 127.0.0.1 --port 8001 --max-logprobs 16``.
"""

from __future__ import annotations

from typing import Any

import torch

from opd_cli.core.errors import OpdError
from opd_cli.core.models import _first_line


class ServedTeacher:
    """Client of a teacher's vLLM server. :meth:`score` returns the rollouts' teacher log-probs as tensors."""

    def __init__(self, url: str, topk: int, timeout: float):
        from requests.adapters import HTTPAdapter
        from urllib3.util.retry import Retry

        from opd_cli.core.vllm_engine import connect

        self.url, self.topk = url, topk
        self.client = connect(url, timeout, "teacher (--teacher-server)", role="teacher")
        # a dead server is reported after a few seconds of retries, not TRL's minute of back-off
        retry = Retry(total=3, connect=3, read=0, backoff_factor=0.5, allowed_methods=["POST", "GET"])
        self.client.session.mount("http://", HTTPAdapter(max_retries=retry))
        self.client.session.mount("https://", HTTPAdapter(max_retries=retry))

    def score(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor,
              completion_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Teacher log-probs of a rollout batch (prompts left-padded, completions right-padded):

        ``teacher_logp`` (B, T): log q of each completion token; ``teacher_top_ids`` / ``teacher_top_logp``
        (B, T, k): the teacher's top-k tokens per position, by rank (padding rows: ids 0, log-probs -inf).
        """
        seqs, starts = [], []
        for p, pm, c, cm in zip(prompt_ids, prompt_mask.bool(), completion_ids, completion_mask.bool(), strict=True):
            prompt = p[pm].tolist()
            seqs.append(prompt + c[cm].tolist())
            starts.append(len(prompt))
        res = self._request(seqs, starts)
        B, T = completion_ids.shape
        k = self.topk
        logp = torch.zeros(B, T)
        top_ids = torch.zeros(B, T, k, dtype=torch.long)
        top_logp = torch.full((B, T, k), float("-inf"))
        for i in range(B):
            n = len(res["actual_logprobs"][i])
            if n:
                logp[i, :n] = torch.tensor([x[0] for x in res["actual_logprobs"][i]])
                top_ids[i, :n] = torch.tensor(res["logprob_token_ids"][i])
                top_logp[i, :n] = torch.tensor(res["logprobs"][i])
        if torch.isinf(logp).any():
            raise OpdError(f"the teacher server at {self.url} gave no log-prob for some rollout tokens: serve the teacher whose "
                           "vocabulary the student uses")
        dev = completion_ids.device
        return {"teacher_logp": logp.to(dev), "teacher_top_ids": top_ids.to(dev), "teacher_top_logp": top_logp.to(dev)}

    def _request(self, seqs: list[list[int]], starts: list[int]) -> dict[str, Any]:
        import requests

        try:
            return self.client.get_sequence_logprobs(seqs, starts, top_logprobs=self.topk)
        except requests.RequestException as err:
            raise OpdError(f"the teacher server at {self.url} stopped answering ({_first_line(err)}): start it again, then "
                           "rerun with --if-exists resume (training goes on from the last checkpoint)") from None
        except Exception as err:  # TRL's client raises a bare Exception for an HTTP error status
            if "Request failed" not in str(err):
                raise
            raise OpdError(f"the teacher server at {self.url} refused the rollouts ({_first_line(err)}): check its "
                           "--max-logprobs (>= --teacher-topk) and --max-model-len") from None


class ServedTeachers:
    """Several served teachers, ``urls`` = {name: URL}: each rollout is scored by the teacher its prompt names, with one
    request per teacher per rollout batch, the requests sent concurrently (each teacher is its own server). With one
    teacher it is that teacher's :class:`ServedTeacher` and nothing more."""

    def __init__(self, urls: dict[str, str], topk: int, timeout: float):
        self.names = list(urls)
        self.teachers = [ServedTeacher(url, topk, timeout) for url in urls.values()]

    def score(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor,
              completion_mask: torch.Tensor, teacher_B: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """:meth:`ServedTeacher.score` of the whole batch, row b scored by teacher ``teacher_B[b]`` (an index into
        ``names``; None = the first teacher for every row)."""
        batch = (prompt_ids, prompt_mask, completion_ids, completion_mask)
        if teacher_B is None or len(self.teachers) == 1:
            return self.teachers[0].score(*batch)
        from concurrent.futures import ThreadPoolExecutor

        rows = {i: (teacher_B == i).nonzero().flatten() for i in range(len(self.teachers))}
        rows = {i: r for i, r in rows.items() if r.numel()}
        with ThreadPoolExecutor(max_workers=len(rows)) as pool:
            parts = {i: pool.submit(self.teachers[i].score, *(x[r] for x in batch)) for i, r in rows.items()}
            parts = {i: f.result() for i, f in parts.items()}  # an OpdError of any teacher is raised here
        out = {}
        for key, first in next(iter(parts.values())).items():
            full = first.new_zeros((completion_ids.shape[0], *first.shape[1:]))
            for i, part in parts.items():
                full[rows[i].to(full.device)] = part[key]
            out[key] = full
        return out
