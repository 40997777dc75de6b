"""The 25 IFEval instruction checkers on literal responses, each with near misses, following
IFEval's reference semantics (substring keywords, exact end phrase, ASCII punctuation)."""

import pytest

from rewards.instruction import (
    INSTRUCTIONS,
    check_instruction,
    detect_language,
    instruction_reward,
    parse_constraints,
    sentences,
    words,
)
from rewards.instruction.ifbench import IFBENCH_IDS
from rewards.registry import score_sample
from rl.types import Sample

LETTER = "Dear team,\n\nThe launch is on Friday.\n\nBest,\nAna"

# (instruction id, kwargs, response, followed)
CASES = [
    # keywords
    ("keywords:existence", {"keywords": ["Paris", "river"]}, "In paris the River flows.", True),
    ("keywords:existence", {"keywords": ["ice cream"]}, "I like ICE cream a lot", True),
    ("keywords:existence", {"keywords": ["ice cream"]}, "I like ICE  cream a lot", False),  # literal phrase
    ("keywords:existence", {"keywords": ["cat"]}, "A category of things", True),  # IFEval matches substrings
    ("keywords:existence", {"keywords": ["cats"]}, "A cat of things", False),
    ("keywords:existence", {"keywords": ["Paris", "river"]}, "Paris is lovely.", False),
    ("keywords:frequency", {"keyword": "data", "frequency": 3, "relation": "at least"},
     "Data in, data out; DATA rules.", True),
    ("keywords:frequency", {"keyword": "data", "frequency": 3, "relation": "at least"},
     "Data in, data out; database rules.", True),  # "database" holds "data"
    ("keywords:frequency", {"keyword": "data", "frequency": 3, "relation": "at least"},
     "Data in, data out; dat rules.", False),
    ("keywords:frequency", {"keyword": "data", "frequency": 2, "relation": "less than"}, "Data only once.", True),
    ("keywords:frequency", {"keyword": "data", "frequency": 2, "relation": "less than"}, "Data and data.", False),
    ("keywords:forbidden_words", {"forbidden_words": ["very", "good"]}, "It is every bit goodly.", True),
    ("keywords:forbidden_words", {"forbidden_words": ["very", "good"]}, "It is Very nice.", False),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 2, "let_relation": "at least"},
     "Zebras zigzag.", True),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 3, "let_relation": "at least"},
     "Zebras zig.", False),
    ("keywords:letter_frequency", {"letter": "e", "let_frequency": 3, "let_relation": "less than"}, "The cat.", True),
    ("keywords:letter_frequency", {"letter": "e", "let_frequency": 3, "let_relation": "less than"},
     "Eve sees.", False),
    # language
    ("language:response_language", {"language": "de"}, "Das Wetter ist heute sehr schön und wir gehen aus.", True),
    ("language:response_language", {"language": "de"}, "The weather is very nice today and we go out.", False),
    ("language:response_language", {"language": "hi"}, "आज मौसम बहुत अच्छा है और हम बाहर जा रहे हैं।", True),
    ("language:response_language", {"language": "mr"}, "आज मौसम बहुत अच्छा है और हम बाहर जा रहे हैं।", False),
    # length
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "less than"},
     "Dr. Smith paid $3.50 at 5 p.m. today. He left!", True),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "less than"},
     "One. Two? Three!", False),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "at least"},
     "Intro line\n\n* first point\n* second point", True),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "at least"}, "e.g. this is one.", False),
    ("length_constraints:number_words", {"num_words": 4, "relation": "at least"}, "Don't over-think it, ok?", True),
    ("length_constraints:number_words", {"num_words": 6, "relation": "at least"}, "Don't over-think it, ok?", True),
    ("length_constraints:number_words", {"num_words": 7, "relation": "at least"}, "Don't over-think it, ok?", False),
    ("length_constraints:number_words", {"num_words": 4, "relation": "less than"}, "It costs 3.50 now", False),
    ("length_constraints:number_words", {"num_words": 4, "relation": "less than"}, "It costs 3.50", False),
    ("length_constraints:number_words", {"num_words": 4, "relation": "less than"}, "It costs three", True),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 3}, "One.\n***\nTwo.\n\n* * *\nThree.", True),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "***\nOne.\n***\nTwo.\n***", True),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "One.\n***\n***\nTwo.", False),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "One.\n\nTwo.", False),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "A ***bold*** one.\n***\nTwo.", True),
    ("length_constraints:nth_paragraph_first_word",
     {"num_paragraphs": 3, "nth_paragraph": 2, "first_word": "the"}, LETTER, True),
    ("length_constraints:nth_paragraph_first_word",
     {"num_paragraphs": 3, "nth_paragraph": 2, "first_word": "launch"}, LETTER, False),
    ("length_constraints:nth_paragraph_first_word",
     {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "the"}, LETTER, False),
    ("length_constraints:nth_paragraph_first_word",
     {"num_paragraphs": 2, "nth_paragraph": 1, "first_word": "summary"}, '**"Summary:** short.\n\nMore.', True),
    # detectable content
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Send to [name] at [address].", True),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Send to [name] at [ ].", False),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi.\n\nP.S. Bring snacks.", True),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi.\n**PS:** snacks", True),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi.\nP.P.S. Bring snacks.", False),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi.\nPSA: snacks", False),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi.\nP.S.", False),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Hi.\nP.S. a\nP.P.S. b", True),
    # detectable format
    ("detectable_format:number_bullet_lists", {"num_bullets": 3}, "List:\n* one\n- two\n  + three\n**bold**\n---", True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 3}, "* one\n* two", False),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "1. one\n2. two", False),
    ("detectable_format:constrained_response", {}, "My answer is yes.", True),
    ("detectable_format:constrained_response", {}, "Honestly, My answer is maybe. I think", True),
    ("detectable_format:constrained_response", {}, "Honestly, my answer is maybe, I think", False),
    ("detectable_format:constrained_response", {}, "Yes.", False),
    ("detectable_format:constrained_response", {}, "My answer is yes. My answer is no.", False),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2},
     "*Intro* and **Body** here\n* not a highlight", True),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*Intro* and 2 * 3 * 4 and ** **", False),
    ("detectable_format:multiple_sections", {"section_spliter": "SECTION", "num_sections": 2},
     "SECTION 1\nHello.\n## Section 2\nBye.", True),
    ("detectable_format:multiple_sections", {"section_spliter": "SECTION", "num_sections": 2},
     "SECTION 1\nHello, as in SECTION 2.\n", False),
    ("detectable_format:multiple_sections", {"section_spliter": "Day", "num_sections": 2},
     "Day 1: walk\nDay 2: swim\nDay 3: rest", False),
    ("detectable_format:json_format", {}, '{"a": [1, 2]}', True),
    ("detectable_format:json_format", {}, '```JSON\n{"a": 1}\n```', True),
    ("detectable_format:json_format", {}, 'Here it is: {"a": 1}', False),
    ("detectable_format:json_format", {}, '```json\n{"a": 1,}\n```', False),
    ("detectable_format:title", {}, "<<Ode to Joy>>\nLa la.", True),
    ("detectable_format:title", {}, "<< >>\nLa la.", False),
    ("detectable_format:title", {}, "<Ode to Joy>\nLa la.", False),
    ("combination:two_responses", {}, "First answer.\n******\nSecond answer.", True),
    ("combination:two_responses", {}, "Same.\n******\nSame.", False),
    ("combination:two_responses", {}, "One.\n******\n******\nTwo.", False),
    ("combination:two_responses", {}, "One.\n*****\nTwo.", False),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Write a poem about the sea."},
     "write a poem  about the sea.\nThe sea is wide.", True),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Write a poem about the sea."},
     "Here is a poem about the sea.", False),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Done. any other questions?\n", True),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Done. **Any other questions?**\n", False),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Any other questions? Bye.", False),
    ("startend:quotation", {}, '  "Wrapped in quotes."  ', True),
    ("startend:quotation", {}, "\u201cCurly quotes.\u201d", False),  # IFEval wants straight quotes
    ("startend:quotation", {}, '"Quoted" then not.', False),
    ("startend:quotation", {}, '"', False),
    # case and punctuation
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"},
     "NASA and the ESA met.", True),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"},
     "NASA and the Esa met.", False),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "less than"},
     "I saw NASA.", False),
    ("change_case:english_capital", {}, "THIS IS ALL CAPS, 42 TIMES!", True),
    ("change_case:english_capital", {}, "THIS IS MOSTLY Caps", False),
    ("change_case:english_capital", {}, "DAS IST NICHT ENGLISCH UND SEHR LAUT", False),
    ("change_case:english_lowercase", {}, "all small letters, 123 too.", True),
    ("change_case:english_lowercase", {}, "not All small", False),
    ("change_case:english_lowercase", {}, "123", False),
    ("change_case:english_lowercase", {}, "ceci est une phrase et elle est en minuscules", False),
    ("punctuation:no_comma", {}, "No commas here.", True),
    ("punctuation:no_comma", {}, "One, two.", False),
    ("punctuation:no_comma", {}, "\u4e00\uff0c\u4e8c", True),  # a full-width comma is another character
]


@pytest.mark.parametrize("iid,kwargs,text,followed", CASES)
def test_instruction(iid, kwargs, text, followed):
    assert check_instruction(text, iid, kwargs) is followed


def test_all_25_ifeval_instructions_are_covered_both_ways():
    ifeval = [i for i in INSTRUCTIONS if i not in IFBENCH_IDS]
    assert len(ifeval) == 25
    for iid in ifeval:
        assert {followed for i, _, _, followed in CASES if i == iid} == {True, False}, iid


def test_sentences_and_words():
    text = 'Dr. Smith met J. K. Rowling at 3.5 p.m. today. "Wow!" she said. Really?\n\nA title\n- item one\n- item two'
    assert sentences(text) == [
        "Dr. Smith met J. K. Rowling at 3.5 p.m. today.", '"Wow!"', "she said.", "Really?",
        "A title", "- item one", "- item two",
    ]
    assert sentences("***\n\n---") == []
    assert sentences("# Plan\n**Steps:**\nWe go. We **win** today.") == ["We go.", "We **win** today."]
    assert words("Don't over-think it: 3.5, 1,000 and well-known_names.") == [
        "Don't", "over-think", "it", "3.5", "1,000", "and", "well-known_names"
    ]
    assert words("मांजर खूप सुंदर आहे") == ["मांजर", "खूप", "सुंदर", "आहे"]  # vowel signs stay in the word


@pytest.mark.parametrize(
    "text,code",
    [
        ("The cat is on the table and it is very nice.", "en"),
        ("El gato está en la mesa y es muy bonito.", "es"),
        ("O gato está na mesa e é muito bonito.", "pt"),
        ("Le chat est sur la table et il est très beau.", "fr"),
        ("Il gatto è sul tavolo ed è molto bello.", "it"),
        ("Kot jest na stole i to jest bardzo ładne.", "pl"),
        ("Con mèo ở trên bàn và nó rất đẹp.", "vi"),
        ("Paka yuko juu ya meza na ni mzuri sana.", "sw"),
        ("Kissa on pöydällä ja se on todella kaunis.", "fi"),
        ("Кошка на столе, и это очень красиво.", "ru"),
        ("Кіт на столі, і це дуже гарно.", "uk"),
        ("Котката е на масата и това е много красиво.", "bg"),
        ("القطة على الطاولة وهي جميلة جدا", "ar"),
        ("گربه روی میز است و بسیار زیباست", "fa"),
        ("بلی میز پر ہے اور یہ بہت خوبصورت ہے", "ur"),
        ("मांजर टेबलावर आहे आणि ती खूप सुंदर आहे", "mr"),
        ("बिरालो टेबलमा छ र यो धेरै राम्रो छ", "ne"),
        ("猫はテーブルの上にいます", "ja"),
        ("고양이는 탁자 위에 있어요", "ko"),
        ("แมวอยู่บนโต๊ะ", "th"),
        ("বিড়ালটি টেবিলের উপর আছে", "bn"),
        ("ਬਿੱਲੀ ਮੇਜ਼ ਉੱਤੇ ਹੈ", "pa"),
        ("બિલાડી ટેબલ પર છે", "gu"),
        ("பூனை மேசையில் உள்ளது", "ta"),
        ("పిల్లి బల్ల మీద ఉంది", "te"),
        ("ಬೆಕ್ಕು ಮೇಜಿನ ಮೇಲೆ ಇದೆ", "kn"),
        ("പൂച്ച മേശപ്പുറത്താണ്", "ml"),
        ("החתול על השולחן", "he"),
        ("12345 !!!", "und"),
    ],
)
def test_detect_language(text, code):
    assert detect_language(text) == code


def _sample(completion: str, constraints) -> Sample:
    return Sample("p1", "instruction", "q", [1], reference={"constraints": constraints}, completion=completion)


def test_reward_is_fraction_followed_with_one_component_each():
    constraints = {
        "instruction_id_list": ["punctuation:no_comma", "change_case:english_lowercase",
                                "length_constraints:number_words"],
        # Datasets store every kwarg name in every row, null where unused.
        "kwargs": [{"num_words": None}, {}, {"num_words": 3, "relation": "less than", "keywords": None}],
    }
    result = instruction_reward(_sample("hello there", constraints))
    assert (result.score, result.passed) == (1.0, True)
    result = instruction_reward(_sample("Hello, there", constraints))
    assert result.score == pytest.approx(1 / 3) and result.passed is False
    assert result.components == {
        "0:punctuation:no_comma": 0.0, "1:change_case:english_lowercase": 0.0, "2:length_constraints:number_words": 1.0,
    }


def test_instruction_domain_routes_to_the_reward():
    constraints = {"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}
    result = score_sample(_sample("ok", constraints))
    assert result.components == {"instruction": 1.0, "instruction/0:punctuation:no_comma": 1.0}
    assert instruction_reward(Sample("p1", "instruction", "q", [1], completion="x")) is None


@pytest.mark.parametrize(
    "constraints,message",
    [
        ([{"type": "no_commas"}], "'instruction_id_list' list"),
        ({"instruction_id_list": []}, "non-empty 'instruction_id_list'"),
        ({"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}, {}]}, "same length"),
        ({"instruction_id_list": ["punctuation:no_comma", "haiku:form"], "kwargs": [{}, {}]},
         "instruction 1: unknown id 'haiku:form'"),
        ({"instruction_id_list": ["length_constraints:number_words"], "kwargs": [{"num_words": 5}]},
         "instruction 0:length_constraints:number_words: bad kwargs .*relation"),
        ({"instruction_id_list": ["detectable_format:title"], "kwargs": [{"strict": True}]},
         "instruction 0:detectable_format:title: bad kwargs"),
        ({"instruction_id_list": ["keywords:frequency"],
          "kwargs": [{"keyword": "a", "frequency": 1, "relation": "at most"}]},
         "relation must be one of"),
        ({"instruction_id_list": ["keywords:letter_frequency"],
          "kwargs": [{"letter": "ab", "let_frequency": 1, "let_relation": "at least"}]},
         "single letter"),
    ],
)
def test_bad_constraints_name_the_problem(constraints, message):
    with pytest.raises(ValueError, match=message):
        instruction_reward(_sample("x", constraints))


def test_kwargs_may_be_missing_for_instructions_without_arguments():
    assert parse_constraints({"instruction_id_list": ["startend:quotation"]}) == [("startend:quotation", {})]
