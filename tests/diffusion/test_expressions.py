"""The safe expression evaluator behind ComfyMathExpression, number conversion and ResolutionSelector:
values checked against arithmetic written here, and the evaluator's refusals (no attributes, no
names or functions outside the whitelist, no strings, bounded powers, shifts, sizes and nesting)."""

import math
import time

import pytest

from genloom.diffusion.expressions import (
    MAX_EXPONENT, ExpressionError, convert_number, evaluate, evaluate_number, resolution)


@pytest.mark.parametrize("expression, names, expected", [
    ("a + b", {"a": 2, "b": 3}, 5),
    ("a * b - c / 4", {"a": 3, "b": 4, "c": 2}, 11.5),
    ("-a ** 2", {"a": 3}, -9),
    ("(a + 1) % 5", {"a": 13}, 4),
    ("a // b", {"a": -7, "b": 2}, -4),
    ("2 ** 10", {}, 1024),
    ("2 ** -1", {}, 0.5),
    ("a > b and a or b", {"a": 5, "b": 3}, 5),
    ("0 or a", {"a": 7}, 7),
    ("not a", {"a": 0}, True),
    ("1 < a < 3", {"a": 2}, True),
    ("1 < a < 3", {"a": 3}, False),
    ("a if a > b else b", {"a": 1, "b": 9}, 9),
    ("sum(values)", {"values": [1, 2, 3.5]}, 6.5),
    ("sum(a, b, c)", {"a": 1, "b": 2, "c": 3}, 6),
    ("max(values) - min(values)", {"values": [4, -2, 9]}, 11),
    ("min(a, b)", {"a": 4, "b": -1}, -1),
    ("values[1] + values[-1]", {"values": [10, 20, 30]}, 50),
    ("abs(a)", {"a": -2.5}, 2.5),
    ("round(a)", {"a": 2.5}, 2),  # Python rounds half to even
    ("round(a, 2)", {"a": 3.14159}, 3.14),
    ("pow(2, 8)", {}, 256),
    ("sqrt(16)", {}, 4.0),
    ("ceil(1.2) + floor(-1.2)", {}, 0),
    ("log(100, 10)", {}, 2.0),
    ("log2(8) + log10(1000)", {}, 6.0),
    ("int(a) + float(b)", {"a": 3.9, "b": 2}, 5.0),
    ("a & 6 | 1 ^ 8", {"a": 5}, (5 & 6) | (1 ^ 8)),
    ("1 << 4 >> 2", {}, 4),
    ("~a", {"a": 5}, -6),
    ("True + True", {}, 2),
])
def test_values(expression, names, expected):
    assert evaluate(expression, names) == expected


def test_trigonometry_and_logarithm():
    assert evaluate("sin(a) ** 2 + cos(a) ** 2", {"a": 0.7}) == pytest.approx(1.0)
    assert evaluate("tan(a)", {"a": 0.25}) == pytest.approx(0.25534192122103627)
    assert evaluate("log(a)", {"a": math.e ** 3}) == pytest.approx(3.0)


def test_number_outputs_float_int_bool():
    assert evaluate_number("a / b", {"a": 7, "b": 2}) == (3.5, 3, True)
    assert evaluate_number("a - b", {"a": 2, "b": 2}) == (0.0, 0, False)
    assert evaluate_number("-a / 2", {"a": 5}) == (-2.5, -2, True)  # INT truncates toward zero
    assert evaluate_number("a > 1", {"a": 2}) == (1.0, 1, True)


@pytest.mark.parametrize("expression", [
    "a.real", "a.__class__", "(1).__class__.__bases__", "values.__len__()",
    "__import__('os')", "open('x')", "eval('1')", "exec('1')", "getattr(a, 'real')", "globals()",
    "os", "x + 1", "math.pi", "pi", "'text'", "b'x'", "f'{a}'", "[1, 2]", "(1, 2)", "{1: 2}", "{1}",
    "lambda: 1", "[x for x in values]", "(x := 3)", "a[0]", "values['a']", "values[1:2]",
    "sum(values, start=1)", "print(a)", "type(a)", "sqrt", "1 in values", "a is b",
])
def test_refused(expression):
    with pytest.raises(ExpressionError):
        evaluate(expression, {"a": 1, "b": 2, "values": [1, 2]})


@pytest.mark.parametrize("expression", [
    "2 ** 4001", "9 ** 9 ** 9", "pow(10, 100000)", "(10 ** 4000) ** 4000", "1 << 100000",
    "(2 ** 4000) * (2 ** 4000) * (2 ** 4000) * (2 ** 4000) * (2 ** 4000)", "round(1.5, 100000)",
    "10.0 ** 400", "a" * 5000, "(" * 500 + "1" + ")" * 500, "+".join(["1"] * 2000),
    "-" * 3000 + "1", "-" * 900 + "1", "sqrt(2 ** 4000)",
    "float(2 ** 4000)", "abs(float(2 ** 1100))",
])
def test_huge_work_is_refused_quickly(expression):
    start = time.perf_counter()
    with pytest.raises(ExpressionError):
        evaluate_number(expression, {"a": 1})
    assert time.perf_counter() - start < 0.5


def test_the_evaluator_never_calls_eval_exec_or_compile():
    import ast
    from pathlib import Path

    import genloom.diffusion.expressions as module

    tree = ast.parse(Path(module.__file__).read_text())
    called = {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    assert not called & {"eval", "exec", "compile", "__import__", "getattr"}


def test_limits_are_comfyui_s_exponent_cap():
    assert evaluate(f"2 ** {MAX_EXPONENT}") == 2 ** 4000
    with pytest.raises(ExpressionError, match="exceeds"):
        evaluate(f"2 ** {MAX_EXPONENT + 1}")


@pytest.mark.parametrize("expression, message", [
    ("1 / 0", "division by zero"), ("a % 0", "division by zero"), ("sqrt(-1)", "sqrt"),
    ("log(0)", "log"), ("(-8) ** 0.5", "not a real number"), ("", "empty"), ("   ", "empty"),
    ("1 +", "syntax"), ("values[5]", "out of range"), ("max()", "argument"), ("pow(2)", "argument"),
])
def test_errors_name_the_problem(expression, message):
    with pytest.raises(ExpressionError, match=message):
        evaluate_number(expression, {"a": 1, "values": [1]})


def test_non_numeric_and_non_finite_results_are_errors():
    with pytest.raises(ExpressionError, match="numeric"):
        evaluate_number("None")
    with pytest.raises(ExpressionError, match="numeric"):
        evaluate_number("values", {"values": [1]})
    with pytest.raises(ExpressionError, match="non-finite"):
        evaluate_number("1e308 * 10")
    with pytest.raises(ExpressionError, match="too large"):
        evaluate_number("2 ** 4000")  # an exact int beyond a float


@pytest.mark.parametrize("value, expected", [
    (True, (1.0, 1)), (False, (0.0, 0)), (7, (7.0, 7)), (-2.75, (-2.75, -2)), (" 42 ", (42.0, 42)),
    ("3.9", (3.9, 3)), ("-1e3", (-1000.0, -1000)), ("12345678901234567890", (1.2345678901234567e19,
                                                                         12345678901234567890)),
])
def test_convert_number(value, expected):
    assert convert_number(value) == expected


@pytest.mark.parametrize("value", ["", "  ", "abc", "inf", "nan", float("inf"), None, [1]])
def test_convert_number_refuses(value):
    with pytest.raises(ExpressionError):
        convert_number(value)


@pytest.mark.parametrize("ratio, megapixels, multiple, minimum, expected", [
    # 1 MP square: sqrt(1048576) = 1024.
    ("1:1 (Square)", 1.0, 8, 256, (1024, 1024)),
    # 16:9 at 1 MP: scale = sqrt(1048576 / 144) = 85.333; 16 * 85.333 = 1365.3 -> 1368, 9 * 85.333 = 768.
    ("16:9 (Widescreen)", 1.0, 8, 256, (1368, 768)),
    # 2:3 at 0.5 MP: scale = sqrt(524288 / 6) = 295.6; 591.2 -> 592, 886.8 -> 888.
    ("2:3 (Portrait Photo)", 0.5, 8, 256, (592, 888)),
    # multiple 64: 1365.3 / 64 = 21.33 -> 1344; 768 / 64 = 12 -> 768.
    ("16:9 (Widescreen)", 1.0, 64, 256, (1344, 768)),
    # 21:9 at 0.1 MP: scale = sqrt(104857.6 / 189) = 23.55; 494.6 -> 496, 212.0 -> 208 < 256: the smallest
    # exact 21:9 size, both sides multiples of 8 and >= 256: k a multiple of 8, >= 256 / 9 = 28.4 -> 32.
    ("21:9 (Ultrawide)", 0.1, 8, 256, (672, 288)),
])
def test_resolution(ratio, megapixels, multiple, minimum, expected):
    assert resolution(ratio, megapixels, multiple, minimum) == expected
