"""Does the toy student fail in its plan? Student test accuracy alone vs. continuing from the teacher's plan.

The teacher writes a solution for each test problem (temperature 1); the student then continues from the prompt
plus the first ``--frac`` of that solution (default: the plan, ~10 % of its tokens). A large gain means the student's errors
sit in the plan at the start of its answer, the property prefix OPD relies on.

    .venv/bin/python analysis/toy_plan_probe.py [--root ~/.cache/opd/toy] [--samples 2]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=None, help="toy world folder (default $OPD_TOY_DIR or ~/.cache/opd/toy)")
    ap.add_argument("--split", default="test", help="split to probe (test, dev, ood)")
    ap.add_argument("--samples", type=int, default=2, help="student samples per problem and condition")
    ap.add_argument("--frac", type=float, default=0.0, help="prefix fraction of the teacher solution (0 = its plan line)")
    ap.add_argument("--limit", type=int, default=0, help="first N problems only (0 = all)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    from opd_cli.grading import grade_math
    from opd_cli.grading import math_accuracy as accuracy
    from opd_cli.models import load_model, load_tokenizer
    from opd_cli.prompts import build_prompt
    from opd_cli.toy.task import read_jsonl
    from opd_cli.toy.tiny_qwen import sample_completions
    from opd_cli.toy.world import load_world

    def grade(text: str, gold: str) -> bool:
        return grade_math(text, gold)[0]

    if args.threads:
        torch.set_num_threads(args.threads)
    world = load_world(Path(args.root) if args.root else None)
    records = read_jsonl(world.split_path(args.split))
    records = records[: args.limit] if args.limit else records
    tok = load_tokenizer(str(world.student_dir))
    student = load_model(str(world.student_dir), device="cpu")
    teacher = load_model(str(world.teacher_dir), device="cpu")
    prompts = [build_prompt(tok, r["question"]) for r in records]
    golds = [r["answer"] for r in records]

    teacher_texts = sample_completions(teacher, tok, prompts, temperature=1.0, seed=args.seed)
    prefixes = []
    for r, text in zip(records, teacher_texts, strict=True):
        if args.frac > 0:
            n = int(round(args.frac * len(text)))
        else:  # the teacher's plan line, as long as the reference plan
            n = r["plan_chars"]
        prefixes.append(text[:n])
    alone, guided = [], []
    for s in range(args.samples):
        alone.append(accuracy(sample_completions(student, tok, prompts, temperature=1.0, seed=args.seed + 1 + s), golds))
        cont = sample_completions(student, tok, [p + x for p, x in zip(prompts, prefixes, strict=True)],
                                  temperature=1.0, seed=args.seed + 101 + s)
        guided.append(accuracy([x + c for x, c in zip(prefixes, cont, strict=True)], golds))
    out = {
        "split": args.split,
        "problems": len(records),
        "samples": args.samples,
        "teacher_acc": sum(grade(t, g) for t, g in zip(teacher_texts, golds, strict=True)) / len(golds),
        "student_alone_acc": sum(alone) / len(alone),
        "student_with_teacher_plan_acc": sum(guided) / len(guided),
        "mean_prefix_chars": sum(len(x) for x in prefixes) / len(prefixes),
        "mean_teacher_solution_chars": sum(len(t) for t in teacher_texts) / len(teacher_texts),
    }
    print(f"student alone:                {out['student_alone_acc']:.1%}")
    print(f"student with teacher's plan:  {out['student_with_teacher_plan_acc']:.1%}   "
          f"(prefix {out['mean_prefix_chars']:.0f} of {out['mean_teacher_solution_chars']:.0f} tokens)")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
