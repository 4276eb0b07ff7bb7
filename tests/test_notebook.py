"""Every script, pasted whole into one notebook cell, runs in a real Jupyter kernel whose working
folder is a clone of the repo (the README's Colab recipe). A student changes a knob by editing
the default on the script's first screen; the tests do the same by replacing that literal
default."""
import os
import subprocess
import sys
import tempfile

import pytest

from conftest import ROOT

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")

# The kernel runs from a process of its own: running one from pytest's process would import
# ipykernel here, and the scripts that other tests run in this process would think they are
# in a notebook.
EXECUTE = """
import sys, nbclient, nbformat
path, folder, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3])
notebook = nbformat.read(path, as_version=4)
nbclient.NotebookClient(notebook, timeout=timeout, kernel_name="python3", allow_errors=True,
                        resources={"metadata": {"path": folder}}).execute()
nbformat.write(notebook, path)
"""


def run_pasted(script, edits=None, timeout=600):
    """Paste script, with edits {old text: new text}, into one cell; run it; return its output."""
    with open(os.path.join(ROOT, script), encoding="utf-8") as f:
        source = f.read()
    for old, new in (edits or {}).items():
        assert source.count(old) == 1, f"{old!r} is not one literal default in {script}"
        source = source.replace(old, new)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "pasted.ipynb")
        notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
        nbformat.write(notebook, path)
        run = subprocess.run([sys.executable, "-c", EXECUTE, path, ROOT, str(timeout)],
                             capture_output=True, text=True, timeout=timeout + 60)
        assert run.returncode == 0, run.stderr[-2000:]
        outputs = nbformat.read(path, as_version=4).cells[0].outputs
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, f"{script} ended with {errors[0].ename}: {errors[0].evalue}"
    return "".join(o.get("text", "") for o in outputs if o.output_type == "stream")


def test_onechat_tiny_runs_pasted_into_a_notebook():
    out = run_pasted("onechat_tiny.py")
    assert "Công ty BICweb kính chào quý khách!" in out


@pytest.fixture(scope="module")
def pasted_runs(tmp_path_factory):
    """The offline tour, each script pasted into its own kernel: a tiny PhoGPT, then an adapter."""
    folder = tmp_path_factory.mktemp("notebook")
    tiny, adapter = str(folder / "tiny-phogpt"), str(folder / "tiny-adapter")
    outputs = {"tiny": run_pasted("tiny_phogpt.py", {'default="tiny-phogpt"': f'default="{tiny}"'})}
    outputs["qlora"] = run_pasted("phogpt_qlora.py", {
        'default="vinai/PhoGPT-4B-Chat"': f'default="{tiny}"',
        'default="data/faq_vi.jsonl"': 'default="data/faq_tiny_vi.jsonl"',
        'default="phogpt-adapter"': f'default="{adapter}"',
        "default=30,": "default=3,"})
    return folder, tiny, adapter, outputs


def test_tiny_phogpt_and_qlora_run_pasted_into_a_notebook(pasted_runs):
    folder, tiny, adapter, outputs = pasted_runs
    assert os.path.exists(os.path.join(tiny, "model.safetensors"))
    assert "answered" in outputs["qlora"]
    assert os.path.exists(os.path.join(adapter, "adapter_model.safetensors"))
    assert os.path.exists(os.path.join(adapter, "training_summary.json"))


def test_chat_runs_pasted_into_a_notebook(pasted_runs):
    folder, tiny, adapter, outputs = pasted_runs
    out = run_pasted("phogpt_chat.py", {
        '"--adapter", default="none"': f'"--adapter", default="{adapter}"',
        '"--prompt", default=""': '"--prompt", default="Xin chào"',
        '"--temperature", type=between(0, 10), default=1.0':
            '"--temperature", type=between(0, 10), default=0.0'})
    assert out.strip()


def test_dpo_runs_pasted_into_a_notebook(pasted_runs):
    folder, tiny, adapter, outputs = pasted_runs
    out = run_pasted("phogpt_dpo.py", {
        'default="phogpt-adapter"': f'default="{adapter}"',
        'default="phogpt-dpo"': f'default="{folder / "tiny-dpo"}"',
        "default=3, help": "default=1, help"})
    assert "log p(chosen)" in out
    assert os.path.exists(folder / "tiny-dpo" / "adapter_model.safetensors")


def test_export_runs_pasted_into_a_notebook(pasted_runs):
    pytest.importorskip("gguf")
    folder, tiny, adapter, outputs = pasted_runs
    run_pasted("phogpt_export.py", {
        '"--adapter", default="none"': f'"--adapter", default="{adapter}"',
        'default="phogpt-export"': f'default="{folder / "export"}"',
        'default="q4_k_m"': 'default="f32"'})
    assert any(name.endswith(".gguf") for name in os.listdir(folder / "export"))
