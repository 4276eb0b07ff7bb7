"""Every script checks every flag before any work: a zero, a negative or an absurd number, and a
bogus choice, each get one line that names the flag, and exit 1. Values a flag accepts on
purpose are listed in ACCEPTED, with the reason. Each script runs offline, in a process of its
own that tries every case in turn (fast: torch is imported once per script, not once per case)."""
import json
import os
import subprocess
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
    ("--max-steps", "0"): "0 means: use --epochs",
    ("--recall-limit", "0"): "0 means: check every answer",
    ("--recall-limit", "-1"): "-1 means: check none",
    ("--recall-limit", "1000000000000"): "more than there are: check all",
    ("--save-steps", "1000000000000"): "save only at the end and on Ctrl+C",
    ("--logging-steps", "0"): "0 means: adapt to the run's length",
    ("--logging-steps", "1000000000000"): "log only at the end",
}

# Runs in a fresh process: takes the script's parser without running the script, then runs the
# script once per case and reports (flag, value, exit code, stderr) as JSON lines.
DRIVER = r'''
import argparse, contextlib, io, json, os, runpy, sys
script, accepted = sys.argv[1], {tuple(pair) for pair in json.loads(sys.argv[2])}
absurd = {int: "1000000000000", float: "1e12"}

class Parsed(Exception):
    pass

def grab(self, *args, **kwargs):
    raise Parsed(self)

real_parse_args = argparse.ArgumentParser.parse_args
argparse.ArgumentParser.parse_args = grab
try:
    runpy.run_path(script, run_name="__main__")
except Parsed as parsed:
    parser = parsed.args[0]
argparse.ArgumentParser.parse_args = real_parse_args

cases = []
for action in parser._actions:
    if not action.option_strings or action.nargs == 0 or action.help == argparse.SUPPRESS:
        continue
    flag = max(action.option_strings, key=len)
    if action.choices:
        cases.append((flag, "bogus-choice"))
    # plumbing.between(low, high, kind) types carry their kind's name.
    elif getattr(action.type, "__name__", "") in ("int", "float"):
        kind = int if action.type.__name__ == "int" else float
        cases += [(flag, v) for v in ("0", "-1", absurd[kind]) if (flag, v) not in accepted]
cases.append(("--no-such-flag", None))

for flag, value in cases:
    sys.argv = [script, flag] + ([value] if value is not None else [])
    err, code = io.StringIO(), 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as exit_:
            code = exit_.code
        except BaseException as error:
            code = f"traceback {type(error).__name__}: {str(error)[:200]}"
    message = err.getvalue()
    if isinstance(code, str) and not code.startswith("traceback"):
        message, code = message + code + "\n", 1
    print(json.dumps([flag, value, code, message]), flush=True)
'''


@pytest.mark.parametrize("script", [s for s in SCRIPTS if os.path.exists(os.path.join(ROOT, s))])
def test_every_bad_flag_value_gets_one_line_naming_the_flag(script):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", DRIVER, script, json.dumps(list(ACCEPTED))],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    results = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("[")]
    assert len(results) >= 3, out.stderr[-2000:]
    problems = []
    for flag, value, code, message in results:
        lines = message.strip().splitlines()
        one_line = len(lines) == 1 and lines[0].startswith("error:")
        if code != 1 or not one_line or flag not in lines[0]:
            said = message.strip()[-300:]
            problems.append(f"{script} {flag} {value}: exit {code}, stderr {said!r}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("script", [s for s in SCRIPTS if os.path.exists(os.path.join(ROOT, s))])
def test_help_shows_defaults_without_importing_torch(script):
    """--help is instant: the flags are parsed before torch (seconds to import) is loaded."""
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
