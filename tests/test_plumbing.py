"""plumbing.py: the output folder never loses a student's work. Each test is one way work was
lost before (issue 20), run as a student would: the script in a process of its own."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT

QLORA, DPO = os.path.join(ROOT, "phogpt_qlora.py"), os.path.join(ROOT, "phogpt_dpo.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
       "TOKENIZERS_PARALLELISM": "false"}
FAQ = os.path.join(ROOT, "data", "faq_tiny_vi.jsonl")
PAIRS = os.path.join(ROOT, "data", "dpo_vi.jsonl")
SHORT = ["--max-steps", "2", "--batch-size", "3", "--save-steps", "2", "--recall-limit", "-1"]

# A full disk or a kill during the final save (not during a checkpoint), for a script run
# by this wrapper: python -c WRAPPER how script args...
WRAPPER = r"""
import errno, os, runpy, signal, sys
import peft
how, script = sys.argv[1], sys.argv[2]
save = peft.PeftModel.save_pretrained
def failing_save(self, folder, *args, **kwargs):
    if "checkpoint-" not in str(folder):
        if how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise OSError(errno.ENOSPC, "No space left on device")
    return save(self, folder, *args, **kwargs)
peft.PeftModel.save_pretrained = failing_save
sys.argv = sys.argv[2:]
runpy.run_path(script, run_name="__main__")
"""


def run(script, *args, cwd=ROOT, wrapper=None):
    command = [sys.executable, script, *map(str, args)]
    if wrapper:
        command = [sys.executable, "-c", WRAPPER, wrapper, script, *map(str, args)]
    return subprocess.run(command, cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=600)


def one_error_line(done, *words):
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 1 and last.startswith("error: "), done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "fix:" in last, done.stderr[-2000:]
    for word in words:
        assert word in last, (word, last)


def snapshot(folder):
    """Every file under folder with its bytes: what must not change."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in Path(folder).rglob("*")
            if p.is_file()}


@pytest.fixture(scope="module")
def sft(tiny_phogpt, tmp_path_factory):
    """One short SFT run: an adapter made by a run of ours."""
    output = tmp_path_factory.mktemp("sft") / "adapter"
    done = run(QLORA, "--model", tiny_phogpt, "--data", FAQ, "--output", output, *SHORT)
    assert done.returncode == 0, done.stderr[-2000:]
    return output


@pytest.mark.parametrize("script", [QLORA, DPO])
def test_output_dot_with_overwrite_keeps_the_working_folder(tiny_phogpt, sft, tmp_path, script):
    # The student's folder: their thesis, a README.md, the data.
    (tmp_path / "thesis.txt").write_text("luận văn", encoding="utf-8")
    (tmp_path / "README.md").write_text("# Ghi chú của em", encoding="utf-8")
    data = tmp_path / "data.jsonl"
    data.write_bytes(Path(PAIRS if script == DPO else FAQ).read_bytes())
    before = snapshot(tmp_path)
    flags = ["--adapter", sft] if script == DPO else ["--model", tiny_phogpt]
    done = run(script, *flags, "--data", data, "--output", ".", "--overwrite", *SHORT[:2],
               cwd=tmp_path)
    one_error_line(done, "--output . holds the working folder")
    assert snapshot(tmp_path) == before


def test_output_that_is_or_holds_the_model_or_the_data_is_refused(tiny_phogpt, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    for path in Path(tiny_phogpt).iterdir():
        (model / path.name).write_bytes(path.read_bytes())
    # The data, with a notes file beside it.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("ghi chú", encoding="utf-8")
    data = tmp_path / "mine" / "faq.jsonl"
    data.write_bytes(Path(FAQ).read_bytes())
    before = snapshot(tmp_path)
    for output, flag in ((model, "--model"), (tmp_path / "mine", "--data")):
        done = run(QLORA, "--model", model, "--data", data, "--output", output, "--overwrite",
                   *SHORT)
        one_error_line(done, f"--output {output} holds {flag}")
    assert snapshot(tmp_path) == before


def test_dpo_into_the_base_model_folder_is_refused(tiny_phogpt, sft, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    for path in Path(tiny_phogpt).iterdir():
        (model / path.name).write_bytes(path.read_bytes())
    before = snapshot(model)
    done = run(DPO, "--adapter", sft, "--model", model, "--data", PAIRS, "--output", model,
               "--overwrite", "--max-steps", 1)
    one_error_line(done, f"--output {model} holds --model")
    assert snapshot(model) == before


def test_overwrite_replaces_only_a_run_of_ours(tiny_phogpt, tmp_path):
    output = tmp_path / "adapter"
    # The student's own OUTPUT.old and OUTPUT.partial, beside the output: never touched.
    for mine in ("adapter.old", "adapter.partial"):
        (tmp_path / mine).mkdir()
        (tmp_path / mine / "notes.txt").write_text("của em", encoding="utf-8")
    flags = ["--model", tiny_phogpt, "--data", FAQ, "--output", output, *SHORT]
    assert run(QLORA, *flags).returncode == 0
    first = (output / "adapter_model.safetensors").read_bytes()
    done = run(QLORA, *flags, "--overwrite", "--seed", 7)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (output / "adapter_model.safetensors").read_bytes() != first
    # Nothing left over under a fixed name, nor any temporary name of the run.
    assert not [p for p in output.iterdir() if ".partial" in p.name or ".old" in p.name]
    assert sorted(p.name for p in output.iterdir() if p.name.startswith(".")) == [
        ".phogpt-run.json", ".phogpt-run.lock"]
    for mine in ("adapter.old", "adapter.partial"):
        assert (tmp_path / mine / "notes.txt").read_text(encoding="utf-8") == "của em"
    # A file the student put in the folder makes it theirs too: --overwrite refuses.
    (output / "thesis.txt").write_text("luận văn", encoding="utf-8")
    one_error_line(run(QLORA, *flags, "--overwrite"), "thesis.txt", "no run of ours")
    assert (output / "thesis.txt").exists() and (output / "adapter_config.json").exists()


def test_a_second_training_into_a_folder_in_use_stops_at_once(tiny_phogpt, tmp_path):
    output = tmp_path / "adapter"
    flags = ["--model", tiny_phogpt, "--data", FAQ, "--output", output, "--max-steps", 5000,
             "--batch-size", 1, "--recall-limit", -1]
    first = subprocess.Popen([sys.executable, QLORA, *map(str, flags)], cwd=ROOT, env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        # The first run has read its data: it holds the folder.
        assert "examples from" in first.stdout.readline()
        started = time.time()
        second = run(QLORA, *flags)
        one_error_line(second, "is in use by another run")
        # Refused at once, before any model loads (torch's import is most of it).
        assert time.time() - started < 60
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=120)
    # Its lock went with it: the folder can be used again.
    again = run(QLORA, *flags[:6], "--overwrite", *SHORT)
    assert again.returncode == 0, again.stderr[-2000:]


@pytest.mark.parametrize("how", ["disk-full", "kill"])
@pytest.mark.parametrize("script", [QLORA, DPO])
def test_a_failed_final_save_is_finished_by_resume_without_training(tiny_phogpt, sft, tmp_path,
                                                                    how, script):
    output = tmp_path / "out"
    flags = ["--adapter", sft, "--data", PAIRS] if script == DPO else [
        "--model", tiny_phogpt, "--data", FAQ, "--recall-limit", -1]
    flags += ["--output", output, "--max-steps", 3, "--batch-size", 2, "--save-steps", 100]
    failed = run(script, *flags, wrapper=how)
    if how == "kill":
        assert failed.returncode == -signal.SIGKILL, failed.stderr[-2000:]
    else:
        # The error says how to finish: the same command with --resume.
        one_error_line(failed, "disk is full", "--resume")
    assert not (output / "adapter_config.json").exists()
    resumed = run(script, *flags, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # Nothing was trained again: no progress line, and the adapter is the final checkpoint's.
    assert " · loss " not in resumed.stdout, resumed.stdout
    assert (output / "adapter_model.safetensors").read_bytes() == (
        output / "checkpoint-3" / "adapter_model.safetensors").read_bytes()
    summary = json.loads((output / "training_summary.json").read_text(encoding="utf-8"))
    assert summary["steps"] == 3


# A notebook cell: the script pasted with --output edited to ".", in IPython as ipykernel runs it.
NOTEBOOK = r"""
import sys, types
sys.modules["ipykernel"] = types.ModuleType("ipykernel")
from IPython.core.interactiveshell import InteractiveShell
source = open(sys.argv[1], encoding="utf-8").read()
source = source.replace('default="phogpt-adapter"', 'default="."')
InteractiveShell.instance().run_cell(source)
"""


def test_in_a_notebook_an_error_is_one_line_naming_the_default_to_edit(tmp_path):
    pytest.importorskip("IPython")
    done = subprocess.run([sys.executable, "-c", NOTEBOOK, QLORA], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)
    shown = [line for line in (done.stdout + done.stderr).splitlines() if "error" in line]
    assert len(shown) == 1, done.stdout + done.stderr
    assert shown[0].startswith("error: output . holds the working folder"), shown
    assert "edit default= of --output on the script's first screen" in shown[0]
    assert "An exception has occurred" not in done.stdout + done.stderr


def test_bad_flags_get_one_line_with_the_range_or_the_closest_flag(tmp_path):
    done = run(QLORA, "--lr", "nan")
    one_error_line(done, "--lr must be between")
    done = run(QLORA, "--outptu", "x")
    one_error_line(done, "--outptu", "did you mean --output?")
