"""`opd eval`'s options: :class:`EvalConfig` (recipes/eval-*.yaml fill the same fields). No torch here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from opd_cli.core.config import check, field
from opd_cli.core.errors import OpdError
from opd_cli.core.generation import check_backend
from opd_cli.core.models import DEVICES, DTYPES
from opd_cli.core.runs import IF_EXISTS
from opd_cli.toy.world import check_toy_student

TOY_MODELS = ("student", "teacher")
EVAL_TEMPLATES = ("auto", "chat", "plain")


@dataclass
class EvalConfig:
    """Options of `opd eval` (recipes/eval-*.yaml fill the same fields)."""

    model: str | None = field(None, help="Hub id or local model folder; off (None) = a toy-world model (--toy-model) or --run.")
    toy_model: str = field("student", help="Without --model/--run: which toy-world model to evaluate, student | teacher.")
    toy_student: str = field("large", help="With --toy-model student: the toy world's large (student/) or small (student-small/) student.")
    run: str | None = field(None, help="Training run folder whose checkpoints to evaluate; None = off.")
    steps: list[int] = field([], help="Checkpoint steps of --run (0 = the run's initial student); empty = every checkpoint.")
    initial: bool = field(False, help="With --run and no --steps: evaluate step 0 (the initial student) too, before the checkpoints.")
    benchmark: list[str] = field([], help="Registered benchmarks (toy, toy-ood, math500, aime24, aime25, gpqa, mmlu-pro, ...); empty = toy for toy models.")
    data: str | None = field(None, help="Local .jsonl/.json/.parquet/.csv problem file, named by its stem; None = off.")
    question_column: str | None = field(None, help="Question column of --data; None = auto (question/problem/prompt...).")
    answer_column: str | None = field(None, help="Answer column of --data; None = auto (answer/solution...).")
    dev_benchmark: str | None = field(None, help="Benchmark that picks the best checkpoint of --run; None = the first one.")
    best_benchmark: list[str] = field([], help="With --run: benchmarks evaluated only at the best dev checkpoint, once the dev scores pick it (e.g. toy, toy-ood); empty = off.")
    samples: int = field(4, help="Completions per problem, the n of Mean Acc@n (>= 1).")
    samples_per_benchmark: dict[str, int] = field({}, help="Per-benchmark n overriding `samples`, e.g. {aime24: 16} (recipes only).")
    limit: int = field(0, help="Evaluate only the first N problems of each --benchmark; 0 = all. --best-benchmark splits are always whole.")
    temperature: float = field(1.0, help="Sampling temperature; 0 = greedy.")
    top_p: float = field(1.0, help="Nucleus sampling mass; 1.0 = off.")
    max_new_tokens: int = field(1024, help="Response cap in tokens (the paper evaluates with 16384).")
    batch_size: int = field(16, help="Sequences per generate call (hf backend).")
    backend: str = field("hf", help="hf (transformers generate) | vllm (one engine; the vllm extra on a GPU, make install-vllm on a CPU).")
    template: str = field("auto", help="Prompt template: auto (chat template if the tokenizer has one) | chat | plain.")
    think: bool = field(True, help="Append <think> to the prompt (paper default); false = off.")
    dtype: str = field("auto", help="auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16.")
    device: str = field("auto", help="auto (cuda when available) | cpu | cuda | mps.")
    seed: int = field(0, help="Sampling seed (and the MMLU-Pro sample / GPQA shuffle seed).")
    output_dir: str | None = field(None, help="Output folder; None = runs/eval-<model label> (with --run: <run>/eval).")
    if_exists: str = field("raise", help="Existing outputs: raise | resume (skip finished benchmarks) | overwrite.")

    command = "eval"

    def __post_init__(self) -> None:
        self.benchmark = [b.strip() for item in self.benchmark for b in str(item).split(",") if b.strip()]
        check(self.samples >= 1, f"--samples must be at least 1, got {self.samples}")
        for name, n in self.samples_per_benchmark.items():
            check(isinstance(n, int) and n >= 1, f"samples_per_benchmark[{name}] must be an integer >= 1, got {n!r}")
        check(self.limit >= 0, f"--limit must be >= 0 (0 = all problems), got {self.limit}")
        check(self.temperature >= 0, f"--temperature must be >= 0 (0 = greedy), got {self.temperature}")
        check(0 < self.top_p <= 1, f"--top-p must be in (0, 1] (1 = off), got {self.top_p}")
        check(self.max_new_tokens >= 1, f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        check(self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}")
        check_backend(self.backend)  # a known backend, and vLLM installed when asked for
        check(self.template in EVAL_TEMPLATES, f"unknown --template {self.template!r}: use one of {', '.join(EVAL_TEMPLATES)}")
        check(self.toy_model in TOY_MODELS, f"--toy-model must be student or teacher, got {self.toy_model!r}")
        check_toy_student(self.toy_student)
        check(self.toy_student == "large" or (self.model is None and self.run is None and self.toy_model == "student"),
              "--toy-student small picks the toy student to evaluate: drop it with --model, --run (its config names "
              "its student) or --toy-model teacher")
        check(self.dtype in DTYPES, f"unknown --dtype {self.dtype!r}: use one of {', '.join(DTYPES)}")
        check(self.device in DEVICES or self.device.startswith("cuda:"), f"unknown --device {self.device!r}: use one of {', '.join(DEVICES)}")
        check(self.if_exists in IF_EXISTS, f"--if-exists must be one of {', '.join(IF_EXISTS)}, got {self.if_exists!r}")
        check(not (self.model and self.run), "pass either --model or --run, not both")
        check(all(s >= 0 for s in self.steps), f"--steps must be >= 0, got {self.steps}")
        check(not self.steps or bool(self.run), "--steps needs --run (a training run folder)")
        check(not self.initial or bool(self.run), "--initial needs --run (a training run folder)")
        self.best_benchmark = [b.strip() for item in self.best_benchmark for b in str(item).split(",") if b.strip()]
        from opd_cli.data import benchmark_names

        known = benchmark_names() + ([Path(self.data).name.split(".")[0]] if self.data else [])  # --data's name
        for name in [*self.benchmark, *self.best_benchmark, *([self.dev_benchmark] if self.dev_benchmark else [])]:
            check(name in known, f"unknown benchmark {name!r}: use one of {', '.join(known)}, or --data FILE for a local file")
        check(not self.best_benchmark or bool(self.run), "--best-benchmark needs --run (a training run folder)")
        if self.model is not None and not self.benchmark and self.data is None:
            raise OpdError("--model needs something to evaluate on: pass --benchmark NAME (e.g. math500) or --data FILE")

    def n_for(self, benchmark: str) -> int:
        return int(self.samples_per_benchmark.get(benchmark, self.samples))
