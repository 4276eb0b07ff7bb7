"""Every script checks every flag before any work: a zero, a negative or an absurd number, and a
bogus choice, each get one line that names the flag, and exit 1. Values a flag accepts on
purpose are listed in ACCEPTED, with the reason. The scripts run in this process (fast),
offline, as `python SCRIPT ...`."""
import argparse
import os
import runpy
import sys

import pytest

from conftest import ROOT

SCRIPTS = ["onechat_tiny.py", "tiny_phogpt.py", "phogpt_qlora.py", "phogpt_dpo.py",
           "phogpt_chat.py", "phogpt_export.py"]

# (flag, value) pairs that are valid on purpose, in every script that has the flag.
ACCEPTED = {
    ("--seed", "0"): "any integer is a seed",
    ("--seed", "-1"): "any integer is a seed",
    ("--seed", "1000000000000"): "any integer is a seed",
    ("--warmup-steps", "0"): "no warm-up",
    ("--lora-dropout", "0"): "no dropout",
    ("--temperature", "0"): "greedy decoding",
    ("--top-k", "0"): "sample among all tokens",
    ("--max-steps", "-1"): "-1 means: use --epochs",
    ("--recall-limit", "0"): "0 means: check every answer",
    ("--recall-limit", "-1"): "-1 means: check none",
    ("--recall-limit", "1000000000000"): "more than there are: check all",
    ("--save-steps", "1000000000000"): "save only at the end and on Ctrl+C",
    ("--logging-steps", "0"): "0 means: adapt to the run's length",
}
ABSURD = {int: "1000000000000", float: "1e12"}


class Parsed(Exception):
    """Raised instead of parsing, to take a script's parser without running the script."""


def parser_of(script, monkeypatch):
    def grab(self, *args, **kwargs):
        raise Parsed(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", grab)
    try:
        runpy.run_path(os.path.join(ROOT, script), run_name="__main__")
    except Parsed as parsed:
        return parsed.args[0]
    finally:
        monkeypatch.undo()
    raise AssertionError(f"{script} never parsed its flags")


def run_script(script, flags, monkeypatch, capsys):
    """Run a script in this process with flags; return (exit code, what it printed to stderr)."""
    monkeypatch.setattr(sys, "argv", [script, *flags])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = 0
    try:
        runpy.run_path(os.path.join(ROOT, script), run_name="__main__")
    except SystemExit as exit_:
        code = exit_.code
    except Exception as error:  # a traceback is what the user would have seen
        code = f"traceback {type(error).__name__}: {str(error)[:200]}"
    err = capsys.readouterr().err
    if isinstance(code, str) and not code.startswith("traceback"):
        err, code = err + code + "\n", 1
    return code, err


def cases(parser):
    for action in parser._actions:
        if not action.option_strings or action.nargs == 0 or action.help == argparse.SUPPRESS:
            continue
        flag = max(action.option_strings, key=len)
        if action.choices:
            yield flag, "bogus-choice"
        elif action.type in (int, float):
            for value in ("0", "-1", ABSURD[action.type]):
                if (flag, value) not in ACCEPTED:
                    yield flag, value


@pytest.mark.parametrize("script", [s for s in SCRIPTS if os.path.exists(os.path.join(ROOT, s))])
def test_every_bad_flag_value_gets_one_line_naming_the_flag(script, monkeypatch, capsys):
    parser = parser_of(script, monkeypatch)
    checked, problems = 0, []
    for flag, value in cases(parser):
        code, err = run_script(script, [flag, value], monkeypatch, capsys)
        lines = err.strip().splitlines()
        one_line = len(lines) == 1 and lines[0].startswith("error:")
        if code != 1 or not one_line or flag not in lines[0]:
            problems.append(f"{script} {flag} {value}: exit {code}, stderr {err.strip()[-300:]!r}")
        checked += 1
    assert checked >= 2
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("script", [s for s in SCRIPTS if os.path.exists(os.path.join(ROOT, s))])
def test_unknown_flag_is_one_line_and_exit_1(script, monkeypatch, capsys):
    code, err = run_script(script, ["--no-such-flag"], monkeypatch, capsys)
    assert code == 1
    assert err.strip().startswith("error:") and len(err.strip().splitlines()) == 1, err
    assert "--no-such-flag" in err


@pytest.mark.parametrize("script", [s for s in SCRIPTS if os.path.exists(os.path.join(ROOT, s))])
def test_help_shows_defaults_without_importing_torch(script):
    """--help is instant: the flags are parsed before torch (seconds to import) is loaded."""
    import subprocess
    code = ("import runpy, sys\n"
            f"sys.argv = [{script!r}, '--help']\n"
            "try:\n"
            f"    runpy.run_path({script!r}, run_name='__main__')\n"
            "except SystemExit:\n"
            "    pass\n"
            "print('torch imported:', 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    assert "torch imported: False" in out.stdout, out.stdout[-500:] + out.stderr[-500:]
    assert "(default:" in out.stdout
    assert "(default: None)" not in out.stdout
