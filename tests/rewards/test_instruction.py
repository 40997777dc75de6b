import pytest

from rewards.instruction import CONSTRAINTS, check_constraint, instruction_reward
from rewards.registry import score_sample
from rl.types import Sample

# (constraint spec, text, met)
CASES = [
    ({"type": "length_words", "at_least": 3}, "Don't over-think it", True),  # 3 words
    ({"type": "length_words", "at_least": 4}, "Don't over-think it", False),
    ({"type": "length_words", "at_most": 2}, "one two three", False),
    ({"type": "length_words", "at_least": 1, "at_most": 3}, "one two three", True),
    ({"type": "length_sentences", "at_least": 2}, "It costs 3.5 dollars. Buy it!", True),
    ({"type": "length_sentences", "at_most": 1}, "It costs 3.5 dollars. Buy it!", False),
    ({"type": "keywords_include", "keywords": ["Paris", "river"]}, "In paris the River flows.", True),
    ({"type": "keywords_include", "keywords": ["cat"]}, "The Cat sat", True),
    ({"type": "keywords_include", "keywords": ["cat"]}, "A category of things", False),
    ({"type": "keywords_exclude", "keywords": ["very"]}, "It is every bit good", True),
    ({"type": "keywords_exclude", "keywords": ["very"]}, "It is Very good", False),
    ({"type": "json_format"}, '{"a": [1, 2]}', True),
    ({"type": "json_format"}, '```json\n{"a": 1}\n```', True),
    ({"type": "json_format"}, "Here it is: {\"a\": 1}", False),
    ({"type": "json_format"}, '```json\n{"a": 1,}\n```', False),
    ({"type": "lowercase"}, "all small, 123 too", True),
    ({"type": "lowercase"}, "not All small", False),
    ({"type": "lowercase"}, "123", False),  # no letter at all
    ({"type": "uppercase"}, "LOUD, 42!", True),
    ({"type": "uppercase"}, "LOUD mostly", False),
    ({"type": "bullet_count", "count": 2}, "Items:\n* one\n- two\n**bold** line\n***\n---", True),
    ({"type": "bullet_count", "count": 3}, "* one\n* two", False),
    ({"type": "starts_with", "phrase": "Dear Sir"}, "  dear sir, hello", True),
    ({"type": "starts_with", "phrase": "Dear Sir"}, "Hello, dear sir", False),
    ({"type": "ends_with", "phrase": "Any other questions?"}, "Done. Any other questions?\n", True),
    ({"type": "ends_with", "phrase": "Any other questions?"}, "Any other questions? Bye.", False),
    ({"type": "paragraph_count", "count": 3}, "one\n\ntwo\n  \nthree", True),
    ({"type": "paragraph_count", "count": 3}, "one\n***\ntwo\n\n\nthree\n\n", True),
    ({"type": "paragraph_count", "count": 2}, "one\ntwo\nthree", False),
    ({"type": "no_commas"}, "No commas here.", True),
    ({"type": "no_commas"}, "One, two.", False),
    ({"type": "placeholders", "at_least": 2}, "Send to [name] at [address].", True),
    ({"type": "placeholders", "at_least": 2}, "Send to [name] at [].", False),
]


@pytest.mark.parametrize("spec,text,met", CASES)
def test_constraint(spec, text, met):
    assert check_constraint(text, spec, "0:" + spec["type"]) is met


def test_every_registered_constraint_is_covered_both_ways():
    for name in CONSTRAINTS:
        assert {met for spec, _, met in CASES if spec["type"] == name} == {True, False}, name


def _sample(completion: str, constraints) -> Sample:
    return Sample("p1", "instruction", "q", [1], reference={"constraints": constraints}, completion=completion)


def test_reward_is_fraction_met_with_one_component_each():
    constraints = [{"type": "no_commas"}, {"type": "lowercase"}, {"type": "length_words", "at_most": 3}]
    result = instruction_reward(_sample("hello there", constraints))
    assert (result.score, result.passed) == (1.0, True)
    result = instruction_reward(_sample("Hello, there", constraints))
    assert result.score == pytest.approx(1 / 3)
    assert result.passed is False
    assert result.components == {"0:no_commas": 0.0, "1:lowercase": 0.0, "2:length_words": 1.0}


def test_instruction_domain_routes_to_the_reward():
    result = score_sample(_sample("ok", [{"type": "lowercase"}]))
    assert result.components == {"instruction": 1.0, "instruction/0:lowercase": 1.0}


def test_unknown_type_names_it():
    with pytest.raises(ValueError, match="unknown type 'haiku'"):
        instruction_reward(_sample("x", [{"type": "no_commas"}, {"type": "haiku"}]))


@pytest.mark.parametrize(
    "spec,message",
    [
        ({"type": "length_words"}, "0:length_words: bad parameters .*at_least"),
        ({"type": "bullet_count", "cnt": 2}, "0:bullet_count: bad parameters .*cnt"),
        ({"type": "no_commas", "strict": True}, "0:no_commas: bad parameters"),
        ({"kind": "no_commas"}, "string 'type'"),
    ],
)
def test_bad_constraint_spec_names_it(spec, message):
    with pytest.raises(ValueError, match=message):
        instruction_reward(_sample("x", [spec]))


def test_constraints_field():
    assert instruction_reward(Sample("p1", "instruction", "q", [1], completion="x")) is None
    with pytest.raises(ValueError, match="non-empty list"):
        instruction_reward(_sample("x", []))
