"""Reading the `repr()` of Python objects that trackers store in place of a config they cannot serialise.

SwanLab 0.4 turns what JSON cannot hold into `str(value)`, so HF's SwanLab callback leaves PEFT's adapter config as
`LoraConfig(task_type='CAUSAL_LM', peft_type=<PeftType.LORA: 'LORA'>, r=64, target_modules={'q_proj', 'v_proj'}, ...)`.
The text is parsed, never evaluated: `ast.parse` builds the syntax tree and only literal leaves go through
`ast.literal_eval`; calls become dicts of their keyword arguments, enum reprs their values, sets sorted lists.
"""

from __future__ import annotations

import ast
import re
from typing import Any

QUOTED = r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\""
NOT_SYNTAX = re.compile(
    rf"(?P<quoted>{QUOTED})|<[A-Za-z_][\w.]*: (?P<enum_value>{QUOTED}|-?\d+(?:\.\d+)?)>|(?P<object><[^<>]*>)"
)
"""What a repr holds that is not Python syntax, outside quoted strings: an Enum (`<PeftType.LORA: 'LORA'>`, read as
its value) or another object (`<function f at 0x7f...>`, stood in for by a name and reported as unreadable)."""
CALL_REPR = re.compile(r"^\s*(?:\{\s*'[^']*'\s*:\s*)?[A-Za-z_]\w*\(")


class NotARepr(ValueError):
    """A text that is not a Python repr: `syntax` is Python's own message and `column` where it points, or both None
    when the text is nested too deeply to parse."""

    def __init__(self, syntax: str | None = None, column: int | None = None) -> None:
        self.syntax, self.column = syntax, column
        super().__init__(
            f"not a Python repr ({syntax} at column {column})" if syntax else "not a Python repr (nested too deeply)"
        )


def looks_like_call_repr(value: Any) -> bool:
    """A string that starts as `LoraConfig(` or `{'default': LoraConfig(` (whether or not the rest is well formed)."""
    return isinstance(value, str) and bool(CALL_REPR.match(value))


def parse_repr(text: str) -> tuple[Any, list[str]]:
    """The value a repr describes, and the texts of its parts that are not literals (kept as strings in the value).

    Raises:
        NotARepr: the text is not Python syntax even after the enum reprs are replaced.
    """
    objects: dict[str, str] = {}

    def to_syntax(match: re.Match[str]) -> str:
        if match.group("quoted") is not None:
            return match.group(0)
        if match.group("enum_value") is not None:
            return match.group("enum_value")
        name = f"_object_repr_{len(objects)}"
        objects[name] = match.group(0)
        return name

    try:
        tree = ast.parse(NOT_SYNTAX.sub(to_syntax, text.strip()), mode="eval")
        unreadable: list[str] = []
        return _value(tree.body, unreadable, objects), unreadable
    except SyntaxError as err:
        raise NotARepr(err.msg, err.offset) from None
    except RecursionError:
        raise NotARepr() from None


def _value(node: ast.expr, unreadable: list[str], objects: dict[str, str]) -> Any:
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and not node.args
        and all(k.arg for k in node.keywords)
    ):
        # a dataclass repr, `Name(field=value, ...)`; any other call is kept as its text
        return {keyword.arg: _value(keyword.value, unreadable, objects) for keyword in node.keywords}
    if isinstance(node, ast.Dict):
        return {
            _key(key, unreadable, objects): _value(value, unreadable, objects)
            for key, value in zip(node.keys, node.values)
        }
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_value(item, unreadable, objects) for item in node.elts]
    if isinstance(node, ast.Set):
        return sorted(
            (_value(item, unreadable, objects) for item in node.elts), key=str
        )  # a set's repr order varies by process
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError):
        text = objects.get(node.id, node.id) if isinstance(node, ast.Name) else ast.unparse(node)
        unreadable.append(text)
        return text


def _key(node: ast.expr | None, unreadable: list[str], objects: dict[str, str]) -> str:
    value = _value(node, unreadable, objects) if node is not None else "**"
    return value if isinstance(value, str) else str(value)
