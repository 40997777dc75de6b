import json
import random
from pathlib import Path

from rl.bootstrap import BootstrapSpec, SPEC_FILE, near_miss, train_tokenizer


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

    from rl.bootstrap import bootstrap, is_cached

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
