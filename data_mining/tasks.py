"""Procedural tasks with verifiable answers, one family per capability domain.

- `arithmetic` (domain `math`): integer arithmetic whose difficulty is the number of digits of its
  operands;
- `code` (domain `code`): one-line Python functions checked by hidden asserts;
- `instruction` (domain `instruction`): IFEval-format constraints on short replies.

`make_task_split` mixes them into one train / held-out split. Prompt ids are derived from the generator seed and the index, and
the train / held-out split is made by prompt id (a stable hash), so held-out prompts are never
trained on, whatever the sizes asked for.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

from rl.config import ConfigError, DataConfig

OPERATORS = ("+", "-")


@dataclass(frozen=True)
class TaskRow:
    """One prompt with its reference fields, in the dataset row schema used across the project."""

    id: str
    domain: str
    prompt: str
    reference: dict[str, Any] = field(default_factory=dict)
    difficulty: int = 0


def heldout_fraction_of(prompt_id: str) -> float:
    """A stable number in [0, 1) derived from the prompt id, used to split train from held-out."""
    digest = hashlib.sha256(prompt_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def is_heldout(prompt_id: str, fraction: float = 0.1) -> bool:
    return heldout_fraction_of(prompt_id) < fraction


def arithmetic_prompt(a: int, op: str, b: int) -> str:
    return f"{a}{op}{b}="


def arithmetic_answer(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b


def _operand(rng: random.Random, digits: int) -> int:
    low = 0 if digits == 1 else 10 ** (digits - 1)
    return rng.randint(low, 10**digits - 1)


def iter_arithmetic(
    seed: int, min_digits: int = 1, max_digits: int = 3, distinct: bool = True
) -> Iterator[TaskRow]:
    """Stream of arithmetic prompts, identical for the same arguments; difficulty is uniform.

    The id is the expression itself, so the same expression always has the same id (and the same
    split) regardless of the seed or the order it was drawn in. With `distinct` the stream ends
    once no new expression turns up (small digit ranges run out).
    """
    rng = random.Random(seed)
    seen: set[str] = set()
    # A bounded number of consecutive duplicates means the space is exhausted.
    misses = 0
    while misses < 10_000:
        row = arithmetic_row(rng, rng.randint(min_digits, max_digits), min_digits)
        if distinct:
            if row.prompt in seen:
                misses += 1
                continue
            misses = 0
            seen.add(row.prompt)
        yield row


def arithmetic_row(rng: random.Random, digits: int, min_digits: int = 1) -> TaskRow:
    """One arithmetic prompt whose first operand has `digits` digits (its difficulty), the second
    between min_digits and as many."""
    a, b = _operand(rng, digits), _operand(rng, rng.randint(min_digits, digits))
    op = rng.choice(OPERATORS)
    return TaskRow(id=f"arith:{a}{op}{b}", domain="math", prompt=arithmetic_prompt(a, op, b),
                   reference={"answer": str(arithmetic_answer(a, op, b))}, difficulty=digits)


def split_stream(
    rows: Iterator[TaskRow], n_train: int, n_heldout: int, heldout_fraction: float = 0.1
) -> tuple[list[TaskRow], list[TaskRow]]:
    """The first `n_train` train and `n_heldout` held-out rows of a stream, split by prompt id; fewer
    when the stream ends first."""
    train: list[TaskRow] = []
    heldout: list[TaskRow] = []
    for row in rows:
        bucket, limit = (heldout, n_heldout) if is_heldout(row.id, heldout_fraction) else (train, n_train)
        if len(bucket) < limit:
            bucket.append(row)
        if len(train) >= n_train and len(heldout) >= n_heldout:
            break
    return train, heldout


def make_split(
    n_train: int,
    n_heldout: int,
    seed: int = 0,
    min_digits: int = 1,
    max_digits: int = 3,
    heldout_fraction: float = 0.1,
    strict: bool = True,
) -> tuple[list[TaskRow], list[TaskRow]]:
    """Draw `n_train` train and `n_heldout` held-out prompts, split by prompt id.

    When fewer distinct prompts exist, `strict` raises; otherwise all that exist are returned.
    """
    train, heldout = split_stream(iter_arithmetic(seed, min_digits, max_digits), n_train, n_heldout, heldout_fraction)
    if not strict or (len(train) >= n_train and len(heldout) >= n_heldout):
        return train, heldout
    raise ValueError(
        f"only {len(train)} train / {len(heldout)} held-out distinct prompts exist with "
        f"{min_digits}-{max_digits} digits; asked for {n_train} / {n_heldout}"
    )


# --- code tasks: small functions checked by hidden asserts -------------------------------------
# Each family: (name, difficulty, parameter ranges, prompt, one-line solution, input kind). The
# solution is a `def` on one line, short enough for a tiny model to learn; the expected values in
# the asserts come from running that solution here. Ids name the family and parameters, so a
# task keeps its id (and its split) whatever the seed, and its test inputs are seeded by the id.
CODE_FAMILIES: tuple[tuple[str, int, tuple[range, ...], str, str, str], ...] = (
    ("add", 1, (range(1, 10),), "f(x) that returns x plus {0}", "def f(x): return x+{0}", "int"),
    ("sub", 1, (range(1, 10),), "f(x) that returns x minus {0}", "def f(x): return x-{0}", "int"),
    ("mul", 1, (range(2, 10),), "f(x) that returns x times {0}", "def f(x): return x*{0}", "int"),
    ("affine", 2, (range(2, 10), range(1, 10)), "f(x) that returns {0} times x plus {1}",
     "def f(x): return {0}*x+{1}", "int"),
    ("square", 2, (range(1, 10),), "f(x) that returns x squared plus {0}", "def f(x): return x*x+{0}", "int"),
    ("clamp", 2, (range(-5, 10),), "f(x) that returns x if x is greater than {0}, otherwise {0}",
     "def f(x): return max(x,{0})", "int"),
    ("sum", 3, (range(0, 10),), "f(xs) that returns the sum of the list xs plus {0}",
     "def f(xs): return sum(xs)+{0}", "list"),
    ("count", 3, (range(0, 5),), "f(xs) that returns how many times {0} appears in the list xs",
     "def f(xs): return xs.count({0})", "list"),
    ("above", 3, (range(0, 5),), "f(xs) that returns the list of the elements of xs greater than {0}",
     "def f(xs): return [x for x in xs if x>{0}]", "list"),
    ("repeat", 3, (range(2, 5),), "f(s) that returns the string s repeated {0} times",
     "def f(s): return s*{0}", "str"),
)


def _code_inputs(rng: random.Random, kind: str, n: int) -> list:
    if kind == "int":  # both signs and both sides of every threshold the int families use (-5..9)
        return [rng.randint(-20, -10), rng.randint(10, 20), *rng.sample(range(-9, 10), n - 2)]
    if kind == "list":
        return [[rng.randint(0, 6) for _ in range(rng.randint(0, 6))] for _ in range(n)]
    return ["".join(rng.choice("abc") for _ in range(rng.randint(1, 3))) for _ in range(n)]


def code_task(family: str, params: tuple[int, ...], n_tests: int = 5) -> TaskRow:
    """The code task of `family` with `params`; tests are `assert f(input) == expected` lines."""
    name, difficulty, _, prompt, solution, kind = next(f for f in CODE_FAMILIES if f[0] == family)
    prompt_id = f"code:{name}:" + ",".join(map(str, params))
    solution = solution.format(*params)
    namespace: dict = {}
    exec(solution, namespace)  # our own one-line template, not untrusted code
    inputs = _code_inputs(random.Random(prompt_id), kind, n_tests)
    tests = [f"assert f({x!r}) == {namespace['f'](x)!r}" for x in inputs]
    return TaskRow(
        id=prompt_id,
        domain="code",
        prompt=f"Write a Python function {prompt.format(*params)}.",
        reference={"tests": tests, "entry_point": "f", "solution": solution},
        difficulty=difficulty,
    )


def iter_code_tasks(seed: int, min_difficulty: int = 1, max_difficulty: int = 3, distinct: bool = True) -> Iterator[TaskRow]:
    """Stream of code tasks, identical for the same arguments; difficulty (1-3) is uniform.

    Like `iter_arithmetic`, the stream ends once no new task turns up when `distinct`."""
    def draw(rng: random.Random, family: tuple) -> tuple:
        name, _, ranges, *_ = family
        return name, tuple(rng.choice(r) for r in ranges)

    for name, params in _distinct_draws(seed, CODE_FAMILIES, "code", min_difficulty, max_difficulty, draw, distinct):
        yield code_task(name, params)


def _distinct_draws(seed: int, families: tuple, kind: str, min_difficulty: int, max_difficulty: int,
                    draw: Callable[[random.Random, tuple], tuple], distinct: bool) -> Iterator[tuple]:
    """Keys `draw(rng, family)` of families (difficulty at index 1) with a uniform difficulty level
    in [min, max]; with `distinct`, repeats are skipped and the stream ends once 10,000 draws in a row
    bring nothing new."""
    rng = random.Random(seed)
    eligible = [f for f in families if min_difficulty <= f[1] <= max_difficulty]
    if not eligible:
        raise ValueError(f"no {kind} task family has difficulty in [{min_difficulty}, {max_difficulty}]")
    levels = sorted({f[1] for f in eligible})
    seen: set[tuple] = set()
    misses = 0
    while misses < 10_000:
        level = rng.choice(levels)
        key = draw(rng, rng.choice([f for f in eligible if f[1] == level]))
        if distinct:
            if key in seen:
                misses += 1
                continue
            misses = 0
            seen.add(key)
        yield key


# --- instruction-following tasks: IFEval-format constraints a tiny model can learn ------------------
# Each family: (name, difficulty, range of n, build(word, n) -> (prompt, [(instruction id, kwargs)],
# a response that follows every instruction)). Difficulty grows with what must hold at once: one
# property of one word, then a format plus content, then counts combined with case and punctuation.
# Ids name the family and parameters, so a task keeps its id (and split) whatever the seed.
_INSTR_WORDS = ("apple", "river", "cat", "dog", "sun", "tree", "book", "house", "bird", "star", "moon", "fish")
_INSTR_FILLER = ("red", "blue", "green", "big", "small", "happy", "old", "new")
_INSTR_ENDINGS = ("The end.", "Thank you.", "Goodbye.")


def _exactly_words(n: int) -> list[tuple[str, dict]]:
    # IFEval relations are "at least" and "less than": exactly n is both.
    return [("length_constraints:number_words", {"num_words": n, "relation": "at least"}),
            ("length_constraints:number_words", {"num_words": n + 1, "relation": "less than"})]


def _has(*words: str) -> tuple[str, dict]:
    return ("keywords:existence", {"keywords": list(words)})


def _some_words(w: str, n: int) -> list[str]:
    return [w, *_INSTR_FILLER][:n]


INSTRUCTION_FAMILIES: tuple[tuple[str, int, range, Any], ...] = (
    ("upper", 1, range(1), lambda w, n: (
        f"Write the word {w} in all capital letters.",
        [("change_case:english_capital", {}), _has(w)], w.upper())),
    ("lower", 1, range(1), lambda w, n: (
        f"Write the word {w.upper()} in lowercase letters.",
        [("change_case:english_lowercase", {}), _has(w)], w)),
    ("quote", 1, range(1), lambda w, n: (
        f"Write the word {w} inside double quotes.",
        [("startend:quotation", {}), _has(w)], f'"{w}"')),
    ("words", 1, range(1, 6), lambda w, n: (
        f"Reply with exactly {n} words, starting with {w}.",
        [*_exactly_words(n), _has(w)], " ".join(_some_words(w, n)))),
    ("title", 2, range(1), lambda w, n: (
        f"Write a title about a {w} in double angular brackets, like <<title>>.",
        [("detectable_format:title", {}), _has(w)], f"<<The {w}>>")),
    ("ending", 2, range(len(_INSTR_ENDINGS)), lambda w, n: (
        f'Write the word {w}, then end your reply with the phrase "{_INSTR_ENDINGS[n]}"',
        [_has(w), ("startend:end_checker", {"end_phrase": _INSTR_ENDINGS[n]})], f"{w} {_INSTR_ENDINGS[n]}")),
    ("bullets", 2, range(2, 5), lambda w, n: (
        f"Write the word {w} in exactly {n} markdown bullet points.",
        [("detectable_format:number_bullet_lists", {"num_bullets": n}), _has(w)], "\n".join([f"* {w}"] * n))),
    ("json", 2, range(1, 10), lambda w, n: (
        f'Reply with only a JSON object with the key "{w}" and the value {n}.',
        [("detectable_format:json_format", {}), _has(w)], f'{{"{w}": {n}}}')),
    ("caps_words", 3, range(2, 5), lambda w, n: (
        f"Reply with exactly {n} words in all capital letters, starting with {w}.",
        [*_exactly_words(n), ("change_case:english_capital", {}), _has(w)], " ".join(_some_words(w, n)).upper())),
    ("quiet_words", 3, range(3, 6), lambda w, n: (
        f"Write exactly {n} words in lowercase and without commas, starting with {w}.",
        [*_exactly_words(n), ("change_case:english_lowercase", {}), ("punctuation:no_comma", {}), _has(w)],
        " ".join(_some_words(w, n)))),
    ("postscript", 3, range(len(_INSTR_FILLER)), lambda w, n: (
        f"Write the word {w}, then add a postscript starting with P.S. that says {_INSTR_FILLER[n]}.",
        [_has(w), ("detectable_content:postscript", {"postscript_marker": "P.S."}), _has(_INSTR_FILLER[n])],
        f"{w}\nP.S. {_INSTR_FILLER[n]}")),
)


def instruction_task(family: str, word: str, n: int = 0) -> TaskRow:
    """The instruction task of `family` about `word` (and count `n`); `constraints` is IFEval's format,
    `solution` a response that follows every instruction."""
    name, difficulty, _, build = next(f for f in INSTRUCTION_FAMILIES if f[0] == family)
    prompt, instructions, solution = build(word, n)
    return TaskRow(
        id=f"instr:{name}:{word},{n}",
        domain="instruction",
        prompt=prompt,
        reference={
            "constraints": {"instruction_id_list": [i for i, _ in instructions], "kwargs": [k for _, k in instructions]},
            "solution": solution,
        },
        difficulty=difficulty,
    )


def iter_instruction_tasks(
    seed: int, min_difficulty: int = 1, max_difficulty: int = 3, distinct: bool = True
) -> Iterator[TaskRow]:
    """Stream of instruction-following tasks, identical for the same arguments; difficulty (1-3) is
    uniform. Like `iter_arithmetic`, the stream ends once no new task turns up when `distinct`."""
    def draw(rng: random.Random, family: tuple) -> tuple:
        name, _, counts, _ = family
        return name, rng.choice(_INSTR_WORDS), rng.choice(counts)

    for name, word, n in _distinct_draws(seed, INSTRUCTION_FAMILIES, "instruction", min_difficulty, max_difficulty,
                                         draw, distinct):
        yield instruction_task(name, word, n)


# --- IFBench constraints for training rows ---------------------------------------------------------
# IF-RLVR training (Pyatkin et al. 2025, arXiv:2507.02833) attaches IFBench-type constraints to
# ordinary requests. `IFBENCH_CONSTRAINTS` maps each of IFBench's 58 instruction ids to a sampler
# `(rng, request) -> (instruction text, kwargs)` in IFBench's kwarg names; `iter_ifbench_tasks` draws
# rows of 1-3 constraints on a request. Ids hash the request and constraints, so they are stable.
_IFB_REQUESTS = (
    "Describe a walk through a forest in autumn.", "Explain how a bicycle works.",
    "Write a short story about a lighthouse keeper.", "Give advice to someone starting to cook.",
    "Describe your ideal weekend.", "Explain why the sky looks blue.", "Write a letter to a future student.",
    "Summarize the benefits of drinking water.", "Describe a busy market.", "Explain how to plant a tree.",
)
_IFB_WORDS = ("river", "lantern", "harvest", "window", "garden", "signal", "copper", "meadow", "thunder", "pencil")
_IFB_SEPARATORS = ("->", "~~", "|>", "::")
_IFB_OPTIONS = ("yes/no/maybe", "I know or I don't know", "a), b), c), d)")
_IFB_WHOLE_RESPONSE = ("custom:", "repeat:", "format:options")


def _ifb(text: str, **kwargs: Any) -> Callable[[random.Random, str], tuple[str, dict]]:
    """A sampler whose kwargs are drawn by `kwargs`' callables `(rng, request) -> value` (evaluated in
    order, each seeing the ones before it as `rng, request, drawn`) and formatted into `text`."""
    def sample(rng: random.Random, request: str) -> tuple[str, dict]:
        drawn: dict = {}
        for name, fn in kwargs.items():
            drawn[name] = fn(rng, request, drawn)
        return text.format(**drawn), drawn

    return sample


def _int(lo: int, hi: int) -> Callable[[random.Random, str, dict], int]:
    return lambda rng, request, drawn: rng.randint(lo, hi)


def _word(rng: random.Random, request: str, drawn: dict) -> str:
    return rng.choice(_IFB_WORDS)


IFBENCH_CONSTRAINTS: dict[str, Callable[[random.Random, str], tuple[str, dict]]] = {
    "count:word_count_range": _ifb("The response must contain between {min_words} and {max_words} words.",
                                   min_words=_int(20, 80), max_words=lambda r, q, d: d["min_words"] + r.randint(10, 60)),
    "count:unique_word_count": _ifb("Use at least {N} unique words in the response.", N=_int(20, 80)),
    "ratio:stop_words": _ifb("Stop words must be at most {percentage}% of the words.", percentage=_int(20, 50)),
    "ratio:sentence_type": _ifb("Write twice as many declarative sentences as questions."),
    "ratio:sentence_balance": _ifb("Use as many statements as questions as exclamations."),
    "count:conjunctions": _ifb("Use at least {small_n} different coordinating conjunctions.", small_n=_int(2, 5)),
    "count:person_names": _ifb("Mention at least {N} different names from: Emma, Liam, Noah, Ava, Mia, Leo, Zoe.",
                               N=_int(1, 4)),
    "ratio:overlap": _ifb("Keep a character trigram overlap of {percentage}% (plus or minus 2) with: {reference_text}",
                          reference_text=lambda r, q, d: q, percentage=_int(30, 70)),
    "count:numbers": _ifb("Include exactly {N} numbers.", N=_int(1, 6)),
    "words:alphabet": _ifb("Start each word with the next letter of the alphabet, from any letter."),
    "words:vowel": _ifb("Write a single paragraph using words with at most three different vowels."),
    "words:consonants": _ifb("Every word must contain two consonants in a row."),
    "sentence:alliteration_increment": _ifb("Each sentence must have more alliteration than the one before."),
    "words:palindrome": _ifb("Include at least ten palindromes of five or more letters."),
    "count:punctuation": _ifb("Use an interrobang (?!) and every one of . , ! ? ; : at least once."),
    "format:parentheses": _ifb("Nest brackets at least five levels deep somewhere in the response."),
    "format:quotes": _ifb("Nest quotations at least three levels deep, alternating double and single quotes."),
    "words:prime_lengths": _ifb("Use only words whose length is a prime number."),
    "format:options": _ifb("Answer with one of the following options: {options}. Do not explain.",
                           options=lambda r, q, d: r.choice(_IFB_OPTIONS)),
    "format:newline": _ifb("Write every word on its own line."),
    "format:emoji": _ifb("End every sentence with an emoji."),
    "ratio:sentence_words": _ifb("Write exactly three sentences with the same number of characters."),
    "count:words_japanese": _ifb("Every {N}th word of the response must be in Japanese.", N=_int(3, 8)),
    "words:start_verb": _ifb("Start the response with a verb."),
    "words:repeats": _ifb("Do not repeat any word more than {small_n} times.", small_n=_int(1, 4)),
    "sentence:keyword": _ifb('Include the word "{word}" in sentence number {N}.', word=_word, N=_int(1, 5)),
    "count:pronouns": _ifb("Use at least {N} pronouns.", N=_int(3, 20)),
    "words:odd_even_syllables": _ifb("Alternate words with odd and even numbers of syllables."),
    "words:last_first": _ifb("Start each sentence with the last word of the sentence before it."),
    "words:paragraph_last_first": _ifb("Each paragraph must start and end with the same word."),
    "sentence:increment": _ifb("Each sentence must have exactly {small_n} more words than the one before.",
                               small_n=_int(1, 3)),
    "words:no_consecutive": _ifb("No two consecutive words may start with the same letter."),
    "format:line_indent": _ifb("Indent each line further than the one before it, like a staircase."),
    "format:quote_unquote": _ifb("Follow every quotation with an explanation of it."),
    "format:list": _ifb("Answer with a list whose items start with {sep} instead of bullets.",
                        sep=lambda r, q, d: r.choice(_IFB_SEPARATORS)),
    "format:thesis": _ifb("Put a one-sentence thesis in HTML italics (<i>...</i>), then explain it."),
    "format:sub-bullets": _ifb("Use * bullet points, each with at least one - sub-bullet."),
    "format:no_bullets_bullets": _ifb("Write at least two sentences, then at least two * bullet points."),
    "custom:multiples": _ifb("List the multiples of 7 from 14 to 49, and no other numbers."),
    "custom:mcq_count_length": _ifb("Write four multiple-choice questions (Question 1 ...), five options A-E each, "
                                    "each question longer than the last; nothing else."),
    "custom:reverse_newline": _ifb("List the world's countries one per line in reverse alphabetical order, "
                                   "starting from Zimbabwe."),
    "custom:word_reverse": _ifb("Write one sentence about the bald eagle with its words in reverse order."),
    "custom:character_reverse": _ifb("Write a sentence about the bald eagle backwards, letter by letter."),
    "custom:sentence_alphabet": _ifb("Write 26 sentences starting with the letters a to z in order."),
    "custom:european_capitals_sort": _ifb("List the European capitals north of 45 degrees north, comma-separated, "
                                          "from north to south."),
    "custom:csv_city": _ifb("Give a CSV with columns ID, Country, City, Year, Count and seven rows."),
    "custom:csv_special_character": _ifb("Give a CSV with columns ProductID, Category, Brand, Price, Stock, 14 rows, "
                                         "one field quoted for a special character."),
    "custom:csv_quotes": _ifb("Give a tab-separated table of StudentID, Subject, Grade, Semester, Score with three "
                              "rows, every field in double quotes."),
    "custom:date_format_list": _ifb("List dates between 1769 and 1821 as YYYY-MM-DD, comma-separated."),
    "count:keywords_multiple": _ifb("Use {keyword1} once, {keyword2} twice, {keyword3} three times, {keyword4} five "
                                    "times and {keyword5} seven times.",
                                    **{f"keyword{i}": (lambda i: lambda r, q, d: _IFB_WORDS[(i * 3 + len(d)) % 10])(i)
                                       for i in range(1, 6)}),
    "words:keywords_specific_position": _ifb('Use "{keyword}" as word {m} of sentence {n}.',
                                             keyword=_word, n=_int(1, 4), m=_int(1, 6)),
    "words:words_position": _ifb('The second word and the second-to-last word must both be "{keyword}".',
                                 keyword=_word),
    "repeat:repeat_change": _ifb("Repeat the request with its first word changed, and do not answer it: "
                                 "{prompt_to_repeat}", prompt_to_repeat=lambda r, q, d: q),
    "repeat:repeat_simple": _ifb("Only output this sentence here, ignore all other requests."),
    "repeat:repeat_span": _ifb("Copy characters {n_start} to {n_end} of this request exactly: {prompt_to_repeat}",
                               prompt_to_repeat=lambda r, q, d: q, n_start=lambda r, q, d: r.randint(0, len(q) // 2),
                               n_end=lambda r, q, d: r.randint(d["n_start"] + 5, len(q) - 1)),
    "format:title_case": _ifb("Write every word in Title Case."),
    "format:output_template": _ifb("Use this template: My Answer: ... My Conclusion: ... Future Outlook: ..."),
    "format:no_whitespace": _ifb("Do not use any whitespace in the response."),
}


def ifbench_task(request: str, instruction_ids: list[str], rng: random.Random) -> TaskRow:
    """A row asking `request` under the IFBench constraints `instruction_ids` (kwargs drawn by `rng`)."""
    drawn = [IFBENCH_CONSTRAINTS[i](rng, request) for i in instruction_ids]
    constraints = {"instruction_id_list": list(instruction_ids), "kwargs": [k for _, k in drawn]}
    key = hashlib.sha1(repr((request, constraints)).encode()).hexdigest()[:12]
    return TaskRow(id=f"ifbench:{key}", domain="instruction",
                   prompt=" ".join([request, *(text for text, _ in drawn)]),
                   reference={"constraints": constraints}, difficulty=len(instruction_ids))


def iter_ifbench_tasks(seed: int, max_constraints: int = 3) -> Iterator[TaskRow]:
    """Endless stream of IFBench-constrained rows (1 to `max_constraints` distinct constraints on
    one request; a constraint that fixes the whole response stands alone), identical for the same seed."""
    rng = random.Random(seed)
    ids = sorted(IFBENCH_CONSTRAINTS)
    while True:
        request = rng.choice(_IFB_REQUESTS)
        chosen = rng.sample(ids, rng.randint(1, max_constraints))
        # A custom task or a repeat dictates the whole response: it stands alone.
        whole = [i for i in chosen if i.startswith(_IFB_WHOLE_RESPONSE)]
        yield ifbench_task(request, whole[:1] or chosen, rng)


# --- the families together ---------------------------------------------------------------------
TASKS = ("arithmetic", "code", "instruction")


def check_task_names(data: DataConfig) -> None:
    """ConfigError unless `data.tasks` names distinct families of TASKS (at least one)."""
    unknown = [t for t in data.tasks if t not in TASKS]
    if unknown or not data.tasks or len(set(data.tasks)) != len(data.tasks):
        raise ConfigError(f"config key 'data.tasks' must name distinct families from {list(TASKS)}, "
                          f"got {list(data.tasks)}")


def iter_task(task: str, seed: int, min_digits: int = 1, max_digits: int = 3, distinct: bool = True) -> Iterator[TaskRow]:
    """The stream of one task family by name (see TASKS)."""
    if task == "arithmetic":
        return iter_arithmetic(seed, min_digits, max_digits, distinct)
    if task == "code":
        return iter_code_tasks(seed, distinct=distinct)
    if task == "instruction":
        return iter_instruction_tasks(seed, distinct=distinct)
    raise ValueError(f"unknown task {task!r}; choose from {TASKS}")


TASK_DOMAINS = {"arithmetic": "math", "code": "code", "instruction": "instruction"}
TASK_LEVELS = {"arithmetic": None, "code": 3, "instruction": 3}  # hardest level (None: unbounded)


def _level_row(task: str, rng: random.Random, level: int) -> TaskRow:
    """One row of `task` at difficulty `level`."""
    if task == "arithmetic":
        return arithmetic_row(rng, level)
    families = CODE_FAMILIES if task == "code" else INSTRUCTION_FAMILIES
    family = rng.choice([f for f in families if f[1] == level])
    if task == "code":
        return code_task(family[0], tuple(rng.choice(r) for r in family[2]))
    return instruction_task(family[0], rng.choice(_INSTR_WORDS), rng.choice(family[2]))


class TaskGenerator:
    """New prompts of one procedural family at a chosen difficulty level (the knob: arithmetic's
    operand digits; code's and instruction's family levels 1-3). Never a prompt in `seen`, never a
    held-out one (the split of `make_task_split`); deterministic for a seed, its RNG state saved
    with the miner so a resumed run generates the same prompts."""

    def __init__(self, task: str, seed: int, max_level: int, heldout_fraction: float = 0.1) -> None:
        if task not in TASK_DOMAINS:
            raise ValueError(f"unknown task {task!r}; choose from {TASKS}")
        self.task, self.domain, self.heldout_fraction = task, TASK_DOMAINS[task], heldout_fraction
        self.max_level = min(max_level, TASK_LEVELS[task] or max_level)
        self.rng = random.Random(f"{task}:{seed}")

    def make(self, level: int, n: int, seen: set[str], max_misses: int = 2_000) -> list[TaskRow]:
        """Up to n new rows at `level` (clamped to 1..max_level); fewer once `max_misses` draws in a
        row bring nothing new (the level is exhausted)."""
        level = min(max(1, level), self.max_level)
        rows: list[TaskRow] = []
        ids = set(seen)
        misses = 0
        while len(rows) < n and misses < max_misses:
            row = _level_row(self.task, self.rng, level)
            if row.id in ids or is_heldout(row.id, self.heldout_fraction):
                misses += 1
                continue
            misses = 0
            ids.add(row.id)
            rows.append(row)
        return rows

    def state(self) -> list:
        version, internal, gauss = self.rng.getstate()
        return [version, list(internal), gauss]

    def load_state(self, state: list) -> None:
        version, internal, gauss = state
        self.rng.setstate((version, tuple(internal), gauss))


def quotas(total: int, weights: list[float]) -> list[int]:
    """`total` split in proportion to `weights` (largest remainder), summing to `total`."""
    exact = [total * w / sum(weights) for w in weights]
    counts = [int(x) for x in exact]
    for i in sorted(range(len(exact)), key=lambda i: counts[i] - exact[i])[: total - sum(counts)]:
        counts[i] += 1
    return counts


def make_task_split(
    tasks: list[str],
    weights: list[float],
    n_train: int,
    n_heldout: int,
    seed: int = 0,
    min_digits: int = 1,
    max_digits: int = 3,
    heldout_fraction: float = 0.1,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Train and held-out rows of several task families, split by prompt id.

    Each family gets its `weights` share of `n_train` and `n_heldout` (fewer when it has fewer
    distinct prompts). Train rows carry a sampling `weight` so that each family's share of the
    prompts drawn per step follows its weight rather than its pool size (a family with few distinct
    prompts is revisited more often instead of being drowned)."""
    if len(weights) != len(tasks) or any(w <= 0 for w in weights):
        raise ValueError(f"need one positive weight per task, got {list(weights)} for {list(tasks)}")
    train: list[dict[str, Any]] = []
    heldout: list[dict[str, Any]] = []
    for task, weight, want_train, want_heldout in zip(
        tasks, weights, quotas(n_train, weights), quotas(n_heldout, weights)
    ):
        got_train, got_heldout = split_stream(iter_task(task, seed, min_digits, max_digits), want_train, want_heldout,
                                              heldout_fraction)
        if want_train and not got_train:
            raise ValueError(f"task {task!r} has no train prompts")
        share = weight / sum(weights)
        train += [{**asdict(r), "weight": share / len(got_train)} for r in got_train]  # empty when want_train is 0
        heldout += [asdict(r) for r in got_heldout]
    return train, heldout
