"""Every script, pasted whole into one notebook cell, runs in a real Jupyter kernel whose working folder
is a clone of the repo (the README's Colab recipe). A student changes a knob by editing the default on
the script's first screen; the tests do the same by replacing that literal default."""
import os

import pytest

from conftest import ROOT

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")


def run_pasted(script, edits=None, timeout=600):
    """Paste script (with edits: {old text: new text}) into one cell, run it, return its text output."""
    with open(os.path.join(ROOT, script), encoding="utf-8") as f:
        source = f.read()
    for old, new in (edits or {}).items():
        assert source.count(old) == 1, f"{old!r} is not one literal default in {script}"
        source = source.replace(old, new)
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    client = nbclient.NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                                     resources={"metadata": {"path": ROOT}})
    client.execute()
    outputs = notebook.cells[0].outputs
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, f"{script} ended with {errors[0].ename}: {errors[0].evalue}"
    return "".join(o.get("text", "") for o in outputs if o.output_type == "stream")


def test_onechat_tiny_runs_pasted_into_a_notebook():
    out = run_pasted("onechat_tiny.py")
    assert "Công ty BICweb kính chào quý khách!" in out
