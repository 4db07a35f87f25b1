"""The thin CLI: the flags the Snakemake rules render go through a real shell and come back
as the same settings."""
from __future__ import annotations

import argparse
import subprocess

import pytest

from calm.flags import add_section, parse_bool, render_flags, section_from
from calm.config import Section


class Opts(Section):
    name: str = "x"
    flag: bool = False
    lr: float = 1.0
    tasks: list[str] = []


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(exit_on_error=False)
    add_section(p, Opts)
    return p


def test_rendered_flags_survive_a_real_shell():
    # $HOME, quotes and spaces: a shell expands $ inside double quotes (JSON's quoting), not single.
    opts = Opts(name='it\'s a "test" of $HOME and `date`', flag=True, lr=0.5, tasks=["a", "b"])
    line = render_flags(opts)
    argv = subprocess.run(["bash", "-c", f"printf '%s\\0' {line}"], capture_output=True, text=True,
                          check=True).stdout.split("\0")[:-1]
    assert section_from(parser().parse_args(argv), Opts) == opts


def test_an_empty_string_is_one_argument():
    argv = subprocess.run(["bash", "-c", f"printf '%s\\0' {render_flags(Opts(name=''))}"], capture_output=True,
                          text=True, check=True).stdout.split("\0")[:-1]
    assert argv[:2] == ["--name", ""]


@pytest.mark.parametrize("text, value", [("true", True), ("True", True), ("1", True), ("yes", True),
                                         ("false", False), ("False", False), ("0", False), ("no", False)])
def test_bool_flags_read_true_and_false(text, value):
    assert parse_bool(text) is value
    assert parser().parse_args(["--flag", text]).flag is value


def test_a_bool_flag_refuses_a_word_it_does_not_know():
    with pytest.raises(argparse.ArgumentError, match="expected true or false, got 'treu'"):
        parser().parse_args(["--flag", "treu"])
