"""MathTasks-style arithmetic questions: random expressions over + - * with parentheses and unary minus.

reasoning-gym's ``basic_arithmetic`` draws numbers and phrases questions differently (signed numbers of
up to d digits, its own templates), so the MathTasks family of the KRPO paper is generated here.
"""

from __future__ import annotations

import ast
import operator
import random
from collections.abc import Callable, Iterator

from krpo_bench.tasks.config import ArithmeticTask

GROUP_PROBABILITY = 0.3
UNARY_MINUS_PROBABILITY = 0.15

BINARY: dict[type[ast.operator], Callable[[int, int], int]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
}


def evaluate(expression: str) -> int:
    """Exact integer value of an expression of integers, + - *, unary minus and parentheses."""
    return _evaluate(ast.parse(expression, mode="eval").body)


def _evaluate(node: ast.expr) -> int:
    match node:
        case ast.Constant(value=int() as value) if not isinstance(value, bool):
            return value
        case ast.UnaryOp(op=ast.USub(), operand=operand):
            return -_evaluate(operand)
        case ast.BinOp(left=left, op=op, right=right) if type(op) in BINARY:
            return BINARY[type(op)](_evaluate(left), _evaluate(right))
    raise ValueError(f"not an integer arithmetic expression: {ast.unparse(node)!r}")


def _number(rng: random.Random, spec: ArithmeticTask) -> str:
    digits = rng.randint(*spec.num_digits)
    return str(rng.randint(0, 9) if digits == 1 else rng.randint(10 ** (digits - 1), 10**digits - 1))


def _expression(rng: random.Random, spec: ArithmeticTask, terms: int) -> str:
    """``terms`` numbers joined by operators; a run of 2..terms-1 of them may form a parenthesised group."""
    space = "" if spec.compact else " "
    parts: list[str] = []
    remaining = terms
    while remaining:
        if spec.parentheses and terms >= 3 and remaining >= 2 and rng.random() < GROUP_PROBABILITY:
            size = rng.randint(2, min(remaining, terms - 1))
            atom = f"({_expression(rng, spec, size)})"
        else:
            size = 1
            atom = _number(rng, spec)
        if spec.unary_minus and rng.random() < UNARY_MINUS_PROBABILITY:
            atom = f"-{atom}"
        if parts:
            parts.append(f"{space}{rng.choice(spec.operators)}{space}")
        parts.append(atom)
        remaining -= size
    return "".join(parts)


def generate(spec: ArithmeticTask) -> Iterator[tuple[str, str]]:
    """Endless deterministic stream of (question, answer) pairs for ``spec`` (seeded by ``spec.seed``)."""
    rng = random.Random(spec.seed)
    while True:
        expression = _expression(rng, spec, rng.randint(*spec.num_terms))
        template = rng.choice(spec.templates)
        yield template.replace("{expr}", expression), str(evaluate(expression))
