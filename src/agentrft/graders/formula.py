"""The ``calculate_output`` formula of a ``multi`` grader: a safe expression parser (never ``eval``).

Grammar (precedence low → high; ``^`` is right-associative and binds tighter than unary minus, so
``-2^2 = -4`` and ``2^3^2 = 2^9``)::

    expr    := term (("+" | "-") term)*
    term    := unary (("*" | "/") unary)*
    unary   := ("-" | "+") unary | power
    power   := atom ("^" unary)?            # "**" is accepted as a synonym of "^"
    atom    := NUMBER | NAME | FUNC "(" expr ("," expr)* ")" | "(" expr ")"

``NAME`` is a key of the multi grader's ``graders`` dict (letters, digits, ``_``; must not start with a digit).
``FUNC`` is one of ``min, max`` (one or more arguments) and ``abs, floor, ceil, exp, sqrt, log`` (exactly one;
``log`` is the natural logarithm). Numbers are decimal (``0.5``, ``.5``, ``1e-3``).

Evaluation is in IEEE floats. A division by zero, ``sqrt`` of a negative, ``log`` of a non-positive, an
overflow, or a non-finite result raises :class:`FormulaError` (``kind="eval"``); bad syntax, unknown names or
functions, and wrong argument counts raise it at parse time (``kind="parse"``), with the character offset.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable

FUNCS_1: dict[str, Callable[[float], float]] = {
    "abs": abs,
    "floor": lambda x: float(math.floor(x)),
    "ceil": lambda x: float(math.ceil(x)),
    "exp": math.exp,
    "sqrt": math.sqrt,
    "log": math.log,
}
FUNCS_N: dict[str, Callable[..., float]] = {"min": min, "max": max}

_TOKEN_RE = re.compile(
    r"\s*(?:(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<op>\*\*|[-+*/^(),]))"
)


class FormulaError(ValueError):
    def __init__(self, message: str, kind: str = "parse"):
        super().__init__(message)
        self.kind = kind


Node = tuple[Any, ...]  # ("num", v) | ("var", name) | ("neg", n) | ("bin", op, a, b) | ("call", fn, [args])


def _tokenize(src: str) -> list[tuple[str, str, int]]:
    out: list[tuple[str, str, int]] = []
    pos = 0
    n = len(src)
    while pos < n:
        if src[pos].isspace():
            pos += 1
            continue
        m = _TOKEN_RE.match(src, pos)
        if not m or m.end() == pos:
            raise FormulaError(f"calculate_output: unexpected character {src[pos]!r} at offset {pos}")
        kind = m.lastgroup or "op"
        val = m.group(kind)
        out.append((kind, "^" if val == "**" else val, m.start(kind)))
        pos = m.end()
    out.append(("end", "", n))
    return out


class _Parser:
    def __init__(self, src: str, names: set[str] | None):
        self.src = src
        self.toks = _tokenize(src)
        self.i = 0
        self.names = names
        self.used: set[str] = set()

    def peek(self) -> tuple[str, str, int]:
        return self.toks[self.i]

    def take(self, value: str | None = None) -> tuple[str, str, int]:
        t = self.toks[self.i]
        if value is not None and t[1] != value:
            what = "end of formula" if t[0] == "end" else repr(t[1])
            raise FormulaError(f"calculate_output: expected {value!r} at offset {t[2]}, found {what}")
        self.i += 1
        return t

    def parse(self) -> Node:
        if self.peek()[0] == "end":
            raise FormulaError("calculate_output: empty formula")
        node = self.expr()
        t = self.peek()
        if t[0] != "end":
            raise FormulaError(f"calculate_output: unexpected {t[1]!r} at offset {t[2]}")
        return node

    def expr(self) -> Node:
        node = self.term()
        while self.peek()[1] in ("+", "-") and self.peek()[0] == "op":
            op = self.take()[1]
            node = ("bin", op, node, self.term())
        return node

    def term(self) -> Node:
        node = self.unary()
        while self.peek()[1] in ("*", "/") and self.peek()[0] == "op":
            op = self.take()[1]
            node = ("bin", op, node, self.unary())
        return node

    def unary(self) -> Node:
        t = self.peek()
        if t[0] == "op" and t[1] in ("-", "+"):
            self.take()
            inner = self.unary()
            return ("neg", inner) if t[1] == "-" else inner
        return self.power()

    def power(self) -> Node:
        base = self.atom()
        if self.peek()[0] == "op" and self.peek()[1] == "^":
            self.take()
            return ("bin", "^", base, self.unary())
        return base

    def atom(self) -> Node:
        kind, val, pos = self.take()
        if kind == "num":
            return ("num", float(val))
        if kind == "name":
            if self.peek()[1] == "(" and self.peek()[0] == "op":
                if val not in FUNCS_1 and val not in FUNCS_N:
                    raise FormulaError(
                        f"calculate_output: unknown function {val!r} at offset {pos} "
                        f"(known: {', '.join(sorted({**FUNCS_1, **FUNCS_N}))})"
                    )
                self.take("(")
                args = [self.expr()]
                while self.peek()[1] == ",":
                    self.take()
                    args.append(self.expr())
                self.take(")")
                if val in FUNCS_1 and len(args) != 1:
                    raise FormulaError(f"calculate_output: {val}() takes 1 argument, got {len(args)} (offset {pos})")
                return ("call", val, args)
            if self.names is not None and val not in self.names:
                known = ", ".join(sorted(self.names)) or "none"
                raise FormulaError(f"calculate_output: unknown grader name {val!r} at offset {pos} (graders: {known})")
            self.used.add(val)
            return ("var", val)
        if kind == "op" and val == "(":
            node = self.expr()
            self.take(")")
            return node
        what = "end of formula" if kind == "end" else repr(val)
        raise FormulaError(f"calculate_output: unexpected {what} at offset {pos}")


class Formula:
    """A parsed formula. ``Formula(src, names)`` parses (FormulaError on bad input); ``evaluate(values)``."""

    def __init__(self, src: str, names: set[str] | None = None):
        if not isinstance(src, str):
            raise FormulaError(f"calculate_output: expected a string, got {type(src).__name__}")
        self.src = src
        p = _Parser(src, names)
        self.tree = p.parse()
        self.names = p.used
        self._fn = _compile(self.tree)

    def evaluate(self, values: dict[str, float]) -> float:
        try:
            out = self._fn(values)
        except ZeroDivisionError:
            raise FormulaError("calculate_output: division by zero", "eval") from None
        except OverflowError:
            raise FormulaError("calculate_output: overflow", "eval") from None
        except ValueError as e:  # math domain errors
            raise FormulaError(f"calculate_output: {e}", "eval") from None
        except KeyError as e:
            raise FormulaError(f"calculate_output: no value for {e.args[0]!r}", "eval") from None
        if isinstance(out, complex) or not math.isfinite(out):
            raise FormulaError(f"calculate_output: result is not a finite real number ({out})", "eval")
        return float(out)


def _eval(n: Node, v: dict[str, float]) -> float:
    k = n[0]
    if k == "num":
        return n[1]
    if k == "var":
        return float(v[n[1]])
    if k == "neg":
        return -_eval(n[1], v)
    if k == "bin":
        a = _eval(n[2], v)
        b = _eval(n[3], v)
        op = n[1]
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        if op == "/":
            return a / b
        r = a**b  # may be complex for a negative base with a fractional exponent: caught by the caller
        if isinstance(r, complex):
            raise ValueError(f"{a} ^ {b} is not a real number")
        return r
    args = [_eval(a, v) for a in n[2]]
    if n[1] in FUNCS_N:
        return float(FUNCS_N[n[1]](args))
    if n[1] == "log" and args[0] <= 0:
        raise ValueError(f"log({args[0]}) is undefined")
    if n[1] == "sqrt" and args[0] < 0:
        raise ValueError(f"sqrt({args[0]}) is undefined")
    return FUNCS_1[n[1]](args[0])


def _compile(n: Node) -> Callable[[dict[str, float]], float]:
    """The tree as nested closures (same semantics as :func:`_eval`, ~3x faster per call)."""
    k = n[0]
    if k == "num":
        c = n[1]
        return lambda v: c
    if k == "var":
        name = n[1]
        return lambda v: float(v[name])
    if k == "neg":
        f = _compile(n[1])
        return lambda v: -f(v)
    if k == "bin":
        a, b, op = _compile(n[2]), _compile(n[3]), n[1]
        if op == "+":
            return lambda v: a(v) + b(v)
        if op == "-":
            return lambda v: a(v) - b(v)
        if op == "*":
            return lambda v: a(v) * b(v)
        if op == "/":
            return lambda v: a(v) / b(v)
        return lambda v: _pow(a(v), b(v))
    args = [_compile(x) for x in n[2]]
    fname = n[1]
    if fname in FUNCS_N:
        agg = FUNCS_N[fname]
        return lambda v: float(agg([f(v) for f in args]))
    f1 = FUNCS_1[fname]
    g = args[0]
    if fname == "log":
        return lambda v: _log(g(v))
    if fname == "sqrt":
        return lambda v: _sqrt(g(v))
    return lambda v: f1(g(v))


def _pow(a: float, b: float) -> float:
    r = a**b
    if isinstance(r, complex):
        raise ValueError(f"{a} ^ {b} is not a real number")
    return r


def _log(x: float) -> float:
    if x <= 0:
        raise ValueError(f"log({x}) is undefined")
    return math.log(x)


def _sqrt(x: float) -> float:
    if x < 0:
        raise ValueError(f"sqrt({x}) is undefined")
    return math.sqrt(x)
