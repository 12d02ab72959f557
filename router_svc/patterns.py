"""The pattern tier's regex micro-specialists: what a regex answers exactly (greetings, arithmetic, the date).

Each returns an answer with a confidence in [0, 1]; the tier answers when it reaches the threshold.
Mined patterns (the miner's auto-specialists) join this tier in `router_svc.mined`.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction

from spiral_common.budget import utc_now


@dataclass(frozen=True)
class PatternAnswer:
    pattern: str
    text: str
    confidence: float
    pattern_id: str = ""  # a mined pattern's id (empty for the regexes)


_GREETING = re.compile(
    r"^\s*(hi|hello|hey|hiya|howdy|good (morning|afternoon|evening)|greetings)( there)?\s*[!.]*\s*$", re.I
)
_ARITHMETIC = re.compile(
    r"^\s*(?:what(?:'s| is)|calculate|compute|how much is)?\s*(?P<expr>[-+*/()\d\s.x×÷^]+?)\s*(?:=\s*)?\??\s*$", re.I
)
_DATE = re.compile(
    r"^\s*(what(?:'s| is) (?:the date|today'?s date|the date today)|what day is (?:it|today))(?: today)?"
    r"(?: in utc)?\s*\??\s*$",
    re.I,
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


def _evaluate(node: ast.AST) -> Fraction:
    """Exact rational arithmetic over a parsed expression: numbers and + - * / ** only."""
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        return Fraction(str(node.value))
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow):
            if right.denominator != 1 or abs(right) > 64 or abs(left) > 10**6:
                raise ValueError("exponent out of range")
            return left ** int(right)
        return _OPERATORS[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_evaluate(node.operand))
    raise ValueError(f"not arithmetic: {ast.dump(node)}")


def _format(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    decimal = f"{float(value):.10g}"
    return f"{value.numerator}/{value.denominator} (about {decimal})"


def arithmetic(prompt: str, now: datetime) -> PatternAnswer | None:
    match = _ARITHMETIC.match(prompt)
    if not match or not re.search(r"\d\s*[-+*/x×÷^]\s*[\d(]", match["expr"]):
        return None
    expression = match["expr"].replace("×", "*").replace("x", "*").replace("÷", "/").replace("^", "**")
    try:
        value = _evaluate(ast.parse(expression.strip(), mode="eval"))
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError):
        return None
    return PatternAnswer("arithmetic", f"{match['expr'].strip()} = {_format(value)}", 1.0)


def today(prompt: str, now: datetime) -> PatternAnswer | None:
    if _DATE.match(prompt):
        return PatternAnswer("date", f"Today is {now:%A, %d %B %Y} (UTC: {now:%Y-%m-%d}).", 1.0)
    return None


SPECIALISTS: tuple[Callable[[str, datetime], PatternAnswer | None], ...] = (greeting, arithmetic, today)


class RegexPatterns:
    """Runs the micro-specialists on a single-turn prompt; the most confident answer wins."""

    def __init__(self, clock: Callable[[], datetime] = utc_now) -> None:
        self.clock = clock

    def match(self, prompt: str) -> PatternAnswer | None:
        now = self.clock()
        answers = [a for a in (specialist(prompt, now) for specialist in SPECIALISTS) if a]
        return max(answers, key=lambda a: a.confidence, default=None)
