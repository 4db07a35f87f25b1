"""Config sections as command-line flags, both ways: `add_section` makes a section's flags for
the CLI, `render_flags` writes a section back as flags for the Snakemake rules. Both are made
from the typed config, so the CLI, the config file and the rules cannot drift apart."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import typing
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel

from calm.config import ModelConfig
from calm.config.baselines import BaselinesConfig


# argparse flags of the CLI's commands: (name or names, argparse keywords)
Flag = tuple[str | tuple[str, ...], dict[str, Any]]

# name -> (help, flags, whether it opens the model, config sections as flags, the function it runs)
COMMANDS: dict[str, tuple[str, tuple, bool, tuple, Callable]] = {}


def command(name: str, help_: str, *flags: Flag, model: bool = False, sections: tuple = ()):
    """Register the decorated function as `python -m calm NAME`: each flag is (name or names,
    argparse keywords); model=True adds the model flags (calm.flags.add_model); each section is
    (section class, prefix, excluded fields), whose fields become flags."""
    def register(run: Callable) -> Callable:
        COMMANDS[name] = (help_, flags, model, sections, run)
        return run
    return register


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The CLI's parser: a sub-command per registered command, with its flags."""
    out = argparse.ArgumentParser(prog=prog, description=description)
    sub = out.add_subparsers(dest="command", required=True, metavar="<stage>")
    for name, (help_, flags, model, sections, run) in COMMANDS.items():
        # argparse %-formats the help it lists under `python -m calm --help`
        p = sub.add_parser(name, help=help_.replace("%", "%%"), description=help_)
        p.set_defaults(func=run)
        if model:
            add_model(p)
        for names, kwargs in flags:
            p.add_argument(*((names,) if isinstance(names, str) else names), **kwargs)
        for section, prefix, exclude in sections:
            add_section(p, section, prefix=prefix, exclude=exclude)
    return out


def path(flag: str, help_: str | None = None, **kwargs) -> Flag:
    """A required path."""
    return flag, {"required": True, "type": Path, **({"help": help_} if help_ else {}), **kwargs}


class OutFolder(type(Path())):
    """A folder --out: before any work, calm.cli's main() checks that the stage may replace it (calm.io)."""


def out(help_: str | None = None, flag: str = "--out", folder: bool = False) -> Flag:
    return path(flag, help_, **({"type": OutFolder} if folder else {}))


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def several(flag: str, help_: str) -> Flag:
    """A required flag of one or more values (TASK=PATH pairs and the like)."""
    return flag, {"required": True, "nargs": "+", "help": help_}


def _flag(prefix: str, name: str) -> str:
    return "--" + (prefix + name).replace("_", "-")


def add_section(parser: argparse.ArgumentParser, section: type[BaseModel], prefix: str = "",
                exclude: tuple[str, ...] = ()) -> None:
    group = parser.add_argument_group(f"{section.__name__} ({prefix.rstrip('_') or 'settings'})")
    for name, field in section.model_fields.items():
        if name in exclude:
            continue
        ann = field.annotation
        origin = typing.get_origin(ann)
        kwargs: dict[str, Any] = {"dest": prefix + name, "help": field.description or ""}
        required = field.is_required()
        default = None if required else field.get_default(call_default_factory=True)
        if origin is Literal:
            kwargs.update(choices=list(typing.get_args(ann)), type=str)
        elif origin is list:
            item = typing.get_args(ann)[0]
            kwargs.update(type=lambda s, item=item: [item(x) for x in s.split(",") if x], metavar="A,B,...")
        elif ann is bool:
            kwargs.update(type=parse_bool, metavar="true|false")
        elif ann in (int, float, str):
            kwargs.update(type=ann)
        else:
            continue  # nested sections are not flags
        if required:
            kwargs["required"] = True
        else:
            kwargs["default"] = default
            kwargs["help"] += f" (default: {default})"
        group.add_argument(_flag(prefix, name), **kwargs)


def section_from(args: argparse.Namespace, section: type[BaseModel], prefix: str = "") -> Any:
    return section(**{n: getattr(args, prefix + n) for n in section.model_fields})


_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def parse_bool(text: str) -> bool:
    """true/false (also 1/0, yes/no, any case); anything else is an error, not False."""
    if text.lower() not in _BOOLS:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return _BOOLS[text.lower()]


def render_flags(section: BaseModel, prefix: str = "", exclude: tuple[str, ...] = ()) -> str:
    """The flags that reproduce `section` on the command line (used by the Snakemake rules)."""
    parts = []
    for name in type(section).model_fields:
        if name in exclude:
            continue
        value = getattr(section, name)
        if isinstance(value, BaseModel) or isinstance(value, dict):
            continue
        if isinstance(value, list):
            value = ",".join(str(v) for v in value)
        # "" rather than shlex's '' for an empty value: the same to a shell, and the rules' params
        # (so a finished run's jobs) stay as they were before values were shell-quoted.
        text = str(value)
        parts.append(f"{_flag(prefix, name)} {shlex.quote(text) if text else chr(34) * 2}")
    return " ".join(parts)


def interpreter_first_on_path() -> None:
    """Make `python` in job shells the interpreter running this process (for Snakemake)."""
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


# --- the argument groups several commands share ------------------------------------------------

def add_runtime(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="matmul precision (config key `precision`; the workflow passes it)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default: 2)")


def add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pretrained", required=True, type=Path, help="pretrained checkpoint folder")
    add_section(p, ModelConfig, prefix="model_", exclude=("source",))
    add_runtime(p)


def pairs(values: list[str], what: str) -> dict[str, str]:
    out = {}
    for v in values:
        key, sep, val = v.rpartition("=")  # row names may hold "=" (λ=0.3), paths do not
        if not sep:
            raise SystemExit(f"{what}: expected TASK=PATH, got '{v}'")
        out[key] = val
    return out


def model_section(args: argparse.Namespace) -> ModelConfig:
    """The model settings given as flags (the dict-valued keys are not flags)."""
    return ModelConfig(**{n: getattr(args, "model_" + n) for n in ModelConfig.model_fields
                                 if hasattr(args, "model_" + n)})


# the per-method sections of BaselinesConfig (ties, adamerging, ...), each flagged with its prefix
BASELINE_SECTIONS = tuple((field.annotation, f"{name}_", ()) for name, field in BaselinesConfig.model_fields.items()
                          if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel))


def baselines_config(args: argparse.Namespace) -> BaselinesConfig:
    """The baselines' settings given as flags (--lam: task arithmetic's λ, where a command has it)."""
    return BaselinesConfig(task_arithmetic_lambda=getattr(args, "lam", 0.3), **{
        prefix[:-1]: section_from(args, cls, prefix=prefix) for cls, prefix, _ in BASELINE_SECTIONS})


def records(values: list[str], what: str, key: str, fields: tuple[str, ...]) -> list[dict]:
    """KEY=A,B,... arguments as dicts: `key` "task" reads TASK=…; "step:task" reads K:TASK=…
    (K an integer)."""
    shape = f"{key.upper()}={','.join(f.upper() for f in fields)}"
    out = []
    for v in values:
        head, _, rest = v.partition("=")
        parts = rest.split(",")
        keys = head.split(":") if ":" in key else [head]
        if len(parts) != len(fields) or len(keys) != len(key.split(":")) or not all(keys) or (
                ":" in key and not keys[0].isdigit()):
            raise SystemExit(f"{what}: expected {shape}, got '{v}'")
        values_of_key = [int(keys[0]), keys[1]] if ":" in key else keys
        out.append({**dict(zip(key.split(":"), values_of_key)), **dict(zip(fields, parts))})
    return out


def json_arg(text: str, what: str) -> Any:
    """A flag's JSON value; a malformed one is a one-line error naming the flag."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"{what}: not JSON ({exc})") from None
