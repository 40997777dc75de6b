import json
import random
from pathlib import Path

from data_mining.bootstrap import (
    BootstrapSpec,
    SPEC_FILE,
    code_near_miss,
    instruction_near_miss,
    near_miss,
    train_tokenizer,
    warm_start_rows,
)


def test_near_miss_changes_exactly_one_digit():
    rng = random.Random(0)
    for answer in ["0", "7", "-3", "10", "357", "-120", "1000"]:
        for _ in range(20):
            wrong = near_miss(answer, rng)
            assert wrong != answer and len(wrong) == len(answer)
            assert sum(a != b for a, b in zip(wrong, answer)) == 1
            digits = wrong.lstrip("-")
            assert len(digits) == 1 or digits[0] != "0"  # still a well-formed number


def test_tokenizer_prompt_is_prefix_of_prompt_plus_answer():
    tok = train_tokenizer(["12+3=15", "5-7=-2", "100-1=99"], vocab_size=300)
    for prompt, answer in [("5-7=", "-2"), ("12+34=", "46"), ("999-1000=", "-1")]:
        p = tok(prompt)["input_ids"]
        full = tok(prompt + answer + tok.eos_token)["input_ids"]
        assert full[: len(p)] == p
        assert full[-1] == tok.eos_token_id
        assert tok.decode(full[len(p) :], skip_special_tokens=True) == answer


def test_bootstrap_checkpoint_is_cached_and_loads(tiny_checkpoint):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from data_mining.bootstrap import bootstrap, is_cached

    info = json.loads((Path(tiny_checkpoint) / SPEC_FILE).read_text())
    spec = BootstrapSpec(**info["spec"])
    assert is_cached(Path(tiny_checkpoint), spec)
    assert not is_cached(Path(tiny_checkpoint), BootstrapSpec(seed=spec.seed + 1))
    # A matching spec is reused without retraining.
    assert bootstrap(tiny_checkpoint, spec) == Path(tiny_checkpoint)
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    tok = AutoTokenizer.from_pretrained(tiny_checkpoint)
    assert model.config.model_type == "qwen3_moe" and model.config.head_dim >= 32
    assert model.config.num_experts == spec.num_experts
    assert tok.eos_token_id == model.config.eos_token_id


def test_code_near_miss_changes_one_constant_or_operator():
    rng = random.Random(0)
    for solution in ["def f(x): return x+7", "def f(x): return 3*x+2", "def f(xs): return [x for x in xs if x>2]",
                     "def f(x): return max(x,-5)", "def f(s): return s*3"]:
        for _ in range(10):
            wrong = code_near_miss(solution, rng)
            assert wrong != solution and len(wrong) == len(solution)
            assert sum(a != b for a, b in zip(wrong, solution)) == 1
            assert wrong.startswith(solution.partition("return ")[0])  # the signature is untouched


def test_instruction_near_miss_breaks_an_instruction_of_every_family():
    from data_mining.tasks import INSTRUCTION_FAMILIES, instruction_task
    from rewards.instruction import check_instruction

    rng = random.Random(0)
    for name, _, counts, _ in INSTRUCTION_FAMILIES:
        row = instruction_task(name, "river", counts[-1])
        pairs = list(zip(row.reference["constraints"]["instruction_id_list"], row.reference["constraints"]["kwargs"]))
        assert all(check_instruction(row.reference["solution"], i, k) for i, k in pairs), name
        for _ in range(5):
            wrong = instruction_near_miss(row.reference["solution"], row.reference["constraints"], rng)
            assert not all(check_instruction(wrong, i, k) for i, k in pairs), (name, wrong)


def test_warm_start_corpus_mixes_families_and_skips_heldout():
    from collections import Counter

    from data_mining.tasks import is_heldout

    spec = BootstrapSpec(sft_examples=400, task_weights=(2.0, 1.0, 1.0))
    rows = warm_start_rows(spec)
    kinds = Counter("code" if "Python" in r["prompt"] else "math" if r["prompt"].endswith("=") else "instruction"
                    for r in rows)
    assert kinds == {"math": 200, "code": 100, "instruction": 100}
    assert rows == warm_start_rows(spec)  # deterministic for a seed
    from data_mining.tasks import iter_task

    heldout_prompts = {r.prompt for task in ("code", "instruction") for r in iter_task(task, 0) if is_heldout(r.id)}
    assert not heldout_prompts & {r["prompt"] for r in rows}
    # Code and instruction answers start on the line after the prompt; the prompt tokens stay a prefix.
    tok = train_tokenizer([r["prompt"] + r["completion"] for r in rows], vocab_size=400)
    for r in rows[:100]:
        p = tok(r["prompt"])["input_ids"]
        assert tok(r["prompt"] + r["completion"])["input_ids"][: len(p)] == p
