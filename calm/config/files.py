"""Config files: reading them (a YAML error names its line), checking them against the typed
config (calm/config/) with every error on one line naming the file and key, sweep tables,
and the JSON schema the workflow validates with."""
from __future__ import annotations

import copy
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from calm.config import Config


class ConfigError(ValueError):
    """A bad config value, as one line naming the file and the key."""


def read_config_file(path: str | Path) -> dict:
    """The keys of one config file; a missing, empty or non-YAML file, or one that is not a
    mapping, is one ConfigError line naming it (and the line of a YAML error)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}:{where} not valid YAML: {problem}") from None
    if data is None:
        raise ConfigError(f"{path}: the config is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def load_config(*paths: str | Path) -> Config:
    """The config of one or more files, each file's keys over the earlier files' (sections
    merged key by key), as Snakemake lays a --configfile over config/config.yaml."""
    merged: dict = {}
    for path in paths:
        _lay_over(merged, read_config_file(path))
    return check_config(merged, " + ".join(map(str, paths)))


def _lay_over(base: dict, top: dict) -> None:
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _lay_over(base[key], value)
        else:
            base[key] = value


def check_config(data: Any, source: str = "config") -> Config:
    """`Config.model_validate`, with any error turned into one `ConfigError` line."""
    if data is None:
        raise ConfigError(f"{source}: the config is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of config keys, got {type(data).__name__}")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(error_line(exc, source)) from None


def error_line(exc: ValidationError, source: str = "config", model: type[BaseModel] = None) -> str:
    """Pydantic's multi-line report as one line: 'source: key: what was expected, got what'."""
    model = model or Config
    parts = []
    for err in exc.errors(include_url=False):
        key = _dotted(err["loc"])
        kind, msg = err["type"], err["msg"]
        if kind == "extra_forbidden":
            allowed = _fields_at(model, err["loc"][:-1])
            parts.append(f"{key}: unknown key" + (f" (allowed: {', '.join(allowed)})" if allowed else ""))
        elif kind == "missing":
            parts.append(f"{key}: required key is missing")
        elif kind in ("value_error", "assertion_error"):
            # Our own validators already name their keys.
            parts.append(msg.removeprefix("Value error, ").removeprefix("Assertion failed, "))
        else:
            expected = msg.removeprefix("Input should be ")
            if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
                expected = "a value " + expected
            parts.append(f"{key}: expected {expected}, got {err['input']!r}")
    return f"{source}: " + "; ".join(parts)


def _dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _inner(annotation: Any) -> Any:
    """The model inside list[...] / dict[str, ...] / Optional[...], if any."""
    while typing.get_origin(annotation) in (list, dict, typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = args[-1]
    return annotation


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the model found at `loc` inside `model` (for 'allowed: ...' hints).
    List indices and dict keys (a custom task's name) keep the current model."""
    current: Any = model
    for part in loc:
        if _is_model(current) and part in current.model_fields:
            current = _inner(current.model_fields[part].annotation)
    return list(current.model_fields) if _is_model(current) else []


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


# --- sweep tables ---------------------------------------------------------------------------

def _field_path(model: type[BaseModel], column: str) -> FieldInfo | None:
    """The field a (possibly dotted: 'calm.lr') column names inside `model`, or None."""
    current: Any = model
    field = None
    for part in column.split("."):
        if not _is_model(current) or part not in current.model_fields:
            return None
        field = current.model_fields[part]
        current = _inner(field.annotation)
    return field


def _section_name(model: type[BaseModel]) -> str:
    for name, field in Config.model_fields.items():
        if field.annotation is model:
            return name
    return model.__name__


# The other separators a sweep table is likely written with, for the hint when its header
# reads as one unknown column.
SEPARATORS = {",": "comma", "\t": "tab", ";": "semicolon", "|": "vertical bar"}


def _read_table(path: Path) -> tuple[str, list[str], list[list[str]]]:
    """A sweep table as text cells: its kind of separator, header and rows (blank lines
    skipped). Comma-separated if its name ends in .csv, else tab-separated. Rows are numbered
    from 1, the first after the header, in every message, as the rows of a spreadsheet below
    its header row."""
    import csv

    if not path.is_file():
        raise ConfigError(f"{path}: no such sweep table")
    kind, sep = ("comma", ",") if path.suffix.lower() == ".csv" else ("tab", "\t")
    lines: list[list[str]] = []
    try:
        with path.open(newline="") as f:
            for line in csv.reader(f, delimiter=sep, skipinitialspace=True, strict=True):
                if any(cell.strip() for cell in line):
                    lines.append(line)
    except (csv.Error, UnicodeDecodeError) as exc:
        where = f"row {len(lines)}: " if lines else ""  # the row being read: the header is lines[0]
        raise ConfigError(f"{path}: {where}not a readable {kind}-separated table: {exc}") from None
    header = [c.strip() for c in lines[0]] if lines else []
    if not header or len(lines) < 2:
        raise ConfigError(f"{path}: the sweep table has no {'columns' if not header else 'rows'}")
    for i, row in enumerate(lines[1:], start=1):
        if len(row) != len(header):
            raise ConfigError(f"{path}: row {i} has {len(row)} {kind}-separated values, the header "
                              f"{len(header)} columns")
    return kind, header, [[c.strip() for c in row] for row in lines[1:]]


def _separator_hint(column: str, kind: str) -> str:
    """Why one column's name holds several keys: the table uses another separator."""
    other = [name for s, name in SEPARATORS.items() if s in column and name != kind]
    if not other:
        return ""
    return (f"; the table is read as {kind}-separated ({'a .csv name' if kind == 'comma' else 'not a .csv name'}), "
            f"but its header is separated by {other[0]}s")


def validate_sweep_table(path: str | Path, section_model: type[BaseModel],
                         base: "Config | None" = None, sections: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Check a sweep table (TSV, or CSV if named *.csv; one column per key of `section_model`,
    dotted 'a.b' for nested keys; one row per sweep point) and return its rows as typed values.

    Every column must name a key, every cell must be a valid value for it (list keys take items
    separated by ',' or '>'), no row may repeat another. With `base` (the whole config) each
    row is also applied to it and the result checked as a whole, so cross-key rules (an order
    naming only tasks of data.tasks, ...) hold for every row. With `sections` (and
    `section_model` Config), a column is a key of one of those sections, dotted ('calm.lr') or
    bare ('lr', where only one section has it), and rows are keyed by the dotted name.
    Raises one `ConfigError`: one line per bad column and per bad row (rows numbered from 1, the
    first below the header), each naming the file, row and column.
    """
    path = Path(path)
    kind, header, records = _read_table(path)
    where = " or ".join(sections) or _section_name(section_model)
    allowed = [f"{sec}.{k}" if sec else k for sec in sections or ("",)
               for k in (Config.model_fields[sec].annotation if sec else section_model).model_fields]
    keys, fields, errors = {}, {}, []
    for n, column in enumerate(header):
        key = _sweep_column(column, sections) if sections else column
        field = _field_path(section_model, key) if key else None
        if column in header[:n]:
            errors.append(f"{path}: column '{column}' appears twice in the header")
        elif field is None or _is_model(_inner(field.annotation)):
            both = [sec for sec in sections if column in Config.model_fields[sec].annotation.model_fields]
            errors.append(f"{path}: column '{column}' " + (
                f"is a key of both {' and '.join(both)}: write {' or '.join(f'{sec}.{column}' for sec in both)}"
                if len(both) > 1 else f"is not a key of {where} (allowed: {', '.join(allowed)})"
                + _separator_hint(column, kind)))
        else:
            keys[column], fields[column] = key, field
    prefix = "" if section_model is Config else f"{where}."
    rows, seen = [], {}
    # The rows are checked on the good columns even when a column is bad, so that one run
    # reports every error; but rows read without a bad column may differ only in it.
    complete = len(keys) == len(header)
    for i, cells in enumerate(records, start=1):
        record = {column: cell for column, cell in zip(header, cells) if column in keys}
        try:
            row = _typed_row(path, i, record, keys, fields)
            key = repr(sorted(row.items()))
            if complete and key in seen:
                raise ConfigError(f"{path}: row {i} repeats row {seen[key]}")
            seen[key] = i
            if base is not None:
                merged = _deep_update(base.model_dump(), {prefix + k: v for k, v in row.items()})
                try:
                    Config.model_validate(merged)
                except ValidationError as exc:
                    raise ConfigError(error_line(exc, f"{path}: row {i}")) from None
            rows.append(row)
        except ConfigError as exc:
            errors.append(str(exc))
    if errors:
        raise ConfigError("\n".join(errors))
    return rows


def _sweep_column(column: str, sections: tuple[str, ...]) -> str | None:
    """'section.key' for a column that is one (dotted, or bare in exactly one section); else None."""
    if "." in column:
        return column if column.split(".", 1)[0] in sections else None
    owners = [sec for sec in sections if column in Config.model_fields[sec].annotation.model_fields]
    return f"{owners[0]}.{column}" if len(owners) == 1 else None


def _typed_row(path: Path, i: int, record: dict[str, str], keys: dict[str, str],
               fields: dict[str, FieldInfo]) -> dict[str, Any]:
    row = {}
    for column, raw in record.items():
        field = fields[column]
        if raw.strip() == "":
            raise ConfigError(f"{path}: row {i} column '{column}' is empty")
        value: Any = raw.strip()
        if typing.get_origin(field.annotation) is list:
            value = [v.strip() for v in value.replace(">", ",").split(",") if v.strip()]
        adapter = TypeAdapter(typing.Annotated[field.annotation, *field.metadata]
                              if field.metadata else field.annotation)
        try:
            row[keys[column]] = adapter.validate_python(value)
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            raise ConfigError(f"{path}: row {i} column '{column}': expected "
                              f"{err['msg'].removeprefix('Input should be ')}, got {raw!r}") from None
    return row


def _deep_update(base: dict, row: dict[str, Any]) -> dict:
    out = copy.deepcopy(base)
    for column, value in row.items():
        target = out
        *parents, leaf = column.split(".")
        for p in parents:
            target = target.setdefault(p, {})
        target[leaf] = value
    return out


def json_schema() -> dict:
    schema = Config.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
