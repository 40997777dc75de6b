"""Build the embedded default starting checkpoint: a tiny, warm-started Qwen3-MoE.

No model hub is reachable, so the project makes its own "pretrained" MoE to post-train:

1. train a byte-level BPE tokenizer on the task corpus (digits kept as single tokens, so numbers
   are spelled the same way everywhere);
2. create a small Qwen3-MoE causal LM (a family both transformers and vLLM load; head_dim 32
   because vLLM's CPU attention rejects 16);
3. warm-start it with a short supervised phase (TRL's SFTTrainer) on procedurally generated tasks
   of every capability domain (`data_mining.tasks`: arithmetic, one-line Python functions,
   IFEval-style instructions). Like web text, the warm-start corpus is not all correct: a fraction
   (`answer_noise`) of its answers are near misses (a digit off, a wrong constant or operator, a
   constraint broken). The checkpoint therefore usually ranks the right answer first but *samples*
   it only part of the time, which is the situation RL with a verifiable reward is for: its sampled
   pass rate on held-out prompts starts low and has room to rise.

The result is an ordinary Hugging Face checkpoint directory. It is cached: a directory whose
`bootstrap.json` matches the requested spec is reused as is.

    python -m data_mining.bootstrap --out checkpoints/tiny-moe
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rl.config import DataConfig

EOS = "<|endoftext|>"
SPEC_FILE = "bootstrap.json"


@dataclass(frozen=True)
class BootstrapSpec:
    family: str = "qwen3_moe"  # or "qwen2_moe" (a shared expert next to the routed ones)
    seed: int = 0
    tasks: tuple[str, ...] = ("arithmetic", "code", "instruction")  # data_mining.tasks families
    task_weights: tuple[float, ...] = (2.0, 1.0, 1.0)  # their shares of the warm-start corpus
    vocab_size: int = 512  # BPE target; the model's embedding is padded to a multiple of 64
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 32
    num_experts: int = 8
    experts_per_token: int = 2
    moe_intermediate_size: int = 128
    sft_examples: int = 20_000
    sft_steps: int = 1000
    sft_batch_size: int = 64
    sft_lr: float = 2e-3
    sft_precision: str = "fp32"  # TRL defaults to bf16 autocast, which this CPU runs no faster
    answer_noise: float = 0.3  # fraction of warm-start answers replaced by a near miss
    min_digits: int = 1
    max_digits: int = 2


def embedded_builder(data: DataConfig) -> Callable[[Path], Path]:
    """What builds the embedded tiny checkpoint for the run's task families (`data.tasks`, weights,
    digits) at a path. The starting checkpoint is a fixed artifact (bootstrap seed 0), whatever the
    RL seed."""
    spec = BootstrapSpec(tasks=tuple(data.tasks), task_weights=tuple(data.task_weights),
                         min_digits=data.min_digits, max_digits=data.max_digits)
    return lambda path: bootstrap(path, spec)


def _set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE trained on `texts`; digits are split individually before merging."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            # Isolated punctuation keeps "=" and a leading "-" apart, so a prompt's tokens are
            # always a prefix of the prompt+answer tokens.
            pre_tokenizers.Punctuation("isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, pad_token=EOS, model_max_length=256
    )


FAMILIES = ("qwen3_moe", "qwen2_moe")


def build_model(spec: BootstrapSpec, vocab_size: int, eos_id: int):
    """A randomly initialised MoE causal LM of the spec's family with the spec's geometry.

    qwen3_moe: routed experts only, top-k weights renormalised; qwen2_moe: routed experts plus one
    sigmoid-gated shared expert per layer (the DeepSeek/Pangu layout's shared-expert idea).
    """
    import torch
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM

    if spec.family not in FAMILIES:
        raise ValueError(f"unknown model family {spec.family!r}; choose one of {FAMILIES}")
    if spec.family == "qwen2_moe":
        if spec.head_dim * spec.num_heads != spec.hidden_size:
            raise ValueError("qwen2_moe derives head_dim from hidden_size / num_heads; make them agree")
        config_cls, model_cls = Qwen2MoeConfig, Qwen2MoeForCausalLM
        extra = dict(shared_expert_intermediate_size=2 * spec.moe_intermediate_size, norm_topk_prob=False)
    else:
        config_cls, model_cls = Qwen3MoeConfig, Qwen3MoeForCausalLM
        extra = dict(head_dim=spec.head_dim, norm_topk_prob=True)
    config = config_cls(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=4 * spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        num_experts=spec.num_experts,
        num_experts_per_tok=spec.experts_per_token,
        moe_intermediate_size=spec.moe_intermediate_size,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        **extra,
    )
    torch.manual_seed(spec.seed)
    model = model_cls(config)
    return model.float()


def near_miss(answer: str, rng: random.Random) -> str:
    """The answer with one digit changed (never equal to the answer)."""
    sign, digits = ("-", answer[1:]) if answer.startswith("-") else ("", answer)
    pos = rng.randrange(len(digits))
    choices = [d for d in "0123456789" if d != digits[pos] and not (pos == 0 and d == "0" and len(digits) > 1)]
    return sign + digits[:pos] + rng.choice(choices) + digits[pos + 1 :]


_OPERATOR_SWAPS = {"+": "-", "-": "+", "*": "+", ">": "<", "<": ">"}


def code_near_miss(solution: str, rng: random.Random) -> str:
    """The one-line solution with one constant or one operator of its body changed."""
    head, sep, body = solution.partition("return ")
    spots = [i for i, ch in enumerate(body) if ch.isdigit() or ch in _OPERATOR_SWAPS]
    i = rng.choice(spots)
    ch = body[i]
    new = near_miss(ch, rng) if ch.isdigit() else _OPERATOR_SWAPS[ch]
    return head + sep + body[:i] + new + body[i + 1 :]


def instruction_near_miss(solution: str, constraints: dict, rng: random.Random) -> str:
    """A variant of the solution that breaks at least one of the row's instructions."""
    from rewards.instruction import check_instruction

    words = solution.split(" ")
    candidates = [
        solution.lower() if solution != solution.lower() else solution.upper(),
        " ".join(words[:-1]) if len(words) > 1 else solution + " " + solution,
        solution + " " + rng.choice(("red", "big", "old")),
        solution.replace('"', "").replace("<<", "").replace(">>", "").replace("* ", "- "),
        solution.replace(" ", ", ", 1) if " " in solution else solution + ", yes",
        solution.split("\n")[0],
    ]
    rng.shuffle(candidates)
    pairs = list(zip(constraints["instruction_id_list"], constraints["kwargs"]))
    for text in candidates:
        if not all(check_instruction(text, iid, kw) for iid, kw in pairs):
            return text
    return candidates[0]


def warm_start_rows(spec: BootstrapSpec) -> list[dict]:
    """The SFT corpus: train-split tasks of every family in `spec.task_weights` proportion; a
    `spec.answer_noise` fraction of the answers replaced by a near miss. Completions start on a new
    line after the prompt (arithmetic answers follow the "=" directly)."""
    from data_mining.tasks import is_heldout, iter_task, quotas

    rng = random.Random(spec.seed)
    rows = []
    for task, count in zip(spec.tasks, quotas(spec.sft_examples, list(spec.task_weights))):
        stream = iter_task(task, spec.seed + 1000, spec.min_digits, spec.max_digits, distinct=False)
        pool = []
        for row in stream:  # families with few distinct tasks repeat them; draw until `count`
            if is_heldout(row.id):
                continue
            noisy = rng.random() < spec.answer_noise
            if task == "arithmetic":
                answer = row.reference["answer"]
                completion = near_miss(answer, rng) if noisy else answer
            elif task == "code":
                solution = row.reference["solution"]
                completion = "\n" + (code_near_miss(solution, rng) if noisy else solution)
            else:
                solution = row.reference["solution"]
                completion = "\n" + (instruction_near_miss(solution, row.reference["constraints"], rng)
                                      if noisy else solution)
            pool.append({"prompt": row.prompt, "completion": completion})
            if len(pool) >= count:
                break
        rows += pool
    rng.shuffle(rows)
    return rows


def _sft(model, tokenizer, spec: BootstrapSpec, rows: list[dict], work_dir: Path) -> list[dict]:
    import datasets
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    datasets.disable_progress_bars()  # per-map bars for a 20k-row in-memory set are noise
    args = SFTConfig(
        output_dir=str(work_dir),
        max_steps=spec.sft_steps,
        per_device_train_batch_size=spec.sft_batch_size,
        learning_rate=spec.sft_lr,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, spec.sft_steps // 20),
        weight_decay=0.0,
        logging_steps=max(1, spec.sft_steps // 10),
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=spec.sft_precision == "bf16",
        seed=spec.seed,
        data_seed=spec.seed,
        completion_only_loss=True,
        router_aux_loss_coef=0.0,  # transformers 5.19 mis-shapes the aux loss under padding masks
        max_length=96,
        gradient_checkpointing=False,  # TRL turns it on; at this size recomputing the forward only costs time
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    trainer.train()
    # accelerate keeps its state (mixed precision included) per process; a trainer built later in
    # this process must not inherit the SFT settings.
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    return [h for h in trainer.state.log_history if "loss" in h]


def heldout_rows(spec: BootstrapSpec, n_prompts: int = 256) -> list[dict]:
    """Held-out prompts of the spec's task mix (never in the warm-start corpus)."""
    from data_mining.tasks import make_task_split

    _, heldout = make_task_split(list(spec.tasks), list(spec.task_weights), 1, n_prompts, seed=spec.seed,
                                 min_digits=spec.min_digits, max_digits=spec.max_digits)
    return heldout


def sampled_pass_rate(
    model, tokenizer, spec: BootstrapSpec, n_prompts: int = 256, samples: int = 4, max_new_tokens: int = 24
) -> dict[str, float]:
    """Sampled (temperature 1) pass rate on held-out prompts with transformers' `generate`, scored
    by the built-in rewards: {"pass_rate": pooled, "pass_rate/<domain>": ...}."""
    import torch

    from rewards.pool import score_samples
    from rl.types import Sample

    heldout = heldout_rows(spec, n_prompts)
    tokenizer.padding_side = "left"
    torch.manual_seed(spec.seed)
    model.eval()
    scored = []
    for start in range(0, len(heldout), 64):
        chunk = heldout[start : start + 64]
        prompts = [r["prompt"] for r in chunk for _ in range(samples)]
        enc = tokenizer(prompts, return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(
                **enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
            )
        texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        batch = [Sample(prompt_id=chunk[i // samples]["id"], domain=chunk[i // samples]["domain"],
                        prompt=chunk[i // samples]["prompt"], prompt_ids=[],
                        reference=chunk[i // samples]["reference"], completion=text)
                 for i, text in enumerate(texts)]
        scored += score_samples(batch)[0]
    rates = {"pass_rate": sum(s.passed for s in scored) / len(scored)}
    for domain in sorted({s.domain for s in scored}):
        items = [s for s in scored if s.domain == domain]
        rates[f"pass_rate/{domain}"] = sum(s.passed for s in items) / len(items)
    return rates


def is_cached(out: Path, spec: BootstrapSpec) -> bool:
    spec_path = out / SPEC_FILE
    if not spec_path.exists():
        return False
    # Through JSON on both sides: tuples in the spec come back from the file as lists.
    return json.loads(spec_path.read_text()).get("spec") == json.loads(json.dumps(dataclasses.asdict(spec)))


def bootstrap(out: str | os.PathLike, spec: BootstrapSpec = BootstrapSpec(), force: bool = False, threads: int = 2) -> Path:
    """Build (or reuse) the tiny warm-started MoE checkpoint at `out`."""
    out = Path(out)
    if not force and is_cached(out, spec):
        print(f"[bootstrap] reusing {out} (matches the requested spec)", flush=True)
        return out
    _set_threads(threads)
    t0 = time.time()
    rows = warm_start_rows(spec)
    tokenizer = train_tokenizer([r["prompt"] + r["completion"] for r in rows[:8000]], spec.vocab_size)
    vocab = ((len(tokenizer) + 63) // 64) * 64
    model = build_model(spec, vocab, tokenizer.eos_token_id)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[bootstrap] tokenizer {len(tokenizer)} tokens; {spec.family} {n_params / 1e6:.2f}M params", flush=True)

    # Build next to the target and rename at the end, so an interrupted run leaves nothing half-written.
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    history = _sft(model, tokenizer, spec, rows, tmp / "sft")
    shutil.rmtree(tmp / "sft", ignore_errors=True)
    rate = sampled_pass_rate(model, tokenizer, spec)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.eos_token_id
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    summary = {
        "spec": dataclasses.asdict(spec),
        "params": n_params,
        "sft_final_loss": history[-1]["loss"] if history else None,
        "heldout_sampled_pass_rate": rate["pass_rate"],
        "heldout_sampled_pass_rate_by_domain": {k.split("/", 1)[1]: v for k, v in rate.items() if "/" in k},
        "seconds": round(time.time() - t0, 1),
    }
    (tmp / SPEC_FILE).write_text(json.dumps(summary, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(
        f"[bootstrap] wrote {out} in {summary['seconds']}s: SFT loss {summary['sft_final_loss']}, "
        f"held-out sampled pass rate {rate['pass_rate']:.1%} ("
        + ", ".join(f"{k.split('/', 1)[1]} {v:.1%}" for k, v in rate.items() if "/" in k) + ")",
        flush=True,
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="checkpoints/tiny-moe", help="checkpoint directory to write")
    parser.add_argument("--family", choices=FAMILIES, default=BootstrapSpec.family, help="MoE model family")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sft-steps", type=int, default=BootstrapSpec.sft_steps)
    parser.add_argument("--answer-noise", type=float, default=BootstrapSpec.answer_noise)
    parser.add_argument("--max-digits", type=int, default=BootstrapSpec.max_digits)
    parser.add_argument("--force", action="store_true", help="rebuild even if a matching checkpoint exists")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args(argv)
    spec = BootstrapSpec(
        family=args.family,
        seed=args.seed, sft_steps=args.sft_steps, answer_noise=args.answer_noise, max_digits=args.max_digits
    )
    bootstrap(args.out, spec, force=args.force, threads=args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
