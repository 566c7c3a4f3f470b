"""Reading training rows from JSONL / JSON / CSV / TSV / Parquet in the formats users bring.

Every row becomes a `Sample` (system, question, think, answer). A bad row stops the read with a
`DataError` naming file, row and field, or, with `skip_bad_rows`, is listed in `ReadResult.skipped`
so that `data_stats.json` shows exactly what was left out. Rows are numbered from 1: the line of a
JSONL file, the element of a JSON array, the line where a CSV/TSV record starts (the header is line 1),
the row of a Parquet file.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from importlib.resources import files
from itertools import islice
from pathlib import Path
from typing import Any

from medtune.data.reply import CHAT_TAGS, THINK_END, THINK_START, split_reply
from medtune.hub import MODELSCOPE_PREFIX, HubError, modelscope_data_file

FIELDS = ("system", "question", "think", "answer")
REPLY_FIELDS = ("think", "answer")
"""The fields of the reply training learns and evaluation scores against (the reference)."""
FORMATS = ("auto", "qta", "alpaca", "messages")
FILE_TYPES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
SHIPPED_PREFIX = "medtune:"
ROW = "(row)"
"""The field named when the whole row is at fault (invalid JSON, not an object, no known format)."""
LINE_BREAK = re.compile(r"\r\n|\r|\n")
"""Where bytes.splitlines splits a file into lines (str.splitlines also splits at U+2028 and others)."""

CHAT_ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
}
"""A message's role -> OpenAI's: OpenAI's own (`developer` is its newer name for system), and ShareGPT's (human, gpt),
in either list; tool and function messages have no place in a single exchange."""


@dataclass
class Sample:
    """One consultation: the fields rendered into the chat template, and where the row came from.

    `masked` holds character spans per field that the augmentation replaced; spans inside a trained
    field (think, answer) are left out of the loss unless the augmentation says otherwise.
    """

    question: str
    think: str
    answer: str
    system: str = ""
    source: str = ""
    masked: dict[str, list[tuple[int, int]]] = field(default_factory=dict)


class DataError(ValueError):
    """A data file or one of its rows cannot be used; the message names file, row and field. `no_reference`: the row
    lacks its reply (reasoning or answer), so it could still be a prompt, but not a row to score against."""

    def __init__(
        self,
        file: str,
        reason: str,
        *,
        line: int | None = None,
        field_name: str | None = None,
        no_reference: bool = False,
    ):
        self.file, self.reason, self.line, self.field = file, reason, line, field_name
        self.no_reference = no_reference
        where = file if line is None else f"{file}:{line}"
        what = f"field '{field_name}': " if field_name is not None else ""
        super().__init__(f"{where}: {what}{reason}")


@dataclass
class BadRow:
    source: str
    field: str
    reason: str


@dataclass
class ReadResult:
    file: str
    samples: list[Sample]
    skipped: list[BadRow]
    multi_turn_truncated: int = 0
    """Conversation rows with more than one user/assistant exchange; only the first one was kept."""
    formats: dict[str, int] = field(default_factory=dict)
    """How many samples each format produced (a file may mix formats when the format is `auto`)."""
    without_think: int = 0
    """Rows without reasoning, trained with an empty think block (`think: optional`)."""
    literal_tags: int = 0
    """Rows whose fields hold a chat-template tag, trained as characters (`literal_tags: text`)."""

    def as_dict(self) -> dict[str, Any]:
        """The summary written into data_stats.json."""
        return {
            "file": self.file,
            "rows": len(self.samples),
            "formats": dict(self.formats),
            "skipped_rows": len(self.skipped),
            "skipped": [asdict(bad) for bad in self.skipped],
            "multi_turn_truncated": self.multi_turn_truncated,
            "rows_without_think": self.without_think,
            "rows_with_literal_tags": self.literal_tags,
        }


@dataclass(frozen=True)
class RowRules:
    """How a row's fields are found and checked (the `data` settings that concern single rows)."""

    system_prompt: str
    columns: Mapping[str, str | list[str]] = field(default_factory=dict)
    """Field -> the row's key or column (a list: several, joined with a newline); unnamed fields keep their name."""
    think: str = "required"
    literal_tags: str = "error"
    answer: str = "required"

    def keys(self, field_name: str) -> list[str]:
        column = self.columns.get(field_name, field_name)
        return [column] if isinstance(column, str) else list(column)


class _RowProblem(Exception):
    """A bad row, before the reader adds file and row number to make it a DataError (`no_reference` as there)."""

    def __init__(self, field_name: str, reason: str, *, no_reference: bool = False):
        super().__init__(reason)
        self.field, self.reason, self.no_reference = field_name, reason, no_reference


def read_samples(
    path: str | Path,
    *,
    format: str = "auto",
    system_prompt: str,
    skip_bad_rows: bool = False,
    max_rows: int | None = None,
    columns: Mapping[str, str | list[str]] | None = None,
    encoding: str = "utf-8",
    think: str = "required",
    literal_tags: str = "error",
    answer: str = "required",
) -> ReadResult:
    """Read every row of a .jsonl, .json, .csv, .tsv or .parquet file into Samples.

    Args:
        path: the file; its suffix picks the reader.
        format: `auto` detects qta / alpaca / messages per row from its keys; any other value forces one.
        system_prompt: used for rows whose system message is absent or empty.
        skip_bad_rows: record bad rows in `skipped` and go on, instead of raising on the first one.
        max_rows: read only the first N rows (good or bad), for quick runs.
        columns: field -> the row's key or column for it (rows are then qta), e.g. {"question": "ask"}.
        encoding: of a text file; a file that is not in it gets an error naming the encoding it looks like.
        think: `optional` trains a row without reasoning with an empty think block; `required` rejects it.
        literal_tags: `text` keeps a chat-template tag inside a field (trained as characters); `error` rejects it.
        answer: `optional` reads a row without its reply (no answer, output or assistant message: a prompts file for
            generation).

    Raises:
        DataError: missing or unreadable file, unknown suffix, a file in another encoding, the first bad row
            (unless skipping), or a file without a single usable row.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown data format {format!r}; choose one of {', '.join(FORMATS)}")
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, got {max_rows}")
    rules = RowRules(system_prompt, dict(columns or {}), think, literal_tags, answer)
    path = Path(path)
    file = str(path)
    result = ReadResult(file=file, samples=[], skipped=[])
    for line, row in islice(_rows(path, encoding), max_rows):
        try:
            if isinstance(row, _RowProblem):
                raise row
            row_format = "qta" if rules.columns else _detect_format(row) if format == "auto" else format
            sample, truncated = _CONVERTERS[row_format](row, rules)
        except _RowProblem as problem:
            if not skip_bad_rows:
                raise DataError(
                    file, problem.reason, line=line, field_name=problem.field, no_reference=problem.no_reference
                ) from None
            result.skipped.append(BadRow(f"{path.name}:{line}", problem.field, problem.reason))
            continue
        sample.source = f"{path.name}:{line}"
        result.samples.append(sample)
        result.multi_turn_truncated += truncated
        result.formats[row_format] = result.formats.get(row_format, 0) + 1
        result.without_think += not sample.think
        result.literal_tags += any(
            tag in text for tag in CHAT_TAGS for text in (sample.question, sample.think, sample.answer)
        )
    if not result.samples and not result.skipped:
        raise DataError(file, "no rows")
    if not result.samples:
        first = result.skipped[0]
        first_bad = f"{first.source}: field '{first.field}': {first.reason}"
        raise DataError(file, f"no usable rows: all {len(result.skipped)} are bad, the first {first_bad}")
    return result


def resolve_data_path(spec: str) -> Path:
    """`medtune:<name>` is a file shipped with the package; `modelscope:<owner>/<name>[/<file>]` a data set
    file fetched into the ModelScope cache (see `hub.py`); anything else is a path (`~` expanded)."""
    if spec.startswith(MODELSCOPE_PREFIX):
        try:
            return modelscope_data_file(spec.removeprefix(MODELSCOPE_PREFIX), FILE_TYPES)
        except HubError as err:
            raise DataError(spec, str(err)) from err
    if not spec.startswith(SHIPPED_PREFIX):
        return Path(spec).expanduser()
    name = spec.removeprefix(SHIPPED_PREFIX)
    folder = files("medtune").joinpath("resources", "data")
    shipped = {entry.name.removesuffix(".jsonl"): entry for entry in folder.iterdir() if entry.name.endswith(".jsonl")}
    if name not in shipped:
        raise DataError(
            spec, f"no shipped data set {name!r}; shipped: {', '.join(SHIPPED_PREFIX + n for n in sorted(shipped))}"
        )
    return Path(str(shipped[name]))


# --- file types: each yields (row number from 1, parsed row or the problem that prevented parsing)


def _rows(path: Path, encoding: str) -> Iterator[tuple[int, Any]]:
    suffix = path.suffix.lower()
    if suffix not in FILE_TYPES:
        raise DataError(str(path), f"unsupported file type {path.suffix!r}; use one of {', '.join(FILE_TYPES)}")
    if not path.is_file():
        raise DataError(str(path), "file not found" if not path.exists() else "not a file")
    if suffix == ".parquet":
        return _parquet_rows(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(str(path), f"cannot read the file: {err.strerror}") from None
    lines = _decoded_lines(path, raw, encoding)
    if suffix in (".csv", ".tsv"):
        return _csv_rows(path, lines, "\t" if suffix == ".tsv" else ",")
    return _jsonl_rows(lines) if suffix == ".jsonl" else _json_array_rows(path, lines)


def _decoded_lines(path: Path, raw: bytes, encoding: str) -> list[str | _RowProblem]:
    """The file's lines as text, a line that does not decode as the problem to report for it.

    A byte-order mark at the start is dropped, not treated as data. When most lines that hold non-ASCII
    bytes do not decode (or any line of a file parsed whole), the file is in another encoding: that is one
    error for the file, naming the encoding it looks like, even when bad rows are skipped.
    """
    if not "a\n".encode(encoding).endswith(b"a\n"):
        return _decoded_whole(path, raw, encoding)
    decoded: list[str | _RowProblem] = []
    good, first_bad = 0, None
    for line, data in enumerate(raw.splitlines(), start=1):
        try:
            decoded.append(data.decode(encoding).removeprefix("\ufeff" if line == 1 else ""))
            good += not data.isascii()
        except UnicodeDecodeError as err:
            first_bad = first_bad or (line, err.start + 1)
            decoded.append(_RowProblem(ROW, f"not valid {encoding.upper()} (byte {err.start + 1} of the line)"))
    bad = sum(isinstance(text, _RowProblem) for text in decoded)
    if bad and (bad > good or path.suffix.lower() != ".jsonl"):
        line, byte = first_bad
        reason = f"not valid {encoding.upper()} (byte {byte} of the line); {_encoding_hint(raw, encoding)}"
        raise DataError(str(path), reason, line=line, field_name=ROW)
    return decoded


def _decoded_whole(path: Path, raw: bytes, encoding: str) -> list[str | _RowProblem]:
    """The lines of a file in an encoding whose newline is not the byte 0x0A (UTF-16, UTF-32): decoded whole, then
    split where bytes.splitlines would split; a byte that does not decode is an error for the file at its line."""
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as err:
        line = len(LINE_BREAK.split(raw[: err.start].decode(encoding, errors="replace")))
        reason = f"not valid {encoding.upper()} (byte {err.start + 1} of the file); {_encoding_hint(raw, encoding)}"
        raise DataError(str(path), reason, line=line, field_name=ROW) from None
    lines: list[str | _RowProblem] = list(LINE_BREAK.split(text.removeprefix("\ufeff")))
    return lines[:-1] if lines and lines[-1] == "" else lines


def _encoding_hint(raw: bytes, encoding: str) -> str:
    """What to set, from charset-normalizer's guess at the file's encoding."""
    from charset_normalizer import from_bytes  # only a file that fails to decode pays the import

    guess = from_bytes(raw).best()
    if guess is None or guess.encoding.replace("_", "-") == encoding:
        return "set data.encoding to the file's encoding (e.g. gb18030), or fix the damaged bytes"
    name = guess.encoding.replace("_", "-")
    return f"the file looks like {name.upper()}: set data.encoding: {name}"


def _jsonl_rows(lines: list[str | _RowProblem]) -> Iterator[tuple[int, Any]]:
    for line, text in enumerate(lines, start=1):
        if isinstance(text, _RowProblem):
            yield line, text
            continue
        if not text.strip():
            continue
        try:
            yield line, json.loads(text)
        except json.JSONDecodeError as err:
            yield line, _RowProblem(ROW, f"invalid JSON: {err.msg} (column {err.colno})")


def _json_array_rows(path: Path, lines: list[str]) -> Iterator[tuple[int, Any]]:
    """A JSON file is parsed whole, so a syntax error makes the whole file unusable. A file of one object per line
    is read as JSON Lines, as HF datasets (and so LLaMA-Factory) read such a `.json` file."""
    file = str(path)
    try:
        data = json.loads("\n".join(lines))
    except json.JSONDecodeError as err:
        if err.msg == "Extra data" and _is_json_object(next((text for text in lines if text.strip()), "")):
            yield from _jsonl_rows(lines)
            return
        raise DataError(
            file, f"invalid JSON: {err.msg} (column {err.colno})", line=err.lineno, field_name=ROW
        ) from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))
    if not isinstance(data, list):
        raise DataError(file, "expected a JSON array of rows, or an object whose single value is that array")
    yield from enumerate(data, start=1)


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except json.JSONDecodeError:
        return False


def _csv_rows(path: Path, lines: list[str], delimiter: str) -> Iterator[tuple[int, Any]]:
    """Records under a header row, as {column: cell}; a record may span lines inside quotes. Columns without a name
    (the empty ones a spreadsheet writes past the last named one) cannot be mapped to a field and are left out."""
    file = str(path)
    text = "\n".join(lines)
    csv.field_size_limit(max(csv.field_size_limit(), len(text)))  # its default refuses cells over 131,072 characters
    reader = csv.reader(io.StringIO(text), delimiter=delimiter, strict=True)
    try:
        header = [name.strip() for name in next(reader, [])]
        twice = sorted({name for name in header if name and header.count(name) > 1})
        if twice:
            raise DataError(
                file, f"the header names column {', '.join(map(repr, twice))} twice", line=1, field_name=ROW
            )
        start = reader.line_num + 1
        for record in reader:
            line, start = start, reader.line_num + 1
            if not any(cell.strip() for cell in record):
                continue
            if len(record) != len(header):
                yield line, _RowProblem(ROW, f"{len(record)} cells, but the header has {len(header)} columns")
                continue
            yield line, {name: cell for name, cell in zip(header, record) if name}
    except csv.Error as err:
        raise DataError(
            file,
            f"not readable as {'TSV' if delimiter == chr(9) else 'CSV'}: {err}",
            line=reader.line_num,
            field_name=ROW,
        ) from None


def _parquet_rows(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow as pa  # the import costs a moment; JSON readers never pay it
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
        line = 0
        for batch in batches:
            for row in batch.to_pylist():
                line += 1
                yield line, row
    except (OSError, pa.ArrowException) as err:
        raise DataError(str(path), f"not a readable Parquet file: {err}") from None


# --- formats: each turns one parsed row into (Sample, whether a longer conversation was cut)


def _detect_format(row: Any) -> str:
    _require_object(row)
    if "messages" in row or "conversations" in row:
        return "messages"
    if {"question", "think", "answer"} & row.keys():
        return "qta"
    if {"instruction", "output"} & row.keys():
        return "alpaca"
    keys = ", ".join(sorted(map(str, row))) or "none"
    raise _RowProblem(
        ROW,
        f"no known format (keys: {keys}); expected question/think/answer, instruction/input/output, or "
        "messages/conversations, or data.columns naming the keys that hold the question and the answer",
    )


def _require_object(row: Any) -> None:
    if not isinstance(row, dict):
        raise _RowProblem(ROW, f"expected a JSON object, got {_type_name(row)}")


def _type_name(value: Any) -> str:
    return (
        "null"
        if value is None
        else {dict: "object", list: "array", str: "string"}.get(type(value), type(value).__name__)
    )


def _text(
    row: dict[str, Any],
    key: str,
    *,
    required: bool,
    allow_empty: bool = False,
    label: str | None = None,
    reply: bool = False,
) -> str:
    """A string field; null counts as absent. `label` names the field in errors when `key` is nested; `reply`: the
    field is (part of) the reply, so a row without it has no reference."""
    name = label or key
    value = row.get(key)
    if value is None:
        if required:
            raise _RowProblem(name, "missing", no_reference=reply)
        return ""
    if not isinstance(value, str):
        raise _RowProblem(name, f"wrong type: expected a string, got {_type_name(value)}")
    if required and not allow_empty and not value.strip():
        raise _RowProblem(name, "empty", no_reference=reply)
    return value.strip()


def _field(row: dict[str, Any], field_name: str, rules: RowRules, *, required: bool) -> str:
    """A Sample field from the row's key(s) for it (`columns`), several joined with a newline; tags checked."""
    keys = rules.keys(field_name)
    reply = field_name in REPLY_FIELDS
    parts = [_text(row, key, required=required and len(keys) == 1, reply=reply) for key in keys]
    if required and len(keys) > 1:
        missing = [key for key in keys if key not in row]
        if missing:
            raise _RowProblem(missing[0], "missing", no_reference=reply)
        if not any(parts):
            raise _RowProblem("+".join(keys), "empty", no_reference=reply)
    text = "\n".join(part for part in parts if part)
    _check_tags(text, "+".join(keys), rules)
    return text


_NO_THINK = "set data.think: optional to train rows without reasoning (with an empty think block)"


def _check_tags(text: str, label: str, rules: RowRules) -> None:
    """A chat-template tag in a field is a bad row unless `literal_tags: text` keeps it as characters."""
    if rules.literal_tags == "text":
        return
    tags = [tag for tag in CHAT_TAGS if tag in text]
    if tags:
        raise _RowProblem(
            label,
            f"holds the chat-template tag {tags[0]!r}; remove it, or set data.literal_tags: text to "
            "train it as plain characters",
        )


def _split_think(reply: str, field_name: str, rules: RowRules) -> tuple[str, str]:
    """Think and answer of a reply field, split as every reply is (`data.reply.split_reply`); the think block must
    open the reply and be closed, and tags left in either part are checked."""
    parts = split_reply(reply)
    if parts.preamble:
        raise _RowProblem(field_name, f"text before {THINK_START!r}: the think block must open the reply")
    if parts.opened and not parts.closed:
        raise _RowProblem(field_name, f"{THINK_START!r} is never closed by {THINK_END!r}")
    think, answer = parts.think, parts.answer
    if not answer:
        raise _RowProblem(field_name, f"empty answer after the {THINK_END} block", no_reference=True)
    if not think and rules.think == "required":
        raise _RowProblem(
            field_name,
            f"no reasoning: no {THINK_START}...{THINK_END} block with text before the answer; {_NO_THINK}",
            no_reference=True,
        )
    _check_tags(think, field_name, rules)
    _check_tags(answer, field_name, rules)
    return think, answer


def _qta_sample(row: Any, rules: RowRules) -> tuple[Sample, bool]:
    _require_object(row)
    try:
        question = _field(row, "question", rules, required=True)
        try:
            think = _field(row, "think", rules, required=rules.think == "required")
        except _RowProblem as problem:
            raise _RowProblem(
                problem.field, f"{problem.reason}; {_NO_THINK}", no_reference=problem.no_reference
            ) from None
        answer = _field(row, "answer", rules, required=rules.answer == "required")
    except _RowProblem as problem:
        raise _with_row_keys(problem, row) from None
    system = _field(row, "system", rules, required=False) or rules.system_prompt
    return Sample(question=question, think=think, answer=answer, system=system), False


def _with_row_keys(problem: _RowProblem, row: dict[str, Any]) -> _RowProblem:
    """A field the row lacks altogether (a table with other column names, say): the row's keys, and the setting that
    maps them."""
    if problem.reason != "missing" or problem.field in row:
        return problem
    keys = ", ".join(map(str, row)) or "none"
    return _RowProblem(
        problem.field,
        f"missing (the row's keys: {keys}); data.columns names the key that holds it",
        no_reference=problem.no_reference,
    )


def _alpaca_sample(row: Any, rules: RowRules) -> tuple[Sample, bool]:
    _require_object(row)
    instruction = _text(row, "instruction", required=True)
    extra_input = _text(row, "input", required=False)
    output = _text(row, "output", required=rules.answer == "required", reply=True)
    think, answer = _reply_parts(output, "output", rules)
    system = _text(row, "system", required=False)
    for label, text in (("instruction", instruction), ("input", extra_input), ("system", system)):
        _check_tags(text, label, rules)
    question = f"{instruction}\n{extra_input}" if extra_input else instruction
    sample = Sample(question=question, think=think, answer=answer, system=system or rules.system_prompt)
    return sample, bool(row.get("history"))  # earlier turns, before this one: not trained on


def _messages_sample(row: Any, rules: RowRules) -> tuple[Sample, bool]:
    """OpenAI `messages` or ShareGPT `conversations`: the system message and the first exchange. Messages after it
    are not read (tool calls, tool results), only counted: the row holds more than one exchange."""
    _require_object(row)
    key, messages = _chat_messages(row)
    system, question, reply, turns = None, None, None, 0
    for index, message in enumerate(messages):
        role, content, where = _chat_message(message, f"{key}[{index}]", sharegpt_list=key == "conversations")
        turns += role != "system"
        if role == "system" and question is None and system is None:
            system = (content, where)
        elif role == "user" and question is None:
            question = (content, where)
        elif role == "assistant" and question is not None:
            reply = (content, where)
            break
    if question is None:
        raise _RowProblem(key, "no user message")
    if reply is None and rules.answer == "required":
        raise _RowProblem(key, "no assistant message after the first user message", no_reference=True)
    if not question[0]:
        raise _RowProblem(question[1], "empty")
    if reply is not None and not reply[0] and rules.answer == "required":
        raise _RowProblem(reply[1], "empty", no_reference=True)
    for text, where in (question, system or ("", "")):
        _check_tags(text, where, rules)
    think, answer = _reply_parts(*(reply or ("", key)), rules)
    sample = Sample(
        question=question[0], think=think, answer=answer, system=(system and system[0]) or rules.system_prompt
    )
    return sample, turns > 2 or index + 1 < len(messages)


def _reply_parts(reply: str, field_name: str, rules: RowRules) -> tuple[str, str]:
    """Think and answer of a reply field; none at all in a row that may hold only its question (`answer:
    optional`, a prompts file)."""
    if not reply and rules.answer == "optional":
        return "", ""
    return _split_think(reply, field_name, rules)


def _chat_messages(row: dict[str, Any]) -> tuple[str, list[Any]]:
    """The row's key of its messages (`conversations` for ShareGPT, else `messages`) and their list."""
    key = "conversations" if "conversations" in row and "messages" not in row else "messages"
    messages = row.get(key)
    if messages is None:
        raise _RowProblem(key, "missing")
    if not isinstance(messages, list):
        raise _RowProblem(key, f"wrong type: expected a list of messages, got {_type_name(messages)}")
    return key, messages


def _chat_message(message: Any, where: str, *, sharegpt_list: bool) -> tuple[str, str, str]:
    """(role, stripped content, field path for errors) of one message, its role mapped to OpenAI's. A message is
    ShareGPT's (`from`, `value`) or OpenAI's (`role`, `content`) by its keys, whichever list holds it, as datasets mix
    them; a message with neither is named by its list's style (`conversations`: ShareGPT)."""
    if not isinstance(message, dict):
        raise _RowProblem(where, f"wrong type: expected an object, got {_type_name(message)}")
    sharegpt = "from" in message or (sharegpt_list and "role" not in message)
    role_key, content_key = ("from", "value") if sharegpt else ("role", "content")
    role = _text(message, role_key, required=True, label=f"{where}.{role_key}")
    if role not in CHAT_ROLES:
        raise _RowProblem(f"{where}.{role_key}", f"unknown role {role!r}; expected one of {', '.join(CHAT_ROLES)}")
    content = _text(message, content_key, required=True, allow_empty=True, label=f"{where}.{content_key}")
    return CHAT_ROLES[role], content, f"{where}.{content_key}"


_CONVERTERS = {"qta": _qta_sample, "alpaca": _alpaca_sample, "messages": _messages_sample}
