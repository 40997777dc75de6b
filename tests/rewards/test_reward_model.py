"""The reward model on tiny sequence-classification checkpoints built here (no hub access)."""

import math

import pytest
import torch

from data_mining.bootstrap import train_tokenizer
from rewards.custom import RewardLoadError
from rewards.pool import RewardPool, setup_rewards
from rl.config import RewardConfig
from rewards.reward_model import RewardModel, register_reward_model
from rl.types import Sample

torch.set_num_threads(1)

TEXTS = ["What is the capital of France? Paris is the capital.", "Tell me a joke. Why did the chicken cross?",
         "Summarise the text. The text says hello to the world.", "Hello! How are you today, friend?"]
PAIRS = [("What is 2+2?", " 4"), ("Name a colour.", " Blue, like the sky on a clear day."),
         ("Say hi.", " hi"), ("Tell me a joke.", " Why did the chicken cross the road? To get to the other side."),
         ("What is the capital of France?", " Paris."), ("Summarise.", ""), ("Hello!", " Hello! How are you today?")]


def _build(path, num_labels: int, chat_template: str | None = None):
    from transformers import AutoModelForSequenceClassification, Qwen3Config

    tokenizer = train_tokenizer(TEXTS, vocab_size=300)
    if chat_template:
        tokenizer.chat_template = chat_template
    eos = tokenizer.eos_token_id
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=256,
        num_labels=num_labels, pad_token_id=eos, bos_token_id=eos, eos_token_id=eos,
        id2label={0: "bad", 1: "good"} if num_labels == 2 else None,
    )
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def rm_path(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("rm1"), num_labels=1)


@pytest.fixture(scope="module")
def classifier_path(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("rm2"), num_labels=2)


def _samples(pairs=PAIRS, domain="general"):
    return [Sample(f"p{i}", domain, p, [1], completion=c) for i, (p, c) in enumerate(pairs)]


def test_batched_scores_equal_one_by_one_and_keep_input_order(rm_path):
    batched = RewardModel(rm_path, batch_size=3)(_samples())
    single = [RewardModel(rm_path, batch_size=1)([s])[0] for s in _samples()]
    scores = [r.score for r in batched]
    assert scores == pytest.approx([r.score for r in single], abs=1e-6)
    assert len(set(round(s, 6) for s in scores)) == len(scores)  # the model tells the inputs apart
    for r in batched:  # score = sigmoid(logit), passed = score >= 0.5
        assert r.score == pytest.approx(1 / (1 + math.exp(-r.components["logit"])), abs=1e-7)
        assert r.passed == (r.score >= 0.5)
    reversed_scores = [r.score for r in RewardModel(rm_path, batch_size=3)(_samples()[::-1])]
    assert reversed_scores == pytest.approx(scores[::-1], abs=1e-6)


def test_long_inputs_are_cut_from_the_left(rm_path):
    model = RewardModel(rm_path, batch_size=2, max_length=8)
    a, b = model(_samples([("x " * 50 + "first", " same ending here"), ("y " * 70 + "second", " same ending here")]))
    assert a.score == pytest.approx(b.score, abs=1e-6)  # only the last 8 tokens, identical, were read
    full = RewardModel(rm_path, batch_size=2)(_samples([("x first", " same ending here"), ("y second", " same ending here")]))
    assert full[0].score != pytest.approx(full[1].score, abs=1e-6)


def test_multi_output_model_scores_the_configured_label(classifier_path):
    by_name = RewardModel(classifier_path, label="good")(_samples())
    by_index = RewardModel(classifier_path, label="1")(_samples())
    bad = RewardModel(classifier_path, label="bad")(_samples())
    for g, i, b in zip(by_name, by_index, bad):
        assert g.score == i.score and g.score + b.score == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match=r"2 outputs \['bad', 'good'\]: set the label"):
        RewardModel(classifier_path)
    with pytest.raises(ValueError, match="label 'great' is neither"):
        RewardModel(classifier_path, label="great")


def test_chat_template_renders_the_conversation(tmp_path):
    template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    model = RewardModel(_build(tmp_path / "chat", 1, template))
    model.load()
    assert model.text("Hi?", "Hello.") == "<user>Hi?<assistant>Hello."
    batched = model(_samples())
    single = [RewardModel(str(tmp_path / "chat"), batch_size=1)([s])[0] for s in _samples()]
    assert [r.score for r in batched] == pytest.approx([r.score for r in single], abs=1e-6)


def test_general_domain_through_the_pool(rm_path):
    routes = setup_rewards(RewardConfig(reward_model_path=rm_path, reward_model_batch_size=3))
    assert routes["general"] == [("reward_model", 1.0)]
    direct = [r.score for r in RewardModel(rm_path)(_samples())]
    with RewardPool(routes, timeout_s=60, threads=2) as pool:
        scored, stats = pool.score(_samples())
    assert [s.reward for s in scored] == pytest.approx(direct, abs=1e-6)
    assert stats["reward/errors/general"] == 0.0 and stats["time/reward/general"] > 0
    # Registering the same settings again is harmless; other settings under the same name are not.
    register_reward_model(rm_path, batch_size=3)
    with pytest.raises(RewardLoadError, match="'reward_model' is already registered"):
        register_reward_model(rm_path, batch_size=5, load=False)


def test_bad_checkpoint_settings_stop_setup(tmp_path, classifier_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RewardLoadError, match="reward.reward_model_path .*no config.json"):
        setup_rewards(RewardConfig(reward_model_path=str(tmp_path / "empty")), load_models=False)
    with pytest.raises(RewardLoadError, match="set the label"):
        setup_rewards(RewardConfig(reward_model_path=classifier_path), load_models=False)


def test_scoring_command_with_a_reward_model(rm_path, tmp_path, capsys):
    import json

    from rewards.__main__ import main

    src, dst = tmp_path / "rows.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps({"id": i, "domain": "general", "prompt": p, "completion": c}) + "\n"
                           for i, (p, c) in enumerate(PAIRS)))
    assert main(["score", "--input", str(src), "--output", str(dst), "--reward-model", rm_path]) == 0
    scores = [json.loads(line)["score"] for line in dst.read_text().splitlines()]
    assert scores == pytest.approx([r.score for r in RewardModel(rm_path)(_samples())], abs=1e-6)
