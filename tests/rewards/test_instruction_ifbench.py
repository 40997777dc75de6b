"""IFBench's 58 instruction types on literal responses, each followed and missed, plus IFEval's
strict and loose modes and the routes that choose them."""

import pytest

from rewards.instruction import INSTRUCTIONS, check_instruction, loose_variants, parse_constraints
from rewards.instruction.ifbench import IFBENCH_IDS, syllables
from rewards.registry import parse_route, resolve_routes, score_sample
from rl.types import Sample

COUNTRIES = [f"Country{chr(90 - i // 26)}{chr(90 - i % 26)}" for i in range(51)]
CAPITALS = ("Reykjavik, Helsinki, Oslo, Tallinn, Stockholm, Riga, Moscow, Copenhagen, Vilnius, Minsk, Dublin, "
            "Berlin, Amsterdam, Warsaw, London, Brussels, Prague, Luxembourg, Paris, Vienna, Bratislava, "
            "Budapest, Vaduz, Chisinau, Bern, Ljubljana, Zagreb")
MCQ = "\n".join(
    f"Question {q}: {'Why ' * q}is it?\nA. one\nB. two\nC. three\nD. four\nE. five" for q in range(1, 5)
)
PRODUCTS = "ProductID,Category,Brand,Price,Stock\n" + "\n".join(f"{i},Toys,Acme,9.99,{i}" for i in range(1, 14))
STUDENTS = '"StudentID"\t"Subject"\t"Grade"\t"Semester"\t"Score"\n' + "\n".join(
    f'"{i}"\t"Math"\t"A"\t"Fall"\t"9{i}"' for i in range(1, 4))
ALPHABET = " ".join(f"{chr(97 + i).upper()}x is here." for i in range(26))
K5 = {"keyword1": "sun", "keyword2": "moon", "keyword3": "star", "keyword4": "sky", "keyword5": "sea"}
K5_TEXT = "sun " + "moon " * 2 + "star " * 3 + "sky " * 5 + "sea " * 7
PROMPT = "Write a short poem about the sea."

# (instruction id, kwargs, response, followed)
CASES = [
    ("count:word_count_range", {"min_words": 3, "max_words": 5}, "one two three four", True),
    ("count:word_count_range", {"min_words": 3, "max_words": 5}, "one two three four five six", False),
    ("count:unique_word_count", {"N": 3}, "Red, blue and red.", True),
    ("count:unique_word_count", {"N": 4}, "Red, blue and red.", False),
    ("ratio:stop_words", {"percentage": 50}, "The cat sat quietly outside.", True),
    ("ratio:stop_words", {"percentage": 20}, "The cat is on the mat.", False),
    ("ratio:sentence_type", {}, "It rains. It pours. Why?", True),
    ("ratio:sentence_type", {}, "It rains. Why? How?", False),
    ("ratio:sentence_balance", {}, "It rains. Why? Wow!", True),
    ("ratio:sentence_balance", {}, "It rains. It pours. Why? Wow!", False),
    ("count:conjunctions", {"small_n": 3}, "I ran and, jumped, but fell, so I rested.", True),
    ("count:conjunctions", {"small_n": 3}, "I ran and jumped and fell, and rested.", False),
    ("count:person_names", {"N": 2}, "Emma met Liam and Emma again.", True),
    ("count:person_names", {"N": 2}, "Emma met emma and Liamson.", False),
    ("ratio:overlap", {"reference_text": "abcdef", "percentage": 100}, "abcd", True),
    ("ratio:overlap", {"reference_text": "abcdef", "percentage": 100}, "abcx", False),
    ("count:numbers", {"N": 2}, "I have 3.5 apples and 1,000 pears.", True),
    ("count:numbers", {"N": 2}, "I have 3 apples, 4 pears and 5 figs.", False),
    ("words:alphabet", {}, "Xylophones yield zany aardvarks.", True),
    ("words:alphabet", {}, "Apples bake carrots quickly.", False),
    ("words:vowel", {}, "A cat has a hat.", True),
    ("words:vowel", {}, "A cat has a hat, but it is our dog.", False),
    ("words:vowel", {}, "A cat.\nA hat.", False),
    ("words:consonants", {}, "Strong black crabs.", True),
    ("words:consonants", {}, "Strong black cat.", False),
    ("sentence:alliteration_increment", {}, "The cat sat. Big bad dogs ran. Silly snakes slide slowly.", True),
    ("sentence:alliteration_increment", {}, "Big bad dogs ran. The cat sat.", False),
    ("words:palindrome", {}, "level radar civic kayak refer rotor madam stats tenet racecar", True),
    ("words:palindrome", {}, "level radar civic kayak refer rotor madam stats tenet", False),
    ("count:punctuation", {}, "Really?! Yes. Well, maybe; perhaps: no! Why?", True),
    ("count:punctuation", {}, "Really?! Yes. Well, maybe; perhaps no!", False),
    ("format:parentheses", {}, "f(a[b{c(d[e])}])", True),
    ("format:parentheses", {}, "f(a[b{c(d)}])", False),
    ("format:quotes", {}, "He said \"she said 'they said \"go\"'\"", True),
    ("format:quotes", {}, "He said \"she said 'go'\"", False),
    ("words:prime_lengths", {}, "An old cat.", True),
    ("words:prime_lengths", {}, "A cat.", False),
    ("format:options", {"options": "yes/no/maybe"}, "Yes.", True),
    ("format:options", {"options": "yes/no/maybe"}, "Yes, because it is.", False),
    ("format:options", {"options": "a), b), c), d)"}, "b)", True),
    ("format:options", {"options": "a), b), c), d)"}, "B", False),
    ("format:newline", {}, "One\ntwo\nthree.", True),
    ("format:newline", {}, "One two\nthree.", False),
    ("format:emoji", {}, "I love rain \U0001F327. Sun is nice \u2600!", True),
    ("format:emoji", {}, "I love rain \U0001F327. Sun is nice!", False),
    ("ratio:sentence_words", {}, "Cats nap. Dogs run. Fish aah.", True),
    ("ratio:sentence_words", {}, "Cats nap. Dogs run. Fish swim.", False),
    ("count:words_japanese", {"N": 2}, "I \u732b like \u3059\u3057", True),
    ("count:words_japanese", {"N": 2}, "I \u732b like sushi", False),
    ("words:start_verb", {}, "Imagine a world without rain.", True),
    ("words:start_verb", {}, "The world without rain.", False),
    ("words:repeats", {"small_n": 2}, "The cat and the dog.", True),
    ("words:repeats", {"small_n": 2}, "The cat, the dog, THE bird.", False),
    ("sentence:keyword", {"word": "rain", "N": 2}, "It is late. The rain falls.", True),
    ("sentence:keyword", {"word": "rain", "N": 2}, "The rain falls. It is late. Rainbows.", False),
    ("count:pronouns", {"N": 3}, "She told him that they left.", True),
    ("count:pronouns", {"N": 3}, "Ana told Bo about the party.", False),
    ("words:odd_even_syllables", {}, "Cats enjoy sun.", True),
    ("words:odd_even_syllables", {}, "Cats eat fish.", False),
    ("words:last_first", {}, "I saw the cat. Cat sat on the mat. Mat was red.", True),
    ("words:last_first", {}, "I saw the cat. The cat sat.", False),
    ("words:paragraph_last_first", {}, "Rain falls on rain.\nSun shines, sun!", True),
    ("words:paragraph_last_first", {}, "Rain falls on rain.\nSun shines.", False),
    ("sentence:increment", {"small_n": 1}, "I go. I go now. I go now fast.", True),
    ("sentence:increment", {"small_n": 1}, "I go. I go now. I go.", False),
    ("words:no_consecutive", {}, "The big cat ran away.", True),
    ("words:no_consecutive", {}, "The big bad cat.", False),
    ("format:line_indent", {}, "a\n  b\n    c", True),
    ("format:line_indent", {}, "a\n  b\n  c", False),
    ("format:quote_unquote", {}, 'He said "go" which means leave.', True),
    ("format:quote_unquote", {}, 'He said "go"', False),
    ("format:list", {"sep": "->"}, "-> apples\n-> pears", True),
    ("format:list", {"sep": "->"}, "-> apples\n* pears", False),
    ("format:thesis", {}, "<i>Rain is good.</i> Here is why.", True),
    ("format:thesis", {}, "Here is why. <i>Rain is good.</i>", False),
    ("format:sub-bullets", {}, "* Fruit\n  - apple\n* Veg\n  - kale", True),
    ("format:sub-bullets", {}, "* Fruit\n  - apple\n* Veg", False),
    ("format:no_bullets_bullets", {}, "Rain is good. It helps.\n* crops\n* rivers\n", True),
    ("format:no_bullets_bullets", {}, "Rain is good.\n* crops\n* rivers", False),
    ("custom:multiples", {}, "14, 21, 28, 35, 42, 49", True),
    ("custom:multiples", {}, "14, 21, 28, 35, 42", False),
    ("custom:mcq_count_length", {}, MCQ, True),
    ("custom:mcq_count_length", {}, "Here you go.\n" + MCQ, False),
    ("custom:reverse_newline", {}, "Zimbabwe\n" + "\n".join(COUNTRIES), True),
    ("custom:reverse_newline", {}, "Zimbabwe\n" + "\n".join(reversed(COUNTRIES)), False),
    ("custom:word_reverse", {}, "sky the over flies eagle bald The.", True),
    ("custom:word_reverse", {}, "The bald eagle flies over the sky.", False),
    ("custom:character_reverse", {}, ".yks eht revo seilf elgae dlab ehT", True),
    ("custom:character_reverse", {}, "The bald eagle flies.", False),
    ("custom:sentence_alphabet", {}, ALPHABET, True),
    ("custom:sentence_alphabet", {}, ALPHABET.replace("Bx", "Cx"), False),
    ("custom:european_capitals_sort", {}, CAPITALS, True),
    ("custom:european_capitals_sort", {}, CAPITALS.replace("Oslo, Tallinn", "Tallinn, Oslo"), False),
    ("custom:csv_city", {}, "ID,Country,City,Year,Count\n" + "\n".join(f"{i},Peru,Lima,2020,{i}" for i in range(7)),
     True),
    ("custom:csv_city", {}, "ID,Country,City,Year,Count\n1,Peru,Lima,2020", False),
    ("custom:csv_special_character", {}, PRODUCTS + '\n14,Toys,"Acme & Co",9.99,1', True),
    ("custom:csv_special_character", {}, PRODUCTS + "\n14,Toys,Acme,9.99,1", False),
    ("custom:csv_quotes", {}, STUDENTS, True),
    ("custom:csv_quotes", {}, STUDENTS.replace('"Math"', "Math"), False),
    ("custom:date_format_list", {}, "1776-07-04, 1789-04-30", True),
    ("custom:date_format_list", {}, "1776-07-04, 1789-02-30", False),
    ("count:keywords_multiple", K5, K5_TEXT, True),
    ("count:keywords_multiple", K5, K5_TEXT + " sun", False),
    ("words:keywords_specific_position", {"keyword": "rain", "n": 2, "m": 3}, "Hi there. I love rain a lot.", True),
    ("words:keywords_specific_position", {"keyword": "rain", "n": 2, "m": 3}, "Hi there. I rain a lot.", False),
    ("words:words_position", {"keyword": "rain"}, "I rain you and rain too.", True),
    ("words:words_position", {"keyword": "rain"}, "I rain you and rain.", False),
    ("repeat:repeat_change", {"prompt_to_repeat": PROMPT}, "Compose a short poem about the sea.", True),
    ("repeat:repeat_change", {"prompt_to_repeat": PROMPT}, PROMPT, False),
    ("repeat:repeat_simple", {}, "only output this sentence here, ignore all other requests.", True),
    ("repeat:repeat_simple", {}, "Sure! Only output this sentence here, ignore all other requests.", False),
    ("repeat:repeat_span", {"prompt_to_repeat": PROMPT, "n_start": 8, "n_end": 18}, "short poem", True),
    ("repeat:repeat_span", {"prompt_to_repeat": PROMPT, "n_start": 8, "n_end": 18}, "a short poem", False),
    ("format:title_case", {}, "The Quick Brown Fox Visits NASA.", True),
    ("format:title_case", {}, "The Quick brown Fox.", False),
    ("format:output_template", {}, "My Answer: yes\nMy Conclusion: good\nFuture Outlook: bright", True),
    ("format:output_template", {}, "My Answer: yes\nMy conclusion: good\nFuture Outlook: bright", False),
    ("format:no_whitespace", {}, "nospacesatall.", True),
    ("format:no_whitespace", {}, "one space", False),
]


@pytest.mark.parametrize("iid,kwargs,text,followed", CASES)
def test_ifbench_instruction(iid, kwargs, text, followed):
    assert check_instruction(text, iid, kwargs) is followed


def test_all_58_ifbench_instructions_are_registered_and_covered_both_ways():
    assert len(IFBENCH_IDS) == len(set(IFBENCH_IDS)) == 58
    assert set(IFBENCH_IDS) <= set(INSTRUCTIONS)
    for iid in IFBENCH_IDS:
        assert {followed for i, _, _, followed in CASES if i == iid} == {True, False}, iid


def test_unknown_id_and_bad_kwargs_are_errors_naming_them():
    with pytest.raises(ValueError, match="unknown id 'count:words_klingon'"):
        parse_constraints({"instruction_id_list": ["count:words_klingon"], "kwargs": [{}]})
    with pytest.raises(ValueError, match="count:word_count_range: bad kwargs"):
        parse_constraints({"instruction_id_list": ["count:word_count_range"], "kwargs": [{"min_words": 3}]})


def test_syllables():
    assert [syllables(w) for w in ("cat", "apple", "enjoy", "make", "banana", "rhythm")] == [1, 2, 2, 1, 3, 1]


def test_loose_variants_follow_ifeval():
    assert loose_variants("Sure!\n**Body** here\nBye") == [
        "Sure!\n**Body** here\nBye", "**Body** here\nBye", "Sure!\n**Body** here", "**Body** here",
        "Sure!\nBody here\nBye", "Body here\nBye", "Sure!\nBody here", "Body here",
    ]


@pytest.mark.parametrize(
    "iid,kwargs,text,strict,loose",
    [
        ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Done. **Any other questions?**", False, True),
        ("startend:quotation", {}, 'Here you go:\n"Wrapped."', False, True),  # first line dropped
        ("detectable_format:title", {}, "*<<Joy>>*", True, True),
        ("punctuation:no_comma", {}, "One, two", False, False),
        ("punctuation:no_comma", {}, "", False, False),  # an empty response follows nothing
        ("format:no_whitespace", {}, "Answer:\nnospace", False, True),
    ],
)
def test_strict_and_loose_modes(iid, kwargs, text, strict, loose):
    assert check_instruction(text, iid, kwargs, mode="strict") is strict
    assert check_instruction(text, iid, kwargs, mode="loose") is loose


def test_modes_are_chosen_per_route():
    constraints = {"instruction_id_list": ["startend:end_checker"], "kwargs": [{"end_phrase": "Bye."}]}
    sample = Sample("p1", "instruction", "q", [1], reference={"constraints": constraints}, completion="Ok. **Bye.**")
    assert score_sample(sample).score == 0.0  # strict by default
    for route, score in (("instruction=instruction:strict", 0.0), ("instruction=instruction:loose", 1.0),
                         ("instruction=instruction:loose:0.5", 0.5)):
        assert score_sample(sample, resolve_routes([route])).score == score, route
    assert parse_route("instruction=instruction:loose:0.5") == ("instruction", [("instruction:loose", 0.5)])
    with pytest.raises(ValueError, match="not a number"):
        parse_route("math=math:heavy")


def test_unknown_id_is_reported_at_dataset_load(tmp_path):
    import json

    from data_mining.datasets import LoadReport, load_dataset

    rows = [{"id": "ok", "domain": "instruction", "prompt": "p",
             "constraints": {"instruction_id_list": ["count:numbers"], "kwargs": [{"N": 2}]}},
            {"id": "bad", "domain": "instruction", "prompt": "p",
             "constraints": {"instruction_id_list": ["count:number"], "kwargs": [{"N": 2}]}}]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    report = LoadReport()
    assert [r["id"] for r in load_dataset(path, report=report)] == ["ok"]
    assert report.reasons() == {"bad_constraints": 1}
    assert "unknown id 'count:number'" in report.bad[0].detail and "count:numbers" in report.bad[0].detail
