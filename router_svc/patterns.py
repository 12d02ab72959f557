"""The pattern tier's regex micro-specialists: what a regex answers exactly (greetings, arithmetic, the date).

Each returns an answer with a confidence in [0, 1]; the tier answers when it reaches the threshold.
Mined patterns (the miner's auto-specialists) join this tier in `router_svc.mined`.

User text is hostile until proven otherwise, so the work per prompt is bounded: the regexes run on RE2, whose
matching time is linear in the input (Python's `re` backtracks: the old arithmetic pattern took seconds on 130
spaces), only prompts up to `MAX_SPECIALIST_PROMPT_CHARS` are looked at, and the arithmetic evaluator refuses any
expression, exponent, intermediate value or nesting past its bounds. Past any bound a specialist answers
nothing and the prompt goes down the cascade; it never raises. All of it takes microseconds, so it runs inline
on the event loop.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction

import re2

from spiral_common.budget import utc_now

# The longest prompt (after stripping) the specialists look at, in characters. The longest greeting or date
# question they know is under 50 characters, and arithmetic a person types fits in a few lines; anything longer
# goes down the cascade unread, so the regexes, the parser and the evaluator only ever see a few hundred
# characters (a 256-character expression has at most 128 operands).
MAX_SPECIALIST_PROMPT_CHARS = 256
# The arithmetic evaluator's bounds. Going over one is a miss, never an error.
# The expression is part of the prompt; the evaluator checks its length itself, so it is safe on any string.
MAX_EXPRESSION_CHARS = MAX_SPECIALIST_PROMPT_CHARS
# Nesting of the parsed expression (operators within operators, signs; brackets only group): well below
# Python's recursion limit, so the recursive evaluator cannot overflow the stack.
MAX_DEPTH = 100
# |n| in a ^ n; n must also be a whole number.
MAX_EXPONENT = 64
# Bits of the numerator and of the denominator of every value, operands and intermediate results included
# (about 301 digits): each operation stays cheap, the answer stays readable, and the "about" decimal of a
# fraction is a finite, non-zero float (floats reach 1.8e308 and 2.2e-308).
MAX_BITS = 1000


@dataclass(frozen=True)
class PatternAnswer:
    pattern: str
    text: str
    confidence: float
    pattern_id: str = ""  # a mined pattern's id (empty for the regexes)


# RE2 syntax: (?i) for case-insensitive; \s and \d are ASCII (the prompt is stripped of Unicode whitespace first,
# and Python's parser refuses non-ASCII digits and spaces anyway).
_GREETING = re2.compile(
    r"(?i)^\s*(hi|hello|hey|hiya|howdy|good (morning|afternoon|evening)|greetings)( there)?\s*[!.]*\s*$"
)
_ARITHMETIC = re2.compile(
    r"(?i)^\s*(?:what(?:'s| is)|calculate|compute|how much is)?\s*(?P<expr>[-+*/()\d\s.x×÷^]+?)\s*(?:=\s*)?\??\s*$"
)
_HAS_OPERATION = re2.compile(r"\d\s*[-+*/x×÷^]\s*[\d(]")
_DATE = re2.compile(
    r"(?i)^\s*(what(?:'s| is) (?:the date|today'?s date|the date today)|what day is (?:it|today))(?: today)?"
    r"(?: in utc)?\s*\??\s*$"
)
_OPERATORS: dict[type, Callable] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


def greeting(prompt: str, now: datetime) -> PatternAnswer | None:
    if _GREETING.match(prompt):
        return PatternAnswer("greeting", "Hello! How can I help you today?", 0.95)
    return None


class _Unanswerable(Exception):
    """The expression is not plain arithmetic, or it goes past a bound."""


def _bounded(value: Fraction) -> Fraction:
    if value.numerator.bit_length() > MAX_BITS or value.denominator.bit_length() > MAX_BITS:
        raise _Unanswerable("value too large")
    return value


def _evaluate(node: ast.AST, depth: int = 0) -> Fraction:
    """Exact rational arithmetic over a parsed expression: numbers and + - * / ** only, within the bounds."""
    if depth > MAX_DEPTH:
        raise _Unanswerable("nested too deeply")
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, depth + 1)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        return _bounded(Fraction(str(node.value)))
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = _evaluate(node.left, depth + 1), _evaluate(node.right, depth + 1)
        if isinstance(node.op, ast.Pow):
            if right.denominator != 1 or abs(right) > MAX_EXPONENT:
                raise _Unanswerable("exponent out of range")
            # Checked before computing: a b-bit number to the n has at most b * n bits.
            if max(left.numerator.bit_length(), left.denominator.bit_length()) * abs(int(right)) > MAX_BITS:
                raise _Unanswerable("power too large")
            return _bounded(left ** int(right))
        return _bounded(_OPERATORS[type(node.op)](left, right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_evaluate(node.operand, depth + 1))
    raise _Unanswerable(f"not arithmetic: {type(node).__name__}")


def _evaluate_expression(expression: str) -> Fraction | None:
    """The expression's exact value, or None when it is not arithmetic, divides by zero or goes past a bound."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        return None
    try:
        return _evaluate(ast.parse(expression, mode="eval"))
    except (_Unanswerable, SyntaxError, ValueError, ArithmeticError, RecursionError):
        # ArithmeticError: division by zero, and 0 to a negative power. ValueError: the parser refuses NUL bytes
        # and over-long integer literals. RecursionError cannot happen within the bounds; kept as a last guard.
        return None


def _format(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    decimal = f"{float(value):.10g}"
    return f"{value.numerator}/{value.denominator} (about {decimal})"


def arithmetic(prompt: str, now: datetime) -> PatternAnswer | None:
    match = _ARITHMETIC.match(prompt)
    if not match or not _HAS_OPERATION.search(match["expr"]):
        return None
    expression = match["expr"].replace("×", "*").replace("x", "*").replace("÷", "/").replace("^", "**")
    value = _evaluate_expression(expression.strip())
    if value is None:
        return None
    return PatternAnswer("arithmetic", f"{match['expr'].strip()} = {_format(value)}", 1.0)


def today(prompt: str, now: datetime) -> PatternAnswer | None:
    if _DATE.match(prompt):
        return PatternAnswer("date", f"Today is {now:%A, %d %B %Y} (UTC: {now:%Y-%m-%d}).", 1.0)
    return None


SPECIALISTS: tuple[Callable[[str, datetime], PatternAnswer | None], ...] = (greeting, arithmetic, today)


class RegexPatterns:
    """Runs the micro-specialists on a single-turn prompt, stripped, of at most `MAX_SPECIALIST_PROMPT_CHARS`
    characters; the most confident answer wins."""

    def __init__(self, clock: Callable[[], datetime] = utc_now) -> None:
        self.clock = clock

    def match(self, prompt: str) -> PatternAnswer | None:
        prompt = prompt.strip()
        if len(prompt) > MAX_SPECIALIST_PROMPT_CHARS:
            return None
        now = self.clock()
        answers = [a for a in (specialist(prompt, now) for specialist in SPECIALISTS) if a]
        return max(answers, key=lambda a: a.confidence, default=None)
