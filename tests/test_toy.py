"""The toy world: generator, tokenizer, world cache (manifest, hashes, rebuild) and the miniature build."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
from pathlib import Path

import pytest

from opd_cli.core.errors import OpdError
from opd_cli.core.prompts import build_prompt
from opd_cli.toy import task

SIZES = {"train": 400, "dev": 50, "test": 50, "ood": 50}
OP = r"[a-h][+*]\d"


@pytest.fixture(scope="module")
def splits():
    return task.generate_splits(seed=3, sizes=SIZES)


def _recompute(question: str) -> tuple[int, list[str]]:
    """Independent re-computation from the question text: sort the tagged ops by tag, apply them mod 10."""
    m = re.fullmatch(rf"(\d): ((?:{OP} ?)+)", question)
    assert m, question
    value = int(m.group(1))
    ops = sorted(m.group(2).split())
    for op in ops:
        k = int(op[2])
        value = {"+": value + k, "*": value * k}[op[1]] % 10
    return value, ops


def _plan(solution: str) -> list[str]:
    head = solution.split("\n")[0]
    assert head.startswith("plan:"), head
    assert re.fullmatch(rf"(?:{OP})+", head[5:]), head
    return re.findall(OP, head)


def test_generator_is_deterministic_by_seed():
    a = task.generate_splits(seed=5, sizes=SIZES)
    b = task.generate_splits(seed=5, sizes=SIZES)
    c = task.generate_splits(seed=6, sizes=SIZES)
    assert a == b
    assert [r["question"] for r in a["test"]] != [r["question"] for r in c["test"]]
    # evaluation splits do not depend on how much training data is drawn
    d = task.generate_splits(seed=5, sizes={**SIZES, "train": 10})
    assert d["test"] == a["test"] and d["ood"] == a["ood"]


def test_answers_match_independent_recomputation(splits):
    for records in splits.values():
        for r in records:
            value, _ = _recompute(r["question"])
            assert r["answer"] == str(value)
            assert r["solution"].endswith("</think>\n\\boxed{" + r["answer"] + "}")


def test_operations_alternate_multiply_and_add_along_the_tags(splits):
    for r in splits["train"][:200]:
        _, ops = _recompute(r["question"])
        kinds = [op[1] for op in ops]
        assert all(a != b for a, b in zip(kinds, kinds[1:], strict=False)), ops


def test_plan_is_sorted_by_tag_and_execution_follows_it(splits):
    same_as_prompt = []
    for r in splits["train"][:200] + splits["ood"]:
        start, ops = _recompute(r["question"])
        prompt_ops = r["question"].split(": ", 1)[1].split()
        assert _plan(r["solution"]) == ops
        assert r["solution"][: r["plan_chars"]] == "plan:" + "".join(ops) + "\n"
        lines = [ln for ln in r["solution"].split("\n")[1:] if "->" in ln]
        assert [ln.split(":")[0] for ln in lines] == ops  # one execution line per planned op, in the plan's order
        value = int(r["question"].split(":")[0])
        for ln, op in zip(lines, ops, strict=True):  # each line writes the arithmetic out, then keeps the last digit
            full = value + int(op[2]) if op[1] == "+" else value * int(op[2])
            assert ln == f"{op}: {value}{op[1:]}={full} -> {full % 10}"
            value = full % 10
        # the student's plan: the teacher's operations with neighbours swapped; its execution follows it
        student_plan = _plan(r["student_solution"])
        assert sorted(student_plan) == ops
        student_steps = [ln.split(":")[0] for ln in r["student_solution"].split("\n")[1:] if "->" in ln]
        assert student_steps == student_plan
        value = int(r["question"].split(":")[0])
        for op in student_plan:
            value = task.apply_op(value, op[1:])
        assert r["student_answer"] == str(value)
        same_as_prompt.append(student_plan == prompt_ops)
        for i, op in enumerate(student_plan):  # every operation stays within one place of its correct slot
            assert op in ops[max(0, i - 1) : i + 2]
    assert sum(same_as_prompt) / len(same_as_prompt) < 0.2  # not tied to the prompt's order


def test_swap_neighbours_swaps_disjoint_pairs():
    import random

    ops = list("abcdefgh")
    assert task.swap_neighbours(ops, random.Random(0), p=0.0) == ops
    assert task.swap_neighbours(ops, random.Random(0), p=1.0) == list("badcfehg")
    rates = [task.swap_neighbours(ops, random.Random(i)) != ops for i in range(200)]
    assert sum(rates) / 200 > 0.9  # eight operations: almost always at least one swap


def test_wrong_plan_almost_always_gives_a_wrong_answer(splits):
    """Neighbours never commute (but for +5), so a swapped plan is right only when its final digit is by chance."""
    swapped = [r for r in splits["train"] if _plan(r["student_solution"]) != _plan(r["solution"])]
    assert len(swapped) / len(splits["train"]) > 0.75
    lucky = sum(r["student_answer"] == r["answer"] for r in swapped) / len(swapped)
    assert lucky < 0.15


def test_plan_is_a_tenth_of_the_answer_and_the_prompt_a_fifth_of_the_sequence(toy_tokenizer_dir, splits):
    """In tokens: the plan at most ~10 % of the answer, the prompt at most 1/4 of prompt + answer, so prefix OPD
    over the plan costs a small fraction of full OPD."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(toy_tokenizer_dir))
    plan_fracs, prompt_fracs = [], []
    for name, records in splits.items():
        for r in records:
            prompt = len(tok(build_prompt(tok, r["question"]), add_special_tokens=False)["input_ids"])
            answer = len(tok(r["solution"], add_special_tokens=False)["input_ids"]) + 1  # + eos
            plan = len(tok(r["solution"][: r["plan_chars"]], add_special_tokens=False)["input_ids"])
            assert plan == r["plan_tokens"] == r["n_ops"] + 2
            assert 60 <= answer <= 160, (name, answer)
            plan_fracs.append(plan / answer)
            prompt_fracs.append(prompt / (prompt + answer))
    assert max(plan_fracs) <= 0.12 and sum(plan_fracs) / len(plan_fracs) <= 0.1
    assert max(prompt_fracs) <= 0.25
    assert min(r["n_ops"] for r in splits["ood"]) > sum(r["n_ops"] for r in splits["test"]) / len(splits["test"])


def test_splits_are_disjoint_and_ids_unique(splits):
    questions = [r["question"] for records in splits.values() for r in records]
    ids = [r["id"] for records in splits.values() for r in records]
    assert len(set(questions)) == len(questions)
    assert len(set(ids)) == len(ids)
    assert {k: len(v) for k, v in splits.items()} == SIZES


def test_tokenizer_round_trips_every_task_character(toy_tokenizer_dir, splits):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(toy_tokenizer_dir))
    assert tok.chat_template is None
    for tkn in ("<think>", "</think>", tok.pad_token, tok.eos_token):
        ids = tok(tkn, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and ids[0] != tok.unk_token_id, tkn
    assert tok.pad_token_id != tok.eos_token_id
    chars = sorted({c for records in splits.values() for r in records for c in r["question"] + r["solution"]})
    ids = tok("".join(chars), add_special_tokens=False)["input_ids"]
    assert len(ids) == len(chars) and tok.unk_token_id not in ids
    for r in splits["test"][:20]:
        text = build_prompt(tok, r["question"]) + r["solution"]
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
        assert tok.decode(ids + [tok.eos_token_id], skip_special_tokens=True) == text  # </think> survives
    assert build_prompt(tok, "q") == "q\n<think>\n"
    from opd_cli.toy.tokenizer import encode_fast

    texts = [build_prompt(tok, r["question"]) + r["solution"] for r in splits["dev"]] + ["é<think></think>x"]
    assert encode_fast(tok, texts) == tok(texts, add_special_tokens=False)["input_ids"]


def test_tiny_model_dirs_share_the_toy_vocab(tiny_model_dirs):
    from transformers import AutoConfig, AutoTokenizer

    student, teacher = tiny_model_dirs
    cs, ct = AutoConfig.from_pretrained(str(student)), AutoConfig.from_pretrained(str(teacher))
    assert cs.model_type == ct.model_type == "qwen3"
    assert cs.vocab_size == ct.vocab_size == len(AutoTokenizer.from_pretrained(str(student)))
    assert (cs.num_hidden_layers, cs.hidden_size) != (ct.num_hidden_layers, ct.hidden_size)


# role -> (folder, ToyBuildConfig field prefix, seed offset): what a build with max_attempts 1 records
ROLES = {
    "teacher": ("teacher", "teacher", 0),
    "student": ("student", "student", 1),
    "student_small": ("student-small", "small", 2),
}


def _qwen3_params(c: dict) -> int:
    """Parameters of a Qwen3ForCausalLM from its config.json, counted tensor by tensor."""
    h, i, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    d = c.get("head_dim") or h // c["num_attention_heads"]
    q, kv = c["num_attention_heads"] * d, c["num_key_value_heads"] * d
    # per layer: q, k, v, o projections; q_norm, k_norm; gate, up, down; two RMSNorms
    layer = h * q + 2 * h * kv + q * h + 2 * d + 3 * h * i + 2 * h
    head = 0 if c.get("tie_word_embeddings") else v * h
    return v * h + c["num_hidden_layers"] * layer + h + head  # embeddings, layers, final norm, lm_head


def _last_boxed(text: str) -> str | None:
    found = re.findall(r"\\boxed\{([^{}]*)\}", text)
    return found[-1].strip() if found else None


def test_mini_build_writes_a_valid_manifest(tiny_world):
    from opd_cli.toy.build import ToyBuildConfig
    from opd_cli.toy.world import load_world, sha256

    cfg = ToyBuildConfig.miniature(tiny_world.root)
    m = tiny_world.manifest
    sizes = {"train": 256, "dev": 16, "test": 16, "ood": 16}  # miniature: train_size 256, eval_size 16
    assert m["seed"] == m["requested_seed"] == 0 and m["sizes"] == sizes and m["threads"] == 1
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in ("root", "rebuild")}
    assert m["config"] == {"command": "toy build", **fields}  # what was built, not where
    # the data files hold the splits the seed generates, and nothing else
    regenerated = task.generate_splits(seed=0, sizes=sizes)
    for name in sizes:
        assert task.read_jsonl(tiny_world.split_path(name)) == regenerated[name], name
    for role, (folder, prefix, offset) in ROLES.items():
        c = json.loads((tiny_world.root / folder / "config.json").read_text())
        shape = {k: getattr(cfg, f"{prefix}_{k}") for k in ("layers", "hidden", "heads")}
        assert (
            m[role]["shape"]
            == shape
            == {"layers": c["num_hidden_layers"], "hidden": c["hidden_size"], "heads": c["num_attention_heads"]}
        )
        assert m[role]["params"] == _qwen3_params(c), role
        # check_every 0 (no early stop) and one attempt: every configured step ran, with seed = seed + role offset
        expected = (offset, 1, getattr(cfg, f"{prefix}_steps"))
        assert (m[role]["seed"], m[role]["attempts"], m[role]["steps"]) == expected, role
    assert m["student_small"]["params"] < m["student"]["params"]
    for rel, digest in m["files"].items():
        assert sha256(tiny_world.root / rel) == digest
    assert {
        "teacher/config.json",
        "student/config.json",
        "student-small/config.json",
        "tokenizer/tokenizer.json",
        *(f"data/{name}.jsonl" for name in sizes),
    } <= set(m["files"])
    assert (tiny_world.teacher_dir / "config.json").is_file() and (tiny_world.student_dir / "tokenizer.json").is_file()
    assert load_world(tiny_world.root).manifest == m
    with pytest.raises(OpdError, match="unknown toy split 'validation'"):
        tiny_world.split_path("validation")


def test_mini_build_trains_each_model_and_the_teacher_best(tiny_world):
    """Mean NLL of the test split's reference solutions (teacher-forced, plain HF forward): each saved model is below
    the random model it started from (same shape and recorded seed), and the teacher (correct plans, the most steps)
    is below the student, which is below the compact student (fewer steps, smaller)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from opd_cli.toy.tiny_qwen import random_model

    tok = AutoTokenizer.from_pretrained(str(tiny_world.tokenizer_dir))
    pairs = []
    for r in task.read_jsonl(tiny_world.split_path("test")):
        prompt = tok(build_prompt(tok, r["question"]), add_special_tokens=False)["input_ids"]
        pairs.append((prompt, tok(r["solution"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]))

    def nll(model) -> float:
        total = count = 0.0
        with torch.no_grad():
            for prompt, answer in pairs:
                logits = model(input_ids=torch.tensor([prompt + answer])).logits[0, len(prompt) - 1 : -1].float()
                total -= torch.log_softmax(logits, -1).gather(-1, torch.tensor(answer)[:, None]).sum().item()
                count += len(answer)
        return total / count

    m, trained = tiny_world.manifest, {}
    for role, (folder, _, _) in ROLES.items():
        trained[role] = nll(AutoModelForCausalLM.from_pretrained(str(tiny_world.root / folder)).eval())
        s = m[role]["shape"]
        start = nll(random_model(tok, s["layers"], s["hidden"], s["heads"], seed=m[role]["seed"]).eval())
        assert trained[role] < start - 0.1, (role, trained[role], start)
    assert trained["teacher"] < trained["student"] < trained["student_small"], trained


def _independent_test_acc(w, folder: str, max_new_tokens: int, seed: int, threads: int) -> float:
    """The test-split accuracy of ``w.root / folder`` sampled at temperature 1, made without opd's sampling or
    grading code: the prompts are left-padded into batches of 100 (as the build samples them) and sampled by
    transformers' ``generate`` directly, seeded once as the build seeds it, cut at the first EOS, and graded here by
    the last \\boxed{}."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(w.tokenizer_dir))
    test = task.read_jsonl(w.split_path("test"))
    ids = [tok(build_prompt(tok, r["question"]), add_special_tokens=False)["input_ids"] for r in test]
    model = AutoModelForCausalLM.from_pretrained(str(w.root / folder)).eval()
    config_eos = model.generation_config.eos_token_id
    eos = {tok.eos_token_id} | set(config_eos if isinstance(config_eos, list) else [config_eos] if config_eos is not None else [])
    pad, right = tok.pad_token_id, 0
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # the build's thread count: CPU sums, and so the samples, depend on it
    try:
        torch.manual_seed(seed)
        for start in range(0, len(ids), 100):
            batch, records = ids[start : start + 100], test[start : start + 100]
            width = max(len(x) for x in batch)
            with torch.no_grad():
                out = model.generate(
                    input_ids=torch.tensor([[pad] * (width - len(x)) + x for x in batch]),
                    attention_mask=torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in batch]),
                    max_new_tokens=max_new_tokens, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                    pad_token_id=pad, eos_token_id=sorted(eos),
                )
            for row, r in zip(out[:, width:].tolist(), records, strict=True):
                cut = next((j for j, t in enumerate(row) if t in eos), len(row))
                right += _last_boxed(tok.decode(row[:cut], skip_special_tokens=True)) == r["answer"]
    finally:
        torch.set_num_threads(before)
    return right / len(test)


def test_mini_build_records_the_sampled_test_accuracy(tiny_world):
    """Each recorded test_acc of a miniature build is its saved model's test accuracy sampled at temperature 1
    (the build's seed, token cap and thread count), as sampled and graded independently of opd's code. (These
    barely trained models score 0 here; the shipped world's test below checks non-zero accuracies.)"""
    from opd_cli.toy.build import ToyBuildConfig

    cfg = ToyBuildConfig.miniature(tiny_world.root)
    for role, (folder, _, _) in ROLES.items():
        want = _independent_test_acc(tiny_world, folder, cfg.max_new_tokens, cfg.seed, cfg.threads)
        assert tiny_world.manifest[role]["test_acc"] == want, role


def test_shipped_world_records_the_sampled_test_accuracy():
    """The shipped world's recorded test accuracies (teacher 92.5 %, students 18.0 % / 20.5 % on 200 problems)
    are what its models score when sampled and graded independently of opd's code with the manifest's seed, token
    cap and thread count. Exact on the CPUs the world was built on; a CPU whose float sums differ would sample other
    answers (then this fails while test_shipped_world.py's hash check passes)."""
    from opd_cli.toy import world

    w = world.load_world(world.SHIPPED)
    m = w.manifest
    assert m["teacher"]["test_acc"] > 0.5 and min(m["student"]["test_acc"], m["student_small"]["test_acc"]) > 0.1
    for role, (folder, _, _) in ROLES.items():
        want = _independent_test_acc(w, folder, m["config"]["max_new_tokens"], m["requested_seed"], m["threads"])
        assert m[role]["test_acc"] == want, (role, want)


def test_build_test_accuracy_grades_the_sampled_answers(toy_tokenizer_dir):
    """The build's accuracy check on a stand-in model that writes a chosen completion per prompt: 3 of 5 right."""
    import torch
    from transformers import AutoTokenizer

    from opd_cli.toy.build import ToyBuildConfig, _test_accuracy

    tok = AutoTokenizer.from_pretrained(str(toy_tokenizer_dir))
    records = task.generate_splits(seed=2, sizes={"train": 1, "dev": 1, "test": 5, "ood": 1})["test"]

    def wrong(r):  # the same solution with another final digit
        return r["solution"].replace(
            "\\boxed{" + r["answer"] + "}", "\\boxed{" + str((int(r["answer"]) + 1) % 10) + "}"
        )

    written = [
        records[0]["solution"],
        wrong(records[1]),
        records[2]["solution"],
        "plan:a+1\nno answer",
        records[4]["solution"],
    ]
    by_prompt = {build_prompt(tok, r["question"]): text for r, text in zip(records, written, strict=True)}

    class Writer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def generate(self, input_ids, attention_mask=None, pad_token_id=0, **kwargs):
            mask = attention_mask if attention_mask is not None else input_ids != pad_token_id
            new = [
                tok(by_prompt[tok.decode(ids[keep.bool()].tolist())], add_special_tokens=False)["input_ids"]
                + [tok.eos_token_id]
                for ids, keep in zip(input_ids, mask, strict=True)
            ]
            width = max(len(n) for n in new)
            return torch.cat([input_ids, torch.tensor([n + [pad_token_id] * (width - len(n)) for n in new])], 1)

    cfg = ToyBuildConfig.miniature("/nonexistent")
    assert _test_accuracy(Writer(), tok, records, cfg, seed=0) == pytest.approx(3 / 5)  # records 0, 2 and 4


def test_world_models_load_through_opd_models(tiny_world):
    from opd_cli.core.models import check_same_vocab, load_model, load_tokenizer

    ts, tt = load_tokenizer(str(tiny_world.student_dir)), load_tokenizer(str(tiny_world.teacher_dir))
    ms, mt = (
        load_model(str(tiny_world.student_dir), device="cpu"),
        load_model(str(tiny_world.teacher_dir), device="cpu"),
    )
    check_same_vocab(ts, tt, ms, mt)  # raises on a mismatch
    # one row of logits per token of the toy tokenizer (plan:, every operation and <think> included), for both models
    assert ms.get_output_embeddings().weight.shape[0] == mt.get_output_embeddings().weight.shape[0] == len(ts)
    ids = ts("plan:a*7b+5", add_special_tokens=False)["input_ids"]
    assert len(ids) == 3 and ts.unk_token_id not in ids


@pytest.mark.parametrize("damage", ["manifest", "model", "missing", "half"])
def test_damaged_world_is_detected_and_rebuilt(tiny_world, tmp_path, damage):
    from opd_cli.toy.build import ToyBuildConfig, run_toy_build
    from opd_cli.toy.world import MANIFEST, invalid_reason, load_world

    root = tmp_path / "world"
    shutil.copytree(tiny_world.root, root)
    if damage == "manifest":
        (root / MANIFEST).write_text("{not json")
    elif damage == "model":
        with (root / "teacher" / "model.safetensors").open("r+b") as f:
            f.seek(200)
            f.write(b"\x00\x01\x02\x03")
    elif damage == "missing":
        (root / "data" / "test.jsonl").unlink()
    else:  # a build that stopped before writing its manifest
        (root / MANIFEST).unlink()
    why = {
        "manifest": "manifest.json is not valid JSON",
        "model": "model.safetensors does not match its hash",
        "missing": "test.jsonl is missing",
        "half": "has no manifest.json",
    }[damage]
    assert why in invalid_reason(root)
    with pytest.raises(OpdError, match="no valid toy world"):
        load_world(root)
    cfg = dataclasses.replace(ToyBuildConfig.miniature(root), rebuild=False, teacher_steps=2, student_steps=2)
    world = run_toy_build(cfg)
    assert invalid_reason(root) is None
    assert (world.manifest["teacher"]["steps"], world.manifest["student"]["steps"]) == (2, 2)  # built anew, with cfg


def test_valid_world_is_reused_not_rebuilt(tiny_world, tmp_path):
    from opd_cli.toy.build import ToyBuildConfig, ensure_world, run_toy_build
    from opd_cli.toy.world import MANIFEST

    root = tmp_path / "world"
    shutil.copytree(tiny_world.root, root)
    before = (root / MANIFEST).read_text()
    cfg = dataclasses.replace(ToyBuildConfig.miniature(root), rebuild=False)
    assert run_toy_build(cfg).manifest == json.loads(before)
    assert ensure_world(root, seed=0).manifest == json.loads(before)
    assert (root / MANIFEST).read_text() == before


def test_default_root_follows_env(monkeypatch, tmp_path):
    from opd_cli.toy.world import default_root

    monkeypatch.setenv("OPD_TOY_DIR", str(tmp_path / "w"))
    assert default_root() == tmp_path / "w"
    monkeypatch.delenv("OPD_TOY_DIR")
    from opd_cli.toy import world

    assert default_root() == world.SHIPPED  # the world shipped with opd
    monkeypatch.setattr(world, "SHIPPED", tmp_path / "not-shipped")
    assert default_root() == Path("~/.cache/opd/toy").expanduser()  # an install without it


def test_build_config_checks_and_recipe(tmp_path):
    from opd_cli.core.config import build_config
    from opd_cli.toy.build import ToyBuildConfig

    with pytest.raises(OpdError, match="teacher_steps"):
        ToyBuildConfig(teacher_steps=0)
    with pytest.raises(OpdError, match="fraction"):
        ToyBuildConfig(min_teacher_acc=1.5)
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "toy-build.yaml"
    assert recipe.read_text().startswith("# opd toy build")
    cfg = build_config(ToyBuildConfig, recipe, {"seed": 4})
    assert cfg.seed == 4 and cfg.min_teacher_acc == 0.9
    assert dataclasses.replace(build_config(ToyBuildConfig, recipe), root="") == ToyBuildConfig(
        root=""
    )  # = the defaults


def test_toy_build_cli_runs_a_recipe(tiny_world, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from opd_cli.cli import app
    from opd_cli.core.config import to_dict
    from opd_cli.toy.build import ToyBuildConfig

    fields = to_dict(dataclasses.replace(ToyBuildConfig.miniature(tmp_path / "w"), teacher_steps=2, student_steps=2))
    recipe = tmp_path / "mini.yaml"
    recipe.write_text(yaml.safe_dump({k: v for k, v in fields.items() if k != "command"}))
    runner = CliRunner()
    result = runner.invoke(app, ["toy", "build", "--recipe", str(recipe)])
    assert result.exit_code == 0, result.output
    m = json.loads((tmp_path / "w" / "manifest.json").read_text())
    assert (m["teacher"]["steps"], m["student"]["steps"], m["config"]["train_size"]) == (2, 2, fields["train_size"])
    assert "one sample per test problem (temperature 1; too few to rank the students):" in result.output
    assert f"  teacher {m['teacher']['test_acc']:.1%}   student (large) {m['student']['test_acc']:.1%}" in result.output
    again = runner.invoke(app, ["toy", "build", "--recipe", str(recipe), "--reuse"])
    assert again.exit_code == 0 and "reused" in again.output
    bad = runner.invoke(app, ["toy", "build", "--recipe", str(recipe), "--min-teacher-acc", "2"])
    assert bad.exit_code == 2 and "fraction" in bad.output


@pytest.mark.slow
def test_full_build_meets_acceptance(tmp_path):
    from opd_cli.toy.build import ToyBuildConfig, run_toy_build

    world = run_toy_build(ToyBuildConfig(root=str(tmp_path / "toy"), rebuild=True))
    m = world.manifest
    assert m["teacher"]["test_acc"] >= 0.9 and 0.05 <= m["student"]["test_acc"] <= 0.4
    assert 0.05 <= m["student_small"]["test_acc"] <= m["student"]["test_acc"]  # the compact student is the weaker one
    assert m["build_seconds"] <= 6 * 60


def test_length_bucketed_order_is_a_permutation_with_tight_batches():
    import random

    from opd_cli.toy.tiny_qwen import _length_bucketed_order

    data = [([0] * n, 1) for n in random.Random(0).choices(range(50, 250), k=1000)]
    order = _length_bucketed_order(data, 32, random.Random(1))
    assert sorted(order) == list(range(1000))
    spread = [
        max(len(data[j][0]) for j in order[i : i + 32]) - min(len(data[j][0]) for j in order[i : i + 32])
        for i in range(0, 992, 32)
    ]
    assert sum(spread) / len(spread) < 60  # random batches of 32 would spread ~190


def test_sft_early_cooldown_ends_training_k_steps_later(toy_tokenizer_dir):
    from transformers import AutoTokenizer

    from opd_cli.toy.tiny_qwen import encode_pairs, random_model, sft

    tok = AutoTokenizer.from_pretrained(str(toy_tokenizer_dir))
    recs = task.generate_splits(seed=1, sizes={"train": 16, "dev": 1, "test": 1, "ood": 1})["train"]
    data = encode_pairs(tok, [(r["question"], r["solution"]) for r in recs])
    model = random_model(tok, 1, 16, 2)
    seen = []

    def on_step(step, loss):
        seen.append(step)
        return 4 if step == 3 else None

    losses = sft(
        model, data, steps=50, batch_size=4, lr=1e-3, warmup=1, seed=0, pad_id=tok.pad_token_id, on_step=on_step
    )
    assert len(losses) == 7 and seen == list(range(1, 8))
    seen.clear()
    losses = sft(
        model,
        data,
        steps=50,
        batch_size=4,
        lr=1e-3,
        warmup=1,
        seed=0,
        pad_id=tok.pad_token_id,
        on_step=lambda step, loss: seen.append(step) or (0 if step == 5 else None),
    )
    assert len(losses) == 5 and seen == [1, 2, 3, 4, 5]  # 0 = end now


def test_teacher_stop_policy(toy_tokenizer_dir, monkeypatch: pytest.MonkeyPatch):
    """A greedy check at stop_acc starts the cooldown; a check done_after steps later at done_sampled ends it."""
    from rich.progress import Progress
    from transformers import AutoTokenizer

    from opd_cli.toy import build, tiny_qwen
    from opd_cli.toy.tiny_qwen import encode_pairs

    tok = AutoTokenizer.from_pretrained(str(toy_tokenizer_dir))
    splits = task.generate_splits(seed=1, sizes={"train": 16, "dev": 4, "test": 1, "ood": 1})
    data = encode_pairs(tok, [(r["question"], r["solution"]) for r in splits["train"]])
    accs = iter([(0.1, 0.0), (0.6, 0.2), (0.9, 0.97), (1.0, 0.9), (1.0, 0.96), (1.0, 1.0)])
    monkeypatch.setattr(tiny_qwen, "teacher_forced_scores", lambda *a, **k: next(accs))
    cfg = build.ToyBuildConfig.miniature(root="/nonexistent")
    cfg = dataclasses.replace(
        cfg,
        teacher_steps=60,
        teacher_min_steps=5,
        check_every=5,
        stop_acc=0.5,
        stop_cooldown=30,
        done_after=10,
        done_sampled=0.95,
    )
    with Progress(disable=True) as progress:
        _, info = build._train("teacher", cfg, tok, data, 0, splits["dev"], progress)
    # 15: sampled 0.97 but only 5 steps into the cooldown; 20: greedy 1.0 but sampled 0.9; 25: done
    assert info["stopped_at"] == 10 and info["done_at"] == 25 and info["steps"] == 25
    assert info["dev_checks"] == {"5": 0.1, "10": 0.6, "15": 0.9, "20": 1.0, "25": 1.0}
    assert info["dev_sampled"]["25"] == 0.96


def test_teacher_forced_scores_count_sequences_reproduced_by_greedy():
    import types

    import torch

    from opd_cli.toy.tiny_qwen import teacher_forced_scores

    class NextTokenOracle(torch.nn.Module):  # predicts the true next token, as in the `truth` sequences below
        training = False

        def forward(self, input_ids, attention_mask):
            nxt = torch.roll(input_ids, -1, dims=1) if self.shift else input_ids
            return types.SimpleNamespace(logits=torch.nn.functional.one_hot(nxt, 10).float())

    oracle = NextTokenOracle()
    oracle.shift = True
    data = [([1, 2, 3, 4, 5], 2), ([5, 6, 7], 1)]
    assert teacher_forced_scores(oracle, data, pad_id=0)[0] == 1.0
    oracle.shift = False  # predicts the current token: never right
    assert teacher_forced_scores(oracle, data, pad_id=0)[0] == 0.0
    oracle.shift = True
    greedy, sampled = teacher_forced_scores(oracle, data, pad_id=0)
    p = math.e / (math.e + 9)  # softmax of a one-hot logit row over 10 tokens
    assert greedy == 1.0 and sampled == pytest.approx((p**3 + p**2) / 2)  # 3 and 2 completion tokens


def test_cached_world_is_reused_across_teacher_schedule_changes():
    from opd_cli.toy.build import ToyBuildConfig, _config_key, _same_world

    old = {k: v for k, v in _config_key(ToyBuildConfig()).items() if k != "stop_cooldown"}
    old.update(
        teacher_steps=600, teacher_min_steps=300, check_every=0, check_size=64
    )  # a world built before early stop
    assert _same_world(old, ToyBuildConfig())
    assert not _same_world(old, ToyBuildConfig(seed=1))
    assert not _same_world(old, ToyBuildConfig(student_steps=300))
    assert not _same_world(None, ToyBuildConfig())


def test_same_seed_builds_identical_files(tiny_world, tmp_path):
    """A fixed thread count: a seed gives one world, file for file (models included)."""
    from opd_cli.toy.build import ToyBuildConfig, run_toy_build

    again = run_toy_build(ToyBuildConfig.miniature(tmp_path / "again"))
    assert again.manifest["files"] == tiny_world.manifest["files"]
    assert again.manifest["threads"] == tiny_world.manifest["threads"] == 1
