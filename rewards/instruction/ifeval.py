"""The 25 instruction types of IFEval (Zhou et al. 2023, "Instruction-Following Evaluation for
Large Language Models", arXiv:2311.07911), the checker registry and the shared text units.

Each instruction id has a checker `fn(text, **kwargs) -> bool` registered with `@instruction(id)`,
taking IFEval's kwarg names. The checkers follow IFEval's reference semantics where they are
definite:
- `keywords:existence` and `keywords:frequency` match substrings, case-insensitively ("cat" is in
  "category"), as IFEval's `re.search` / `re.findall` do; `keywords:forbidden_words` matches whole
  words (IFEval's `\b` pattern);
- `length_constraints:number_words` counts IFEval's words: runs of `\w` ("don't" is two);
- `startend:end_checker` is exact up to case, surrounding whitespace and straight double quotes
  (markdown around the phrase fails in strict mode; loose mode removes it);
- punctuation is not folded: `punctuation:no_comma` forbids the ASCII comma only, and
  `startend:quotation` wants straight double quotes;
- `detectable_format:constrained_response` wants one of IFEval's exact sentences ("My answer is
  yes." with its capital and period), and only one of them.
IFEval's sentence splitter and language detector rely on NLTK data and `langdetect`, neither
available offline, so those text rules are written here, and are what a careful reader would count:
- a word (for sentence and capital-word counts) is a run of letters/digits, joined by an apostrophe
  or hyphen ("don't", "well-known") or, between digits, by a point or comma ("3.5", "1,000");
- a sentence ends with `.`, `!`, `?` or `...` (closing quotes/brackets may follow) before
  whitespace or the end, except after a common abbreviation ("Dr.", "e.g.") or an initial ("J.");
  a line break also ends one (responses are not hard-wrapped; headings and list items stand
  alone); fragments without a word, markdown headings and wholly bold lines do not count;
- relations are IFEval's: "less than" (count < N) and "at least" (count >= N).
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from typing import Callable


InstructionFn = Callable[..., bool]
INSTRUCTIONS: dict[str, InstructionFn] = {}

# A letter or digit, or a combining mark (Indic vowel signs, Thai vowels, Arabic and Hebrew points,
# accents), which `\w` alone does not match.
_CHAR = r"[\w\u0300-\u036f\u0483-\u0489\u0591-\u05c7\u0610-\u061a\u064b-\u065f\u0670\u06d6-\u06ed\u0900-\u0dff\u0e00-\u0e7f\u1dc0-\u1dff]"
_WORD = re.compile(rf"\d+(?:[.,]\d+)+|{_CHAR}+(?:['\u2019-]{_CHAR}+)*")
_BLANK_LINE = re.compile(r"\n[ \t]*\n")
# An end mark, optional closing quotes/brackets, then whitespace or the end of the text.
_SENTENCE_END = re.compile(r"(?:[.!?\u2026]+)[\"'\u201d\u2019)\]]*(?=\s|$)|[\u3002\uff01\uff1f]")
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st mt vs etc e.g eg i.e ie cf al approx dept est fig inc ltd co corp "
    "no nos vol p pp ca a.m p.m u.s u.k jan feb mar apr jun jul aug sep sept oct nov dec".split()
)
_HEADING = re.compile(r"#+[ \t].*|\*\*[^*\n]+\*\*:?|__[^_\n]+__:?")  # a markdown heading or a bold line
_DIVIDER = re.compile(r"^[ \t]*\*[ \t]*\*[ \t]*\*[ \t*]*$", re.MULTILINE)
_BULLET = re.compile(r"^[ \t]*[*+-][ \t]+\S", re.MULTILINE)
_PLACEHOLDER = re.compile(r"\[[^\[\]\n]*[^\s\[\]][^\[\]\n]*\]")
# *text*, **text** or ***text*** on one line; `* item` (a bullet) and `2 * 3` are not highlights.
_HIGHLIGHT = re.compile(r"(?<!\*)(\*{1,3})(?![\s*])([^*\n]*?[^\s*])\1(?!\*)")
_TITLE = re.compile(r"<<[^\n<>]*[^\s<>][^\n<>]*>>")
_JSON_FENCE = re.compile(r"```[A-Za-z]*[ \t]*\n?(.*?)\n?\s*```", re.DOTALL)
_LEADING_MARKUP = re.compile(r"^[\s*_#>\"'\u201c\u2018`]+")
_CONSTRAINED = re.compile(r"My answer is (?:yes|no|maybe)\.")
_IFEVAL_WORD = re.compile(r"\w+")
_RELATIONS = ("less than", "at least")


def instruction(instruction_id: str) -> Callable[[InstructionFn], InstructionFn]:
    """Register `fn(text, **kwargs) -> bool` as the checker of IFEval instruction `instruction_id`."""

    def deco(fn: InstructionFn) -> InstructionFn:
        if instruction_id in INSTRUCTIONS:
            raise ValueError(f"instruction {instruction_id!r} is already registered")
        INSTRUCTIONS[instruction_id] = fn
        return fn

    return deco


# --- text units -----------------------------------------------------------------------------------


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def _is_abbreviation(before: str) -> bool:
    """True when the text before a single '.' ends with an abbreviation or an initial."""
    token = before.split()[-1] if before.split() else ""
    token = token.lstrip("(\"'\u201c\u2018").lower()
    return token in _ABBREVIATIONS or (len(token) == 1 and token.isalpha())


def sentences(text: str) -> list[str]:
    """The sentences of `text` (see the module docstring for the rule)."""
    out: list[str] = []
    for block in text.splitlines():
        start = 0
        for match in _SENTENCE_END.finditer(block):
            if match.group().rstrip("\"'\u201d\u2019)]") == "." and _is_abbreviation(block[start : match.start()]):
                continue
            out.append(block[start : match.end()])
            start = match.end()
        out.append(block[start:])
    return [s.strip() for s in out if _WORD.search(s) and not _HEADING.fullmatch(s.strip())]


def _count_words(text: str, phrase: str) -> int:
    """Whole-word, case-insensitive occurrences of `phrase` (inner whitespace may vary)."""
    parts = [re.escape(p) for p in phrase.split()]
    if not parts:
        raise ValueError("keyword must not be empty")
    pattern = r"(?<!\w)" + r"\s+".join(parts) + r"(?!\w)"
    return len(re.findall(pattern, text, re.IGNORECASE))


def _compare(count: int, relation: str, n: int) -> bool:
    if relation not in _RELATIONS:
        raise ValueError(f"relation must be one of {list(_RELATIONS)}, got {relation!r}")
    return count < n if relation == "less than" else count >= n


def _squash(text: str) -> str:
    return " ".join(text.split()).lower()


# --- keywords -------------------------------------------------------------------------------------


def count_substring(text: str, keyword: str) -> int:
    """Non-overlapping, case-insensitive occurrences of `keyword` anywhere in `text`."""
    if not keyword.strip():
        raise ValueError("keyword must not be empty")
    return len(re.findall(re.escape(keyword), text, re.IGNORECASE))


@instruction("keywords:existence")
def keywords_existence(text: str, *, keywords: list[str]) -> bool:
    """Every keyword appears as a substring (case-insensitive: "cat" is in "category")."""
    return all(count_substring(text, k) > 0 for k in keywords)


@instruction("keywords:frequency")
def keywords_frequency(text: str, *, keyword: str, frequency: int, relation: str) -> bool:
    """The keyword's substring count (case-insensitive) compared with `frequency` by `relation`."""
    return _compare(count_substring(text, keyword), relation, frequency)


@instruction("keywords:forbidden_words")
def keywords_forbidden_words(text: str, *, forbidden_words: list[str]) -> bool:
    """None of the words appears (whole words, case-insensitive)."""
    return not any(_count_words(text, w) for w in forbidden_words)


@instruction("keywords:letter_frequency")
def keywords_letter_frequency(text: str, *, letter: str, let_frequency: int, let_relation: str) -> bool:
    """Occurrences of one letter (case-insensitive) compared with `let_frequency` by `let_relation`."""
    if len(letter) != 1 or not letter.isalpha():
        raise ValueError(f"letter must be a single letter, got {letter!r}")
    return _compare(text.lower().count(letter.lower()), let_relation, let_frequency)


# --- language -------------------------------------------------------------------------------------

# Scripts that name one language (or a family resolved below), by Unicode character-name prefix.
_SCRIPTS = {
    "HIRAGANA": "ja", "KATAKANA": "ja", "HANGUL": "ko", "CJK": "zh", "THAI": "th", "HEBREW": "he",
    "ARABIC": "ar", "DEVANAGARI": "hi", "BENGALI": "bn", "GURMUKHI": "pa", "GUJARATI": "gu",
    "TAMIL": "ta", "TELUGU": "te", "KANNADA": "kn", "MALAYALAM": "ml", "CYRILLIC": "ru", "GREEK": "el",
    "GEORGIAN": "ka", "ARMENIAN": "hy", "LATIN": "latin",
}
# Frequent function words per language (written for this module), for the Latin and ambiguous scripts.
_STOPWORDS = {
    "en": "the and is are was were of to in that it you for with this be on not have has as what i my we "
          "they can will your an or at by from but he she his her their there which would",
    "es": "el la los las de que y en un una es por con para no se del al lo como más pero su sus muy "
          "también está son este esta yo",
    "pt": "o os as de que e em um uma é não do da dos das para com por se mais mas como também está são "
          "você isso ao eu",
    "fr": "le la les de des du et est un une en que qui pour dans pas ne sur avec il elle nous vous ce "
          "cette au aux sont mais je",
    "de": "der die das und ist nicht ein eine zu den dem mit sich auf für von im es ich sie wir auch "
          "sind als wie oder aber",
    "it": "il lo la gli le di che e è un una per non in del della con sono si mi ma come anche più "
          "questo questa al io",
    "nl": "de het een en van is dat niet op te zijn voor met ik je ze wij maar ook als er dit",
    "pl": "i w nie na się jest to że z do o jak ale od po co tak przez dla są być jego",
    "vi": "và là của có không những các một được cho trong với người này đã để như khi rất",
    "sw": "na ya wa kwa ni za katika la kuwa hii hiyo lakini sana pia watu kama yake wake mimi wewe sisi",
    "fi": "ja on ei se että hän oli ovat mutta kun tai niin kuin myös minä sinä me tämä joka mitä ole",
    "sv": "och att det som en på är av för med inte till den har jag de om ett men",
    "tr": "ve bir bu da de için ile çok ne ama gibi daha olarak olan var yok ben sen",
    "id": "dan yang di ini itu dengan untuk tidak dari dalam akan ada saya kami juga atau karena",
    "ro": "și în de la cu nu este un o care pe să că din pentru sunt mai",
    "hi": "है और के में की से हैं को का यह था एक पर नहीं",
    "mr": "आहे आणि हे या ते की आहेत होते व त्या मी आम्ही",
    "ne": "छ र पनि हो को मा छन् गर्न भएको यो थियो",
    "ru": "и в не на что это как он она я с по но к так же из у за",
    "bg": "и в не на че това как той тя аз с по но към така от за са се да",
    "uk": "і в не на що це як він вона я з по але до так від за та",
}
_STOPWORD_SETS = {lang: frozenset(ws.split()) for lang, ws in _STOPWORDS.items()}
_SCRIPT_FAMILIES = {
    "latin": ("en", "es", "pt", "fr", "de", "it", "nl", "pl", "vi", "sw", "fi", "sv", "tr", "id", "ro"),
    "hi": ("hi", "mr", "ne"),
    "ru": ("ru", "bg", "uk"),
}


@functools.lru_cache(maxsize=4096)
def _script_of(ch: str) -> str | None:
    name = unicodedata.name(ch, "")
    return next((lang for prefix, lang in _SCRIPTS.items() if name.startswith(prefix)), None)


def detect_language(text: str) -> str:
    """ISO 639-1 code of the main language of `text` ("und" when it has no letters).

    The writing system decides first (Hangul -> ko, Thai -> th, ...; any kana -> ja). Within the
    Arabic script, letters only Urdu (ٹ ڈ ڑ ں ے) or Persian (پ چ ژ گ ی ک) use decide; within
    Cyrillic, Ukrainian letters (і ї є ґ) or Russian ones (ы э); otherwise, and for the Latin script
    and Devanagari, the language whose common function words occur most often wins (ties -> the
    first listed: English for Latin, Hindi, Russian).
    """
    counts: dict[str, int] = {}
    for ch in text:
        if ch.isalpha():
            script = _script_of(ch)
            if script is not None:
                counts[script] = counts.get(script, 0) + 1
    if not counts:
        return "und"
    if counts.get("ja"):
        return "ja"
    script = max(counts, key=counts.get)
    if script == "ar":
        if any(c in text for c in "\u0679\u0688\u0691\u06ba\u06d2"):
            return "ur"
        return "fa" if any(c in text for c in "\u067e\u0686\u0698\u06af\u06cc\u06a9") else "ar"
    if script == "ru":
        if any(c in text.lower() for c in "іїєґ"):
            return "uk"
        if any(c in text.lower() for c in "ыэ"):
            return "ru"
    family = _SCRIPT_FAMILIES.get(script)
    if family is None:
        return script
    tokens = _WORD.findall(text.lower())
    hits = {lang: sum(t in _STOPWORD_SETS[lang] for t in tokens) for lang in family}
    return max(family, key=lambda lang: hits[lang])  # max keeps the first of equal counts


@instruction("language:response_language")
def language_response_language(text: str, *, language: str) -> bool:
    """The response is written in `language` (ISO 639-1 code; see `detect_language`)."""
    return detect_language(text) == language.lower()


# --- length ---------------------------------------------------------------------------------------


@instruction("length_constraints:number_sentences")
def length_number_sentences(text: str, *, num_sentences: int, relation: str) -> bool:
    """Sentence count compared with `num_sentences` by `relation`."""
    return _compare(len(sentences(text)), relation, num_sentences)


@instruction("length_constraints:number_words")
def length_number_words(text: str, *, num_words: int, relation: str) -> bool:
    """IFEval's word count (runs of `\\w`: "don't" and "3.5" are two each) compared by `relation`."""
    return _compare(len(_IFEVAL_WORD.findall(text)), relation, num_words)


@instruction("length_constraints:number_paragraphs")
def length_number_paragraphs(text: str, *, num_paragraphs: int) -> bool:
    """Exactly `num_paragraphs` paragraphs separated by markdown dividers (a line of `***`); an empty
    paragraph between two dividers fails, a divider at the very start or end is ignored."""
    parts = _DIVIDER.split(text)
    if any(not p.strip() for p in parts[1:-1]):
        return False
    return len([p for p in parts if p.strip()]) == num_paragraphs


@instruction("length_constraints:nth_paragraph_first_word")
def length_nth_paragraph_first_word(text: str, *, num_paragraphs: int, nth_paragraph: int, first_word: str) -> bool:
    """Exactly `num_paragraphs` paragraphs separated by blank lines, and paragraph `nth_paragraph`
    (1-based) starts with `first_word` (case-insensitive; leading quotes and markdown are skipped)."""
    paragraphs = [p for p in _BLANK_LINE.split(text) if p.strip()]
    if len(paragraphs) != num_paragraphs or not 1 <= nth_paragraph <= len(paragraphs):
        return False
    first = _WORD.match(_LEADING_MARKUP.sub("", paragraphs[nth_paragraph - 1]))
    return first is not None and first.group().lower() == first_word.strip().lower()


# --- detectable content and format ----------------------------------------------------------------


@instruction("detectable_content:number_placeholders")
def content_number_placeholders(text: str, *, num_placeholders: int) -> bool:
    """At least `num_placeholders` square-bracket placeholders such as `[address]`."""
    return len(_PLACEHOLDER.findall(text)) >= num_placeholders


@instruction("detectable_content:postscript")
def content_postscript(text: str, *, postscript_marker: str) -> bool:
    """A line starts with the marker ("P.S.", "P.P.S"; case, periods and spaces between its letters
    are free) and some text follows it."""
    letters = [c for c in postscript_marker if c.isalnum()]
    if not letters:
        raise ValueError(f"postscript_marker must contain letters, got {postscript_marker!r}")
    marker = r"[.\s]?".join(re.escape(c) for c in letters)
    pattern = rf"^[ \t*_>#]*{marker}(?![^\W\d_])[.:]?.*?\w"
    return re.search(pattern, text, re.IGNORECASE | re.MULTILINE | re.DOTALL) is not None


@instruction("detectable_format:number_bullet_lists")
def format_number_bullet_lists(text: str, *, num_bullets: int) -> bool:
    """Exactly `num_bullets` markdown bullet lines (`* `, `- ` or `+ `; `**bold**` and `---` are not)."""
    return len(_BULLET.findall(text)) == num_bullets


@instruction("detectable_format:constrained_response")
def format_constrained_response(text: str) -> bool:
    """Contains exactly one of "My answer is yes.", "My answer is no.", "My answer is maybe." (case
    and period as written)."""
    return len(set(_CONSTRAINED.findall(text))) == 1


@instruction("detectable_format:number_highlighted_sections")
def format_number_highlighted_sections(text: str, *, num_highlights: int) -> bool:
    """At least `num_highlights` markdown-highlighted spans on one line (`*text*`, `**text**`)."""
    return len(_HIGHLIGHT.findall(text)) >= num_highlights


@instruction("detectable_format:multiple_sections")
def format_multiple_sections(text: str, *, section_spliter: str, num_sections: int) -> bool:
    """Exactly `num_sections` lines start with the splitter and a number ("SECTION 1"; case-insensitive,
    markdown heading/bold marks before it allowed)."""
    pattern = rf"^[ \t#*_>]*{re.escape(section_spliter.strip())}[ \t]*\d+"
    return len(re.findall(pattern, text, re.IGNORECASE | re.MULTILINE)) == num_sections


@instruction("detectable_format:json_format")
def format_json(text: str) -> bool:
    """The whole response is valid JSON, optionally inside one fenced (```json) block."""
    body = text.strip()
    fenced = _JSON_FENCE.fullmatch(body)
    try:
        json.loads(fenced.group(1) if fenced else body)
    except json.JSONDecodeError:
        return False
    return True


@instruction("detectable_format:title")
def format_title(text: str) -> bool:
    """A title in double angular brackets, such as <<poem of joy>>."""
    return _TITLE.search(text) is not None


@instruction("combination:two_responses")
def combination_two_responses(text: str) -> bool:
    """Two different, non-empty responses separated by six asterisks `******`."""
    parts = text.split("******")
    if any(not p.strip() for p in parts[1:-1]):
        return False
    answers = [p.strip() for p in parts if p.strip()]
    return len(answers) == 2 and answers[0] != answers[1]


@instruction("combination:repeat_prompt")
def combination_repeat_prompt(text: str, *, prompt_to_repeat: str) -> bool:
    """The response starts with the request repeated word for word (case and spacing are free)."""
    return _squash(text).startswith(_squash(prompt_to_repeat))


@instruction("startend:end_checker")
def startend_end_checker(text: str, *, end_phrase: str) -> bool:
    """The response ends with `end_phrase` (case-insensitive); only whitespace and straight double
    quotes around the response are ignored."""
    return text.strip().strip('"').lower().endswith(end_phrase.strip().lower())


@instruction("startend:quotation")
def startend_quotation(text: str) -> bool:
    """The whole response is wrapped in straight double quotation marks."""
    body = text.strip()
    return len(body) > 1 and body[0] == '"' and body[-1] == '"'


# --- case and punctuation -------------------------------------------------------------------------


@instruction("change_case:capital_word_frequency")
def case_capital_word_frequency(text: str, *, capital_frequency: int, capital_relation: str) -> bool:
    """The number of words written in all capitals ("NASA", also "I") compared by `capital_relation`."""
    return _compare(sum(w.isupper() for w in words(text)), capital_relation, capital_frequency)


@instruction("change_case:english_capital")
def case_english_capital(text: str) -> bool:
    """English, with no lowercase letter (and at least one letter)."""
    return text.isupper() and detect_language(text.lower()) == "en"


@instruction("change_case:english_lowercase")
def case_english_lowercase(text: str) -> bool:
    """English, with no uppercase letter (and at least one letter)."""
    return text.islower() and detect_language(text) == "en"


@instruction("punctuation:no_comma")
def punctuation_no_comma(text: str) -> bool:
    """No ASCII comma anywhere (other scripts' commas are different characters)."""
    return "," not in text
