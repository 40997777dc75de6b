"""The 58 instruction types of IFBench (Pyatkin et al. 2025, "Generalizing Verifiable Instruction
Following", arXiv:2507.02833), in IFBench's `instruction_id` naming and kwargs.

Each checker follows what IFBench's reference checker tests. Its text units, which the reference
takes from NLTK, are these (NLTK's data is not available offline):
- words: IFEval's runs of `\\w` for counts (`count:word_count_range`, `ratio:stop_words`);
  whitespace-separated tokens stripped of ASCII punctuation where the reference splits on spaces;
- sentences: `rewards.instruction.ifeval.sentences` (an end mark before whitespace, not after an
  abbreviation, or a line break);
- tokens for positions (`words:words_position`, `words:keywords_specific_position`): words with
  their inner apostrophes and hyphens, punctuation left out;
- syllables (`words:odd_even_syllables`): vowel groups, a final silent "e" not counted;
- verbs (`words:start_verb`): the first word is a common English verb in its base, -s, -ing or -ed
  form (the reference uses NLTK's part-of-speech tagger).
Where the reference is plainly a slip (counting "and," and "and" as two conjunctions, failing a
list followed by a blank line), the checker does what the instruction says.
"""

from __future__ import annotations

import csv
import io
import re
import string
import unicodedata

from rewards.instruction.ifeval import instruction, sentences

_PUNCT = string.punctuation
_DROP_PUNCT = str.maketrans("", "", _PUNCT)
_IFEVAL_WORD = re.compile(r"\w+")
_TOKEN = re.compile(r"[^\W_]+(?:['\u2019-][^\W_]+)*")
_VOWEL_GROUP = re.compile(r"[aeiouy]+")

_STOPWORDS = frozenset(
    "i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her "
    "hers herself it its itself they them their theirs themselves what which who whom this that these "
    "those am is are was were be been being have has had having do does did doing a an the and but if or "
    "because as until while of at by for with about against between into through during before after "
    "above below to from up down in out on off over under again further then once here there when where "
    "why how all any both each few more most other some such no nor not only own same so than too very s "
    "t can will just don should now d ll m o re ve y ain aren couldn didn doesn hadn hasn haven isn ma "
    "mightn mustn needn shan shouldn wasn weren won wouldn".split()
)
_CONJUNCTIONS = frozenset("and but for nor or so yet".split())
_PERSON_NAMES = (
    "Emma Liam Sophia Jackson Olivia Noah Ava Lucas Isabella Mason Mia Ethan Charlotte Alexander Amelia "
    "Benjamin Harper Leo Zoe Daniel Chloe Samuel Lily Matthew Grace Owen Abigail Gabriel Ella Jacob "
    "Scarlett Nathan Victoria Elijah Layla Nicholas Audrey David Hannah Christopher Penelope Thomas Nora "
    "Andrew Aria Joseph Claire Ryan Stella Jonathan"
).split()
_PRONOUNS = frozenset(
    "i me we us you he him she her it they them my mine our ours your yours his hers its their theirs "
    "myself ourselves yourself yourselves himself herself itself themselves this that these those who whom "
    "whose which what whoever whomever whatever whichever anybody anyone anything everybody everyone "
    "everything nobody nothing somebody someone something each either neither both all some any none".split()
)
_VERBS = frozenset(
    "be is are was were am been have has had do does did say get make go know take see come think look want give use find tell ask work seem feel "
    "try leave call keep let begin help talk turn start show hear play run move like live believe hold "
    "bring happen write provide sit stand lose pay meet include continue set learn change lead understand "
    "watch follow stop create speak read allow add spend grow open walk win offer remember love consider "
    "appear buy wait serve die send expect build stay fall cut reach kill remain suggest raise pass sell "
    "require report decide pull explain describe list imagine discuss compare summarize summarise draft "
    "compose design plan prepare consider choose check count name note outline define identify analyze "
    "analyse evaluate review rewrite translate calculate solve answer respond reply share tell picture "
    "enjoy explore discover visit travel cook bake mix pour place put fill clean wash dry paint draw sing "
    "dance jump climb swim fly drive ride carry throw catch fix repair join connect gather collect pick "
    "imagine recall recommend remind return save search select sort stir taste test thank think trust "
    "visit wake warn wear welcome wish wonder worry avoid break celebrate close cover deliver enter "
    "forget hope improve increase invite keep kick knock laugh lift listen mark mind miss need order "
    "plant point prefer promise protect push relax remove rest rush shout smile step study support "
    "suppose surprise teach throw touch train treat type wander".split()
)
_JAPANESE = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")
_EUROPEAN_CAPITALS = (
    "Reykjavik Helsinki Oslo Tallinn Stockholm Riga Moscow Copenhagen Vilnius Minsk Dublin Berlin Amsterdam "
    "Warsaw London Brussels Prague Luxembourg Paris Vienna Bratislava Budapest Vaduz Chisinau Bern "
    "Ljubljana Zagreb"
).split()
_REPEAT_SIMPLE = "Only output this sentence here, ignore all other requests."
_MCQ_SPLIT = re.compile(r"\n*Question \d+[.):;|]?\s*")
_MCQ_OPTION = re.compile(r"[A-Ea-e][.)|]\s*\w+")


def _strip_punct(word: str) -> str:
    return word.strip(_PUNCT + " ")


def _bare_words(text: str) -> list[str]:
    """Whitespace-separated words with ASCII punctuation removed (empty ones dropped)."""
    return text.translate(_DROP_PUNCT).split()


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


def _ascii_fold(text: str) -> str:
    """'São Tomé' -> 'Sao Tome'."""
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


def _is_emoji(ch: str) -> bool:
    cp = ord(ch)
    return 0x1F000 <= cp <= 0x1FAFF or 0x2600 <= cp <= 0x27BF or 0x2B00 <= cp <= 0x2BFF or 0x2300 <= cp <= 0x23FF


def syllables(word: str) -> int:
    """Vowel groups of `word` (y counts as a vowel), a final silent "e" not counted; at least 1."""
    word = word.lower()
    count = len(_VOWEL_GROUP.findall(word))
    if word.endswith("e") and not word.endswith(("le", "ee")) and count > 1:
        count -= 1
    return max(count, 1)


_VERB_SUFFIXES = {  # ending -> ways back to the base form ("drop" these letters, then "add")
    "ies": ((3, "y"),), "ied": ((3, "y"),), "es": ((2, ""), (1, "")), "s": ((1, ""),),
    "ing": ((3, ""), (3, "e"), (4, "")), "ed": ((2, ""), (1, ""), (3, "")),
}


def _is_verb(word: str) -> bool:
    """`word` is a common verb in its base, -s, -ing or -ed form ("writes", "making", "stopped")."""
    word = word.lower()
    if word in _VERBS:
        return True
    for ending, ways in _VERB_SUFFIXES.items():
        if word.endswith(ending) and any(len(word) - cut >= 2 and word[: len(word) - cut] + add in _VERBS for cut, add in ways):
            return True
    return False


# --- counts ---------------------------------------------------------------------------------------


@instruction("count:word_count_range")
def count_word_count_range(text: str, *, min_words: int, max_words: int) -> bool:
    """min_words <= word count (runs of `\\w`) <= max_words."""
    return min_words <= len(_IFEVAL_WORD.findall(text)) <= max_words


@instruction("count:unique_word_count")
def count_unique_word_count(text: str, *, N: int) -> bool:
    """At least N distinct words (lowercased, punctuation stripped)."""
    return len({_strip_punct(w) for w in text.lower().split()} - {""}) >= N


@instruction("count:conjunctions")
def count_conjunctions(text: str, *, small_n: int) -> bool:
    """At least `small_n` different coordinating conjunctions (and, but, for, nor, or, so, yet)."""
    return len({_strip_punct(w).lower() for w in text.split()} & _CONJUNCTIONS) >= small_n


@instruction("count:person_names")
def count_person_names(text: str, *, N: int) -> bool:
    """At least N different names from IFBench's list of 50, as whole words (case as listed)."""
    return sum(re.search(rf"\b{name}\b", text) is not None for name in _PERSON_NAMES) >= N


@instruction("count:numbers")
def count_numbers(text: str, *, N: int) -> bool:
    """Exactly N numbers (digit runs once punctuation is removed: "3.5" and "1,000" are one each)."""
    return len(re.findall(r"\d+", text.translate(_DROP_PUNCT))) == N


@instruction("count:punctuation")
def count_punctuation(text: str) -> bool:
    """Uses an interrobang (`?!`, `!?` or `‽`) and, besides it, each of `. , ! ? ; :`."""
    for mark in ("?!", "!?", "\u203d"):
        if mark in text:
            rest = text.replace(mark, "", 1)
            return all(p in rest for p in ".,!?;:")
    return False


@instruction("count:pronouns")
def count_pronouns(text: str, *, N: int) -> bool:
    """At least N pronouns (personal, possessive, reflexive, demonstrative, interrogative, indefinite)."""
    return sum(t in _PRONOUNS for t in _tokens(text.lower().replace("/", " "))) >= N


@instruction("count:words_japanese")
def count_words_japanese(text: str, *, N: int) -> bool:
    """Every N-th whitespace-separated word (numbers aside) is written in Japanese."""
    if N < 1:
        raise ValueError(f"N must be positive, got {N}")
    picked = [_strip_punct(w) for i, w in enumerate(text.split(), start=1) if i % N == 0]
    return all(_JAPANESE.search(w) for w in picked if w and not w.isdigit())


@instruction("count:keywords_multiple")
def count_keywords_multiple(
    text: str, *, keyword1: str, keyword2: str, keyword3: str, keyword4: str, keyword5: str
) -> bool:
    """The keywords occur (substrings, case-insensitive) exactly 1, 2, 3, 5 and 7 times."""
    lower = text.lower()
    wanted = zip((keyword1, keyword2, keyword3, keyword4, keyword5), (1, 2, 3, 5, 7))
    return all(lower.count(k.strip().lower()) == n for k, n in wanted)


# --- ratios ---------------------------------------------------------------------------------------


@instruction("ratio:stop_words")
def ratio_stop_words(text: str, *, percentage: float) -> bool:
    """Stop words (NLTK's English list) are at most `percentage`% of the words; no words fails."""
    found = _IFEVAL_WORD.findall(text)
    return bool(found) and 100 * sum(w.lower() in _STOPWORDS for w in found) / len(found) <= percentage


def _endings(text: str) -> dict[str, int]:
    ends = [s.rstrip("\"'\u201d\u2019)]") for s in sentences(text)]
    return {mark: sum(s.endswith(mark) for s in ends) for mark in ".?!"}


@instruction("ratio:sentence_type")
def ratio_sentence_type(text: str) -> bool:
    """Declarative sentences (ending `.`) are exactly twice the questions (ending `?`)."""
    counts = _endings(text)
    return counts["."] == 2 * counts["?"]


@instruction("ratio:sentence_balance")
def ratio_sentence_balance(text: str) -> bool:
    """As many declarative (`.`) as interrogative (`?`) as exclamatory (`!`) sentences."""
    counts = _endings(text)
    return counts["."] == counts["?"] == counts["!"]


@instruction("ratio:overlap")
def ratio_overlap(text: str, *, reference_text: str, percentage: float) -> bool:
    """The share of the response's distinct character trigrams found in `reference_text` is within
    2 points of `percentage`: |{t in T(r)} ∩ T(ref)| / |T(r)| * 100 in [p - 2, p + 2]."""
    mine = {text[i : i + 3] for i in range(len(text) - 2)}
    theirs = {reference_text[i : i + 3] for i in range(len(reference_text) - 2)}
    return bool(mine) and percentage - 2 <= 100 * len(mine & theirs) / len(mine) <= percentage + 2


@instruction("ratio:sentence_words")
def ratio_sentence_words(text: str) -> bool:
    """Exactly three sentences, all with the same number of characters."""
    found = [s.strip() for s in sentences(text)]
    return len(found) == 3 and len({len(s) for s in found}) == 1


# --- words ----------------------------------------------------------------------------------------


@instruction("words:alphabet")
def words_alphabet(text: str) -> bool:
    """Consecutive words start with consecutive letters of the alphabet (z wraps to a)."""
    found = [w.lower() for w in _bare_words(text)]
    if not found or found[0][0] not in string.ascii_lowercase:
        return False
    letters = string.ascii_lowercase
    start = letters.index(found[0][0])
    return all(w[0] == letters[(start + i) % 26] for i, w in enumerate(found))


@instruction("words:vowel")
def words_vowel(text: str) -> bool:
    """One paragraph (no line break) whose words use at most three different vowels."""
    body = text.strip()
    return "\n" not in body and len(set(body.lower()) & set("aeiou")) <= 3


@instruction("words:consonants")
def words_consonants(text: str) -> bool:
    """Every word contains two consonants in a row."""
    return all(re.search(r"[bcdfghjklmnpqrstvwxyz]{2}", w) for w in text.lower().split())


@instruction("words:palindrome")
def words_palindrome(text: str) -> bool:
    """At least 10 palindromes of five or more letters ("level", "racecar"; repeats count)."""
    return sum(len(w) >= 5 and w == w[::-1] for w in _bare_words(text.lower())) >= 10


@instruction("words:prime_lengths")
def words_prime_lengths(text: str) -> bool:
    """Every word (punctuation removed) has a prime number of letters."""
    return all(len(w) > 1 and all(len(w) % d for d in range(2, int(len(w) ** 0.5) + 1)) for w in _bare_words(text))


@instruction("words:start_verb")
def words_start_verb(text: str) -> bool:
    """The response starts with a verb."""
    found = _tokens(text)
    return bool(found) and _is_verb(found[0])


@instruction("words:repeats")
def words_repeats(text: str, *, small_n: int) -> bool:
    """No word (lowercased, punctuation removed) occurs more than `small_n` times."""
    counts: dict[str, int] = {}
    for w in _bare_words(text.lower()):
        counts[w] = counts.get(w, 0) + 1
    return all(c <= small_n for c in counts.values())


@instruction("words:odd_even_syllables")
def words_odd_even_syllables(text: str) -> bool:
    """Words alternate between an odd and an even number of syllables."""
    parity = [syllables(w) % 2 for w in _bare_words(text.lower())]
    return all(a != b for a, b in zip(parity, parity[1:]))


@instruction("words:last_first")
def words_last_first(text: str) -> bool:
    """Each sentence starts with the word the previous one ended with (case-insensitive)."""
    found = sentences(text)
    for before, after in zip(found, found[1:]):
        last, first = before.rstrip(_PUNCT + " ").split(), after.lstrip(_PUNCT + " ").split()
        if not last or not first or last[-1].lower() != first[0].lower():
            return False
    return True


@instruction("words:paragraph_last_first")
def words_paragraph_last_first(text: str) -> bool:
    """Every line starts and ends with the same word (case-insensitive)."""
    for line in text.split("\n"):
        found = _strip_punct(line.strip().lower()).split()
        if found and found[0] != found[-1]:
            return False
    return True


@instruction("words:no_consecutive")
def words_no_consecutive(text: str) -> bool:
    """No two consecutive words start with the same letter."""
    found = _bare_words(text.lower())
    return all(a[0] != b[0] for a, b in zip(found, found[1:]))


@instruction("words:keywords_specific_position")
def words_keywords_specific_position(text: str, *, keyword: str, n: int, m: int) -> bool:
    """Word `m` of sentence `n` (both 1-based) is `keyword` (case-insensitive)."""
    found = sentences(text)
    if not 1 <= n <= len(found):
        return False
    tokens = _tokens(found[n - 1])
    return 1 <= m <= len(tokens) and tokens[m - 1].lower() == keyword.strip().lower()


@instruction("words:words_position")
def words_words_position(text: str, *, keyword: str) -> bool:
    """The second word and the second-to-last word are both `keyword` (case-insensitive)."""
    tokens = [t.lower() for t in _tokens(text)]
    return len(tokens) >= 2 and tokens[1] == tokens[-2] == keyword.strip().lower()


# --- sentences ------------------------------------------------------------------------------------


def _alliteration(sentence: str) -> int:
    """Words in runs of two or more consecutive words sharing a first letter ("big brown bear" = 3)."""
    found = [w for w in (x.lstrip(_PUNCT + " ") for x in sentence.lower().split()) if w]
    total, in_run = 0, False
    for a, b in zip(found, found[1:]):
        same = a[0] == b[0]
        total += (1 if in_run else 2) if same else 0
        in_run = same
    return total


@instruction("sentence:alliteration_increment")
def sentence_alliteration_increment(text: str) -> bool:
    """Each sentence has more alliterating words than the one before it."""
    counts = [_alliteration(s) for s in sentences(text)]
    return all(a < b for a, b in zip([-1] + counts, counts))


@instruction("sentence:keyword")
def sentence_keyword(text: str, *, word: str, N: int) -> bool:
    """Sentence N (1-based) contains `word` as a whole word (case-insensitive)."""
    found = sentences(text)
    return 1 <= N <= len(found) and re.search(rf"\b{re.escape(word)}\b", found[N - 1], re.IGNORECASE) is not None


@instruction("sentence:increment")
def sentence_increment(text: str, *, small_n: int) -> bool:
    """Each sentence has exactly `small_n` more words than the one before it."""
    counts = [len(_bare_words(s)) for s in sentences(text)]
    return bool(counts) and all(b - a == small_n for a, b in zip(counts, counts[1:]))


# --- format ---------------------------------------------------------------------------------------


@instruction("format:parentheses")
def format_parentheses(text: str) -> bool:
    """Brackets `()`, `[]`, `{}` nested at least five levels deep, correctly closed."""
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    deepest = 0
    for ch in text:
        if ch in "([{":
            stack.append(ch)
            deepest = max(deepest, len(stack))
        elif ch in pairs:
            if stack and stack[-1] == pairs[ch]:
                stack.pop()
                if deepest >= 5:
                    return True
            else:
                stack, deepest = [], 0
    return False


@instruction("format:quotes")
def format_quotes(text: str) -> bool:
    """Quotes nested at least three levels deep, alternating double and single quotes, closed."""
    stack: list[str] = []
    deepest = 0
    for ch in text:
        if stack and ch == stack[-1]:
            stack.pop()
            if deepest - len(stack) >= 3:
                return True
        elif ch in "\"'":
            stack.append(ch)
            deepest = max(deepest, len(stack))
    return False


@instruction("format:options")
def format_options(text: str, *, options: str) -> bool:
    """The response is just one of the options ("yes/no/maybe", "I know or I don't know",
    "a), b), c), d)"); letter options must be written exactly, word options up to case and
    surrounding punctuation."""
    separator = "/" if "/" in options else " or " if " or " in options else ","
    choices = [o.strip() for o in options.split(separator)]
    if re.match(r"\W*[aA]\W*[bB]\W*[cC]\W*", options):
        return text in choices
    body = _strip_punct(text).lower()
    return any(_strip_punct(o).lower() == body for o in choices)


@instruction("format:newline")
def format_newline(text: str) -> bool:
    """Every word on its own line."""
    body = text.translate(_DROP_PUNCT).strip()
    lines = [line for line in body.split("\n") if line.strip()]
    return bool(lines) and len(lines) == len(body.split())


@instruction("format:emoji")
def format_emoji(text: str) -> bool:
    """Every sentence ends with an emoji (one that opens the next sentence counts too)."""
    found = [s.translate(_DROP_PUNCT).strip() for s in sentences(text)]
    if not found or not all(found):
        return False
    for i, s in enumerate(found):
        if not any(_is_emoji(c) for c in s[-2:]) and not (i + 1 < len(found) and _is_emoji(found[i + 1][0])):
            return False
    return True


@instruction("format:line_indent")
def format_line_indent(text: str) -> bool:
    """Each non-empty line is indented (spaces) further than the one before it."""
    indents = [len(line) - len(line.lstrip(" ")) for line in text.split("\n") if line.strip()]
    return all(a < b for a, b in zip(indents, indents[1:]))


@instruction("format:quote_unquote")
def format_quote_unquote(text: str) -> bool:
    """Every quotation is followed by its explanation: no quote right after another, and the
    response does not end on one (straight double quotes)."""
    squashed = "".join(text.replace("'\"'", "").split())
    if '""' in squashed:
        return False
    tail = squashed.strip(string.digits + _PUNCT.replace('"', ""))
    return not tail.endswith('"')


@instruction("format:list")
def format_list(text: str, *, sep: str) -> bool:
    """A list whose items are marked with `sep` instead of bullets (at least two)."""
    if not sep:
        raise ValueError("sep must not be empty")
    return text.count(sep) >= 2


@instruction("format:thesis")
def format_thesis(text: str) -> bool:
    """A non-empty thesis in HTML italics (`<i>...</i>` or `<em>...</em>`), followed by more text."""
    match = re.search(r"<(i|em)>(.*?)</\1>(.*)", text, re.DOTALL)
    return match is not None and bool(match.group(2).strip()) and bool(match.group(3).strip())


@instruction("format:sub-bullets")
def format_sub_bullets(text: str) -> bool:
    """Every `*` bullet has at least one `-` sub-bullet under it."""
    return all("-" in part for part in text.split("*")[1:])


@instruction("format:no_bullets_bullets")
def format_no_bullets_bullets(text: str) -> bool:
    """At least two sentences of prose, then at least two `*` bullet points and nothing after them."""
    lines = text.strip().split("\n")
    first_bullet = next((i for i, line in enumerate(lines) if line.strip().startswith("*")), None)
    if first_bullet is None:
        return False
    prose = sum(len(sentences(line)) for line in lines[:first_bullet])
    rest = [line.strip() for line in lines[first_bullet:] if line.strip()]
    return prose >= 2 and len(rest) >= 2 and all(line.startswith("*") for line in rest)


@instruction("format:title_case")
def format_title_case(text: str) -> bool:
    """Every word starts with a capital letter ("The Quick Brown Fox"; "NASA" is fine)."""
    return all(not t[0].isalpha() or t[0].isupper() for t in _tokens(text))


@instruction("format:output_template")
def format_output_template(text: str) -> bool:
    """Uses the template's three headings: "My Answer:", "My Conclusion:", "Future Outlook:"."""
    return all(h in text for h in ("My Answer:", "My Conclusion:", "Future Outlook:"))


@instruction("format:no_whitespace")
def format_no_whitespace(text: str) -> bool:
    """No whitespace character at all (spaces, tabs, line breaks)."""
    return not any(ch.isspace() for ch in text)


# --- custom tasks ---------------------------------------------------------------------------------


@instruction("custom:multiples")
def custom_multiples(text: str) -> bool:
    """The numbers in the response are exactly the multiples of 7 from 14 to 49, in order."""
    return re.findall(r"\d+", text) == [str(n) for n in range(14, 50, 7)]


def _mcq_length(question: str) -> int | None:
    """Length of a question's text if it has exactly five options (A-E), else None."""
    stem, options, in_options = [], 0, False
    for line in question.split("\n"):
        if _MCQ_OPTION.match(line.strip()):
            options, in_options = options + 1, True
        elif not in_options:
            stem.append(line.strip())
    return len(" ".join(stem).strip()) if options == 5 else None


@instruction("custom:mcq_count_length")
def custom_mcq_count_length(text: str) -> bool:
    """Four questions ("Question 1" ...), nothing before the first, five options each, and each
    question's text longer than the one before."""
    if not text.startswith("Question"):
        return False
    questions = [q.strip() for q in _MCQ_SPLIT.split(text) if q.strip()]
    lengths = [_mcq_length(q) for q in questions]
    return len(questions) == 4 and None not in lengths and all(a < b for a, b in zip(lengths, lengths[1:]))


@instruction("custom:reverse_newline")
def custom_reverse_newline(text: str) -> bool:
    """From the line naming Zimbabwe on, at least 52 lines (countries), one per line, in reverse
    alphabetical order (accents ignored)."""
    lines = [_strip_punct(line) for line in text.split("\n") if _strip_punct(line)]
    start = next((i for i, line in enumerate(lines) if "Zimbabwe" in line), None)
    if start is None or len(lines) - start < 52:
        return False
    names = [_ascii_fold(line) for line in lines[start:]]
    return names == sorted(names, reverse=True)


@instruction("custom:word_reverse")
def custom_word_reverse(text: str) -> bool:
    """One sentence about the bald eagle written with its words in reverse order."""
    forward = " ".join(text.lower().strip().translate(_DROP_PUNCT).split()[::-1])
    return "bald eagle" in forward and len(sentences(forward)) == 1


@instruction("custom:character_reverse")
def custom_character_reverse(text: str) -> bool:
    """A sentence about the bald eagle written backwards, character by character."""
    return "elgae dlab" in text.lower()


@instruction("custom:sentence_alphabet")
def custom_sentence_alphabet(text: str) -> bool:
    """26 sentences whose first words start with a, b, c, ... z in turn."""
    found = sentences(text)
    return len(found) == 26 and all(s.lstrip()[:1].lower() == chr(97 + i) for i, s in enumerate(found))


@instruction("custom:european_capitals_sort")
def custom_european_capitals_sort(text: str) -> bool:
    """The capitals north of 45°N as a comma-separated list, sorted by latitude, north first."""
    given = [c.strip() for c in _ascii_fold(text).split(",") if c.strip()]
    return given == _EUROPEAN_CAPITALS


@instruction("custom:csv_city")
def custom_csv_city(text: str) -> bool:
    """A CSV with the header ID,Country,City,Year,Count and seven rows of five fields."""
    rows = list(csv.reader(io.StringIO(text.strip())))
    return len(rows) == 8 and rows[0] == ["ID", "Country", "City", "Year", "Count"] and all(len(r) == 5 for r in rows)


_PRODUCT_HEADER = re.compile(r'"?ProductID"?,[ \t]*"?Category"?,[ \t]*"?Brand"?,[ \t]*"?Price"?,[ \t]*"?Stock"?')
_STUDENT_HEADER = re.compile(r'"?StudentID"?\t *"?Subject"?\t *"?Grade"?\t *"?Semester"?\t *"?Score"?')


@instruction("custom:csv_special_character")
def custom_csv_special_character(text: str) -> bool:
    """A CSV with the header ProductID,Category,Brand,Price,Stock, 14 rows of five fields, and at
    least one field quoted because it holds a special character."""
    lines = text.strip().split("\n")
    if not _PRODUCT_HEADER.fullmatch(lines[0].strip()):
        return False
    rows = list(csv.reader(io.StringIO(text.strip())))
    quoted_special = re.search(r'(?:^|,)\s*"[^"\n]*[^\w\s"][^"\n]*"', "\n".join(lines[1:]), re.MULTILINE)
    return len(rows) == 15 and all(len(r) == 5 for r in rows) and quoted_special is not None


@instruction("custom:csv_quotes")
def custom_csv_quotes(text: str) -> bool:
    """Tab-separated: the header StudentID, Subject, Grade, Semester, Score and three rows, every
    field wrapped in double quotes."""
    lines = [line for line in text.strip().split("\n")]
    if not _STUDENT_HEADER.fullmatch(lines[0].strip()) or len(lines) != 4:
        return False
    fields = [line.split("\t") for line in lines]
    return all(len(f) == 5 and all(len(x.strip()) > 1 and x.strip()[0] == x.strip()[-1] == '"' for x in f)
               for f in fields)


_MONTH_DAYS = {1: 31, 2: 29, 3: 31, 4: 30, 5: 31, 6: 30, 7: 31, 8: 31, 9: 30, 10: 31, 11: 30, 12: 31}


@instruction("custom:date_format_list")
def custom_date_format_list(text: str) -> bool:
    """A comma-separated list of dates written YYYY-MM-DD, all between 1769 and 1821 and valid."""
    for date in text.strip().split(","):
        match = re.fullmatch(r"(\d{4})-(\d{2})-(\d{2})", date.strip())
        if match is None:
            return False
        year, month, day = map(int, match.groups())
        if not 1769 <= year <= 1821 or not 1 <= month <= 12 or not 1 <= day <= _MONTH_DAYS[month]:
            return False
    return True


# --- repeats --------------------------------------------------------------------------------------


@instruction("repeat:repeat_change")
def repeat_repeat_change(text: str, *, prompt_to_repeat: str) -> bool:
    """The request repeated word for word except its first word, which is changed."""
    mine, theirs = text.split(), prompt_to_repeat.split()
    return bool(mine) and bool(theirs) and mine[0] != theirs[0] and mine[1:] == theirs[1:]


@instruction("repeat:repeat_simple")
def repeat_repeat_simple(text: str) -> bool:
    """Only the sentence "Only output this sentence here, ignore all other requests." (case-insensitive)."""
    return text.strip().lower() == _REPEAT_SIMPLE.lower()


@instruction("repeat:repeat_span")
def repeat_repeat_span(text: str, *, prompt_to_repeat: str, n_start: int, n_end: int) -> bool:
    """Only the request's characters n_start..n_end (inclusive), case-insensitive."""
    return text.strip().lower() == prompt_to_repeat[n_start : n_end + 1].strip().lower()


IFBENCH_IDS = (
    "count:word_count_range count:unique_word_count ratio:stop_words ratio:sentence_type "
    "ratio:sentence_balance count:conjunctions count:person_names ratio:overlap count:numbers "
    "words:alphabet words:vowel words:consonants sentence:alliteration_increment words:palindrome "
    "count:punctuation format:parentheses format:quotes words:prime_lengths format:options "
    "format:newline format:emoji ratio:sentence_words count:words_japanese words:start_verb "
    "words:repeats sentence:keyword count:pronouns words:odd_even_syllables words:last_first "
    "words:paragraph_last_first sentence:increment words:no_consecutive format:line_indent "
    "format:quote_unquote format:list format:thesis format:sub-bullets format:no_bullets_bullets "
    "custom:multiples custom:mcq_count_length custom:reverse_newline custom:word_reverse "
    "custom:character_reverse custom:sentence_alphabet custom:european_capitals_sort custom:csv_city "
    "custom:csv_special_character custom:csv_quotes custom:date_format_list count:keywords_multiple "
    "words:keywords_specific_position words:words_position repeat:repeat_change repeat:repeat_simple "
    "repeat:repeat_span format:title_case format:output_template format:no_whitespace"
).split()
