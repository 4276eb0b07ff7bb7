"""Bad input, family by family: each case ends in exit 1 with one line that names the file, row or
flag and says how to fix it (no traceback), or is handled correctly. Nothing is trained from data
that --dry-run would call wrong. The cases of a script run in one process of its own, one after
another (torch is imported once), as a user would type them."""
import json
import os
import subprocess
import sys
import unicodedata

import pytest

from conftest import ROOT

# Runs each case's argv through the script as __main__, and reports (exit code, stderr) as JSON.
DRIVER = r'''
import contextlib, io, json, os, runpy, sys
script, cases = sys.argv[1], json.loads(sys.argv[2])
# As `python script.py` would: the script's folder is where its modules are found.
sys.path.insert(0, os.path.dirname(script))
for argv in cases:
    sys.argv = [script] + argv
    err, code = io.StringIO(), 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as exit_:
            code = exit_.code
        except BaseException as error:
            code = f"traceback {type(error).__name__}: {str(error)[:300]}"
    message = err.getvalue()
    if isinstance(code, str) and not code.startswith("traceback"):
        message, code = message + code + "\n", 1
    print(json.dumps([argv, code, message]), flush=True)
'''


def run_cases(script, cases, cwd):
    """[(argv, code, stderr)] for each argv, run in one process from cwd."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONIOENCODING="utf-8")
    out = subprocess.run([sys.executable, "-c", DRIVER, os.path.join(ROOT, script),
                          json.dumps(cases)], capture_output=True, text=True, cwd=cwd, env=env,
                         timeout=900)
    results = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("[")]
    assert len(results) == len(cases), out.stderr[-3000:]
    return results


def one_line_problems(results, expected):
    """What is wrong with each result, against (code, [substrings of the error line])."""
    problems = []
    for (argv, code, message), (want_code, words) in zip(results, expected):
        lines = message.strip().splitlines()
        if want_code == 0:
            if code != 0:
                problems.append(f"{argv}: exit {code}, wanted success: {message[-400:]!r}")
            continue
        # Notices may come first ("loading ..."); the error is the last line, and alone.
        errors = [line for line in lines if line.startswith("error:")]
        one_line = (len(errors) == 1 and lines[-1] == errors[0] and "fix" in errors[0]
                    and "Traceback" not in message)
        missing = [word for word in words if one_line and word not in errors[0]]
        if code != 1 or not one_line or missing:
            problems.append(f"{argv}: exit {code}, missing {missing}, said {message[-500:]!r}")
    return problems


QA = '{"question": "Trung tâm ở đâu?", "answer": "Ở Đà Nẵng."}\n'
# name -> (file name, bytes, words the error line must hold); [] a case read as meant (exit 0);
# None: either read as meant or refused in one line.
DATA_FILES = {
    "csv field over 128 KB": ("long.csv", b'question,answer\nHi,"' + b"x" * 200_000 + b'"\n',
                              None),
    "half an emoji": ("half.jsonl", b'{"question": "Vui \\ud83d", "answer": "Ok."}\n',
                      ["half.jsonl:1"]),
    "100,000 nested brackets": ("deep.jsonl", b"[" * 100_000 + b"]" * 100_000 + b"\n",
                                ["deep.jsonl:1"]),
    "a NUL byte": ("nul.jsonl", b'{"question": "a\\u0000b", "answer": "Ok."}\n', ["nul.jsonl:1"]),
    "a duplicated key": ("dup.jsonl", b'{"question": "a", "answer": "b", "answer": "c"}\n',
                         ["dup.jsonl:1", "answer"]),
    "an invisible answer": ("blank.jsonl", '{"question": "a", "answer": "\u200b"}\n'.encode(),
                            ["blank.jsonl:1", "answer"]),
    # Excel in a Vietnamese locale writes ';' between fields: read as it is meant.
    "a semicolon CSV": ("semi.csv", "question;answer\nTrung tâm ở đâu?;Ở Đà Nẵng.\n".encode(),
                        []),
    "a NUL byte in a CSV": ("nul.csv", b"question,answer\na\x00b,Ok.\n", ["nul.csv:2"]),
    "a hidden turn marker": ("marker.jsonl", '{"question": "a", "answer": "###\u200b Câu hỏi: b"}\n'
                             .encode(), ["marker.jsonl:1"]),
}


@pytest.mark.parametrize("script", ["phogpt_qlora.py"])
def test_bad_data_files_get_one_line_with_the_row(script, tiny_phogpt, tmp_path):
    cases, expected = [], []
    for name, content, words in DATA_FILES.values():
        (tmp_path / name).write_bytes(content)
        cases.append(["--model", tiny_phogpt, "--data", name, "--dry-run"])
        expected.append((0, []) if words == [] else (1, words or [name]))
    # A symlink loop, and a Mac file name (NFD) typed exactly as it is on disk: that one opens.
    os.symlink("loop.jsonl", tmp_path / "loop.jsonl")
    cases.append(["--model", tiny_phogpt, "--data", "loop.jsonl", "--dry-run"])
    expected.append((1, ["loop.jsonl"]))
    mac_name = unicodedata.normalize("NFD", "dữ liệu.jsonl")
    (tmp_path / mac_name).write_text(QA * 3, encoding="utf-8")
    cases.append(["--model", tiny_phogpt, "--data", mac_name, "--dry-run"])
    expected.append((0, []))
    results = run_cases(script, cases, tmp_path)
    # The long CSV field may also be read as it is (it is then cut by --max-length).
    if results[0][1] == 0:
        expected[0] = (0, [])
    assert not one_line_problems(results, expected), "\n".join(
        one_line_problems(results, expected))


def test_what_the_model_would_learn_wrong_is_refused(tiny_phogpt, tmp_path):
    (tmp_path / "faq.jsonl").write_text(QA * 4, encoding="utf-8")
    cases = [
        # Every answer's </s> cut off: the model would learn never to stop.
        ["--model", tiny_phogpt, "--data", "faq.jsonl", "--max-length", "8", "--dry-run"],
        # A "held-out" score on the training data itself.
        ["--model", tiny_phogpt, "--data", "faq.jsonl", "--eval-data", "faq.jsonl", "--dry-run"],
    ]
    results = run_cases("phogpt_qlora.py", cases, tmp_path)
    expected = [(1, ["--max-length"]), (1, ["--eval-data"])]
    assert not one_line_problems(results, expected), "\n".join(
        one_line_problems(results, expected))


def test_a_newcomers_mistakes_get_the_fix(tiny_phogpt, tmp_path):
    (tmp_path / "faq.jsonl").write_text(QA * 4, encoding="utf-8")
    adapter = tmp_path / "tiny-adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "base_model_name_or_path": tiny_phogpt}),
        encoding="utf-8")
    cases = [
        # A typo in a flag: the flag meant is suggested.
        ["--epocs", "3", "--model", tiny_phogpt, "--data", "faq.jsonl", "--dry-run"],
        # An adapter folder given as the model.
        ["--model", "tiny-adapter", "--data", "faq.jsonl", "--dry-run"],
        # A hub id while offline: the offline tour is the way.
        ["--model", "vinai/PhoGPT-4B-Chat", "--data", "faq.jsonl", "--dry-run"],
    ]
    results = run_cases("phogpt_qlora.py", cases, tmp_path)
    expected = [(1, ["--epochs"]), (1, ["--adapter"]), (1, ["tiny_phogpt.py"])]
    assert not one_line_problems(results, expected), "\n".join(
        one_line_problems(results, expected))


def test_chatting_before_training_says_train_first(tiny_phogpt, tmp_path):
    cases = [["--model", tiny_phogpt, "--adapter", "phogpt-adapter", "--prompt", "Xin chào"]]
    results = run_cases("phogpt_chat.py", cases, tmp_path)
    expected = [(1, ["python phogpt_qlora.py"])]
    assert not one_line_problems(results, expected), "\n".join(
        one_line_problems(results, expected))


def damaged_copy(tiny_phogpt, folder, damage):
    """A copy of the tiny PhoGPT with one thing wrong in it."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(tiny_phogpt, folder)
    weights = load_file(os.path.join(folder, "model.safetensors"))
    name = sorted(weights)[0]
    if damage == "int8 weight":
        weights[name] = weights[name].to(torch.int8)
    elif damage == "NaN weight":
        weights[name] = torch.full_like(weights[name], float("nan"))
    elif damage == "wrong shape":
        weights[name] = weights[name][..., :-1].contiguous()
    if damage == "broken tokenizer.json":
        path = os.path.join(folder, "tokenizer.json")
        text = open(path, encoding="utf-8").read()
        open(path, "w", encoding="utf-8").write(text[: len(text) // 2])
    else:
        save_file(weights, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    return folder


LIES = ["int8 weight", "NaN weight", "wrong shape", "broken tokenizer.json"]


def test_a_model_folder_that_lies_is_caught_before_any_work(tiny_phogpt, tmp_path):
    cases = []
    for damage in LIES:
        folder = damaged_copy(tiny_phogpt, str(tmp_path / damage.replace(" ", "-")), damage)
        cases.append(["--model", folder, "--temperature", "0", "--max-new-tokens", "4",
                      "--prompt", "Xin chào"])
    results = run_cases("phogpt_chat.py", cases, tmp_path)
    expected = [(1, [damage.replace(" ", "-")]) for damage in LIES]
    assert not one_line_problems(results, expected), "\n".join(
        one_line_problems(results, expected))


# A folder nobody can write to (root may write anywhere, but not into /proc), and a folder
# inside a file: one line before any work, in every script that writes an --output.
UNWRITABLE = ["/proc/phogpt-test-output", "{tmp}/a-file.txt/bot"]


@pytest.mark.parametrize("script, flags", [
    ("tiny_phogpt.py", ["--data", os.path.join(ROOT, "data")]),
    ("onechat_tiny.py", ["--epochs", "1"]),
    ("phogpt_qlora.py", ["--model", "{model}", "--data", "{faq}", "--max-steps", "1"]),
])
def test_an_output_that_cannot_be_written_is_one_line(script, flags, tiny_phogpt, tmp_path):
    (tmp_path / "faq.jsonl").write_text(QA * 2, encoding="utf-8")
    (tmp_path / "a-file.txt").write_text("x", encoding="utf-8")
    fill = dict(model=tiny_phogpt, faq=str(tmp_path / "faq.jsonl"), tmp=tmp_path)
    cases = [[f.format(**fill) for f in flags] + ["--output", out.format(**fill)]
             for out in UNWRITABLE]
    results = run_cases(script, cases, tmp_path)
    expected = [(1, ["--output"])] * len(cases)
    assert not one_line_problems(results, expected), "\n".join(
        one_line_problems(results, expected))
    assert (tmp_path / "a-file.txt").read_text(encoding="utf-8") == "x"
