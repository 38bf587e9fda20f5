"""Numbers for the logic nodes: a safe arithmetic-expression evaluator (ComfyMathExpression), number
conversion (ComfyNumberConvert) and sizes from an aspect ratio (ResolutionSelector).

The evaluator never calls eval/exec. It parses with `ast` and walks a whitelist: number constants,
the names it is given, arithmetic, comparison and boolean operators, conditional expressions,
indexing into a list of numbers, and a fixed table of functions. Everything else (attributes,
strings, lambdas, comprehensions, any other name) is refused before anything is computed. Work is
bounded: the text length, the number of syntax nodes, exponents and shifts, and the size of every
integer result are capped, so one request cannot burn CPU or memory.
"""

from __future__ import annotations

import ast
import math
import operator

from genloom.engine.errors import GenloomError

MAX_LENGTH = 4096  # characters of expression text
MAX_NODES = 1000  # syntax nodes in the parsed expression
MAX_EXPONENT = 4000  # |exponent| of ** and pow(), as ComfyUI caps it
MAX_INT_BITS = 16384  # the largest integer any step may produce
MAX_ROUND_DIGITS = 400


class ExpressionError(GenloomError, ValueError):
    """An expression that is not allowed, cannot be parsed or cannot be computed."""


def _check_int(value):
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_INT_BITS:
        raise ExpressionError(f"an intermediate integer has more than {MAX_INT_BITS} bits")
    return value


def _bits(value) -> int:
    return abs(int(value)).bit_length() if isinstance(value, int) else 0


def _power(base, exp):
    if not _is_number(base) or not _is_number(exp):
        raise ExpressionError("** needs numbers")
    if abs(exp) > MAX_EXPONENT:
        raise ExpressionError(f"exponent {exp} exceeds the maximum allowed ({MAX_EXPONENT})")
    if isinstance(base, int) and isinstance(exp, int) and exp > 0 and _bits(base) * exp > MAX_INT_BITS:
        raise ExpressionError(f"the result of {base} ** {exp} would be too large")
    try:
        result = base ** exp
    except OverflowError as exc:
        raise ExpressionError(f"{base} ** {exp} is too large") from exc
    except ZeroDivisionError as exc:
        raise ExpressionError("0 cannot be raised to a negative power") from exc
    if isinstance(result, complex):
        raise ExpressionError(f"{base} ** {exp} is not a real number")
    return result


def _mul(a, b):
    if _bits(a) + _bits(b) > MAX_INT_BITS + 1:
        raise ExpressionError("the product would be too large")
    return a * b


def _lshift(a, b):
    if not isinstance(b, int) or b > MAX_INT_BITS or _bits(a) + b > MAX_INT_BITS:
        raise ExpressionError("the shift would be too large")
    return a << b


def _divide(fn):
    def divide(a, b):
        try:
            return fn(a, b)
        except ZeroDivisionError as exc:
            raise ExpressionError("division by zero") from exc
    return divide


_BINARY = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: _mul, ast.Div: _divide(operator.truediv),
    ast.FloorDiv: _divide(operator.floordiv), ast.Mod: _divide(operator.mod), ast.Pow: _power,
    ast.LShift: _lshift, ast.RShift: operator.rshift, ast.BitAnd: operator.and_, ast.BitOr: operator.or_,
    ast.BitXor: operator.xor,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg, ast.Not: operator.not_, ast.Invert: operator.invert}
_COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
            ast.Gt: operator.gt, ast.GtE: operator.ge}


def _is_number(value) -> bool:
    return isinstance(value, (int, float))


def _numbers(args) -> list:
    """The arguments of sum/min/max: loose numbers, or one list of numbers."""
    if len(args) == 1 and isinstance(args[0], list):
        args = args[0]
    if not args:
        raise ExpressionError("needs at least one number")
    return list(args)


def _math(fn):
    def call(x):
        try:
            return fn(x)
        except (ValueError, OverflowError) as exc:
            raise ExpressionError(f"{fn.__name__}({x}): {exc}") from exc
    call.__name__ = fn.__name__
    return call


def _round(x, ndigits=None):
    if ndigits is not None and abs(ndigits) > MAX_ROUND_DIGITS:
        raise ExpressionError("round() takes at most 400 digits")
    try:
        return round(x) if ndigits is None else round(x, ndigits)
    except (ValueError, OverflowError) as exc:
        raise ExpressionError(f"round({x}): {exc}") from exc


def _log(x, base=None):
    try:
        return math.log(x) if base is None else math.log(x, base)
    except (ValueError, ZeroDivisionError) as exc:
        raise ExpressionError(f"log({x}): {exc}") from exc


def _to_int(x):
    try:
        return int(x)
    except (ValueError, OverflowError) as exc:
        raise ExpressionError(f"int({x}): {exc}") from exc


FUNCTIONS = {  # the names ComfyUI's Math Expression offers
    "sum": lambda *args: sum(_numbers(args)),
    "min": lambda *args: min(_numbers(args)),
    "max": lambda *args: max(_numbers(args)),
    "abs": abs,
    "round": _round,
    "pow": _power,
    "sqrt": _math(math.sqrt),
    "ceil": _math(math.ceil),
    "floor": _math(math.floor),
    "log": _log,
    "log2": _math(math.log2),
    "log10": _math(math.log10),
    "sin": _math(math.sin),
    "cos": _math(math.cos),
    "tan": _math(math.tan),
    "int": _to_int,
    "float": _math(float),
}
_ARITY = {"abs": (1, 1), "round": (1, 2), "pow": (2, 2), "log": (1, 2), "int": (1, 1), "float": (1, 1),
          "sum": (1, None), "min": (1, None), "max": (1, None)}


class _Evaluator:
    def __init__(self, names: dict):
        self.names = names

    def eval(self, node):
        handler = _HANDLERS.get(type(node))
        if handler is None:
            raise ExpressionError(f"{type(node).__name__} is not allowed in a math expression")
        return handler(self, node)

    def _Expression(self, node):
        return self.eval(node.body)

    def _Constant(self, node):
        value = node.value
        if value is None or isinstance(value, (bool, int, float)):
            return value
        raise ExpressionError(f"only numbers are allowed, not {type(value).__name__} constants")

    def _Name(self, node):
        if node.id in self.names:
            return self.names[node.id]
        if node.id in FUNCTIONS:
            raise ExpressionError(f"{node.id} is a function: call it, e.g. {node.id}(a)")
        raise ExpressionError(f"unknown name {node.id!r}")

    def _BinOp(self, node):
        fn = _BINARY.get(type(node.op))
        if fn is None:
            raise ExpressionError(f"operator {type(node.op).__name__} is not allowed")
        left, right = self.eval(node.left), self.eval(node.right)
        if not _is_number(left) or not _is_number(right):
            raise ExpressionError(f"{type(node.op).__name__} needs numbers")
        try:
            return _check_int(fn(left, right))
        except TypeError as exc:  # e.g. a float in a bitwise operation
            raise ExpressionError(str(exc)) from exc
        except OverflowError as exc:
            raise ExpressionError("the result is too large") from exc

    def _UnaryOp(self, node):
        value = self.eval(node.operand)
        if not _is_number(value) and not isinstance(node.op, ast.Not):
            raise ExpressionError("unary operators need numbers")
        try:
            return _UNARY[type(node.op)](value)
        except TypeError as exc:
            raise ExpressionError(str(exc)) from exc

    def _BoolOp(self, node):
        is_and = isinstance(node.op, ast.And)
        value = None
        for operand in node.values:
            value = self.eval(operand)
            if bool(value) != is_and:
                return value
        return value

    def _Compare(self, node):
        left = self.eval(node.left)
        for op, comparator in zip(node.ops, node.comparators):
            fn = _COMPARE.get(type(op))
            if fn is None:
                raise ExpressionError(f"comparison {type(op).__name__} is not allowed")
            right = self.eval(comparator)
            try:
                if not fn(left, right):
                    return False
            except TypeError as exc:
                raise ExpressionError(str(exc)) from exc
            left = right
        return True

    def _IfExp(self, node):
        return self.eval(node.body) if self.eval(node.test) else self.eval(node.orelse)

    def _Subscript(self, node):
        target = self.eval(node.value)
        index = self.eval(node.slice)
        if not isinstance(target, list) or not isinstance(index, int):
            raise ExpressionError("only a list of values can be indexed, by an integer")
        try:
            return target[index]
        except IndexError as exc:
            raise ExpressionError(f"index {index} is out of range") from exc

    def _Call(self, node):
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            name = node.func.id if isinstance(node.func, ast.Name) else type(node.func).__name__
            raise ExpressionError(f"function {name!r} is not allowed")
        if node.keywords:
            raise ExpressionError("keyword arguments are not allowed")
        name = node.func.id
        args = [self.eval(arg) for arg in node.args]
        low, high = _ARITY.get(name, (1, 1))
        if len(args) < low or (high is not None and len(args) > high):
            raise ExpressionError(f"{name}() takes {low}{'' if high == low else ' or more'} argument(s)")
        for arg in args:
            if not (_is_number(arg) or (isinstance(arg, list) and name in ("sum", "min", "max"))):
                raise ExpressionError(f"{name}() needs numbers")
        try:
            return _check_int(FUNCTIONS[name](*args))
        except (TypeError, ValueError, OverflowError, ZeroDivisionError) as exc:
            if isinstance(exc, ExpressionError):
                raise
            raise ExpressionError(f"{name}(): {exc}") from exc


_E = _Evaluator
_HANDLERS = {  # the syntax the evaluator accepts; anything else is refused
    ast.Expression: _E._Expression, ast.Constant: _E._Constant, ast.Name: _E._Name, ast.BinOp: _E._BinOp,
    ast.UnaryOp: _E._UnaryOp, ast.BoolOp: _E._BoolOp, ast.Compare: _E._Compare, ast.IfExp: _E._IfExp,
    ast.Subscript: _E._Subscript, ast.Call: _E._Call,
}


def evaluate(expression: str, names: dict | None = None):
    """The value of `expression` with `names` (numbers, or lists of numbers) bound."""
    if not isinstance(expression, str) or not expression.strip():
        raise ExpressionError("Expression cannot be empty.")
    if len(expression) > MAX_LENGTH:
        raise ExpressionError(f"the expression is longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"invalid syntax: {exc.msg}") from exc
    except (RecursionError, MemoryError, ValueError) as exc:
        raise ExpressionError("the expression is too deeply nested") from exc
    count = 0
    for _ in ast.walk(tree):
        count += 1
        if count > MAX_NODES:
            raise ExpressionError(f"the expression has more than {MAX_NODES} parts")
    try:
        return _Evaluator(dict(names or {})).eval(tree)
    except RecursionError as exc:
        raise ExpressionError("the expression is too deeply nested") from exc


def evaluate_number(expression: str, names: dict | None = None) -> tuple[float, int, bool]:
    """ComfyMathExpression's three outputs: the result as FLOAT, INT (truncated) and BOOL."""
    result = evaluate(expression, names)
    if not _is_number(result):
        raise ExpressionError(f"Math Expression '{expression}' must evaluate to a numeric result, "
                              f"got {type(result).__name__}: {result!r}")
    try:
        as_float = float(result)
    except OverflowError:
        raise ExpressionError(f"Math Expression '{expression}' produced a result too large to represent "
                              f"as a float") from None
    if not math.isfinite(as_float):
        raise ExpressionError(f"Math Expression '{expression}' produced a non-finite result: {result}")
    return as_float, int(result), bool(result)


def convert_number(value) -> tuple[float, int]:
    """ComfyNumberConvert: an INT, FLOAT, STRING or BOOLEAN as (FLOAT, INT)."""
    if isinstance(value, bool):
        as_float, as_int = float(value), int(value)
    elif isinstance(value, int):
        as_float, as_int = float(value), value
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ExpressionError(f"Cannot convert non-finite value to number: {value}")
        as_float, as_int = value, int(value)
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            raise ExpressionError("Cannot convert empty string to number.")
        if len(text) > MAX_LENGTH:
            raise ExpressionError(f"Cannot convert a string longer than {MAX_LENGTH} characters")
        try:
            as_float = float(text)
        except ValueError:
            raise ExpressionError(f"Cannot convert string to number: {value!r}") from None
        if not math.isfinite(as_float):
            raise ExpressionError(f"Cannot convert non-finite value to number: {as_float}")
        try:
            as_int = int(text)
        except ValueError:
            as_int = int(as_float)
    else:
        raise ExpressionError(f"Unsupported input type: {type(value).__name__}")
    return as_float, as_int


ASPECT_RATIOS = {  # ResolutionSelector's choices, in ComfyUI's order
    "1:1 (Square)": (1, 1),
    "3:2 (Photo)": (3, 2),
    "4:3 (Standard)": (4, 3),
    "16:9 (Widescreen)": (16, 9),
    "21:9 (Ultrawide)": (21, 9),
    "2:3 (Portrait Photo)": (2, 3),
    "3:4 (Portrait Standard)": (3, 4),
    "9:16 (Portrait Widescreen)": (9, 16),
}


def resolution(aspect_ratio: str, megapixels: float, multiple: int = 8, minimum: int = 256) -> tuple[int, int]:
    """Width and height of about `megapixels` (1 MP = 1024 * 1024 pixels) at the aspect ratio, each
    rounded to a multiple of `multiple`; when a side falls under `minimum`, the smallest size that keeps
    the exact ratio, has both sides multiples of `multiple` and both at least `minimum`."""
    w_ratio, h_ratio = ASPECT_RATIOS[aspect_ratio]
    scale = math.sqrt(megapixels * 1024 * 1024 / (w_ratio * h_ratio))
    width = round(w_ratio * scale / multiple) * multiple
    height = round(h_ratio * scale / multiple) * multiple
    if width < minimum or height < minimum:
        step_w = multiple // math.gcd(w_ratio, multiple)
        step_h = multiple // math.gcd(h_ratio, multiple)
        k_step = math.lcm(step_w, step_h)
        k = math.ceil(math.ceil(max(minimum / w_ratio, minimum / h_ratio)) / k_step) * k_step
        width, height = w_ratio * k, h_ratio * k
    return width, height
