"""The Colab notebook, run top to bottom in a real Jupyter kernel inside this checkout, as a
student would press Run all, on the tiny PhoGPT: a cell inserted after the `parameters` cell
swaps the model, the data and the recipe for the README's tiny one (papermill's convention)."""
import base64
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")

NOTEBOOK = os.path.join(ROOT, "notebooks", "phogpt_colab.ipynb")
TINY_DATA = "data/faq_tiny_vi.jsonl"

# As in test_notebook.py: the kernel runs from a process of its own, so that ipykernel is never
# imported into pytest's process (the scripts other tests import would think they are in a
# notebook).
EXECUTE = """
import sys, nbclient, nbformat
path, folder, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3])
notebook = nbformat.read(path, as_version=4)
try:
    # As Run all: the first cell that fails stops the run.
    nbclient.NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": folder}}).execute()
except nbclient.exceptions.CellExecutionError:
    pass
nbformat.write(notebook, path)
"""


def run_all(folder, overrides):
    """The notebook after Run all, with `overrides` in a cell right after the parameters cell."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    index = next(i for i, c in enumerate(notebook.cells) if c.cell_type == "code")
    notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(overrides))
    path = os.path.join(folder, "run.ipynb")
    nbformat.write(notebook, path)
    # Jupyter opened on notebooks/phogpt_colab.ipynb starts its kernel in notebooks/.
    # Offline, and one thread per process on a shared CPU, as test_phogpt_qlora.py runs the scripts.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    run = subprocess.run([sys.executable, "-c", EXECUTE, path, os.path.join(ROOT, "notebooks"),
                          "600"], capture_output=True, text=True, timeout=900, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    return nbformat.read(path, as_version=4)


def errors(cell):
    return [o for o in cell.get("outputs", []) if o.output_type == "error"]


def tiny_rows():
    with open(os.path.join(ROOT, TINY_DATA), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def text_of(cell):
    outputs = cell.get("outputs", [])
    return "".join(o.get("text", "") for o in outputs if o.output_type == "stream")


def tagged(notebook, tag):
    cells = [c for c in notebook.cells if tag in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"one cell tagged {tag!r} expected, found {len(cells)}"
    return cells[0]


def test_notebook_is_committed_clean():
    """Outputs cleared, an Open in Colab badge first, the parameters cell the first code cell."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert "parameters" in code[0].metadata.get("tags", [])
    for knob in ("model", "data", "epochs", "lr"):
        assert f"\n{knob} = " in "\n" + code[0].source
    badge = notebook.cells[0].source
    assert notebook.cells[0].cell_type == "markdown"
    assert "colab-badge.svg" in badge
    assert "colab.research.google.com/github/" in badge
    assert "notebooks/phogpt_colab.ipynb" in badge


@pytest.fixture(scope="module")
def ran(tiny_phogpt, tmp_path_factory):
    """The notebook after Run all on the tiny PhoGPT; the folders it wrote."""
    folder = tmp_path_factory.mktemp("colab")
    adapter, export = str(folder / "tiny-adapter"), str(folder / "tiny-export")
    questions = [row["prompt"] for row in tiny_rows()[:3]]
    # llama.cpp's quantiser needs wider rows than the tiny model has: f32, as in test_notebook.py.
    can_gguf = all(importlib.util.find_spec(m) for m in ("gguf", "llama_cpp"))
    # Two of the tiny answers asked in other words: a held-out set that costs little to evaluate.
    held_out = folder / "rephrased.jsonl"
    answers = [row["response"] for row in tiny_rows()]
    rows = [{"prompt": "Số hotline tư vấn của trung tâm là gì?", "response": answers[0]},
            {"prompt": "Học viên có được dùng Wi-Fi không?", "response": answers[2]}]
    held_out.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows),
                        encoding="utf-8")
    overrides = "\n".join([
        f"model = {tiny_phogpt!r}",
        f"data = {TINY_DATA!r}",
        f"eval_data = {str(held_out)!r}",
        # The README's tiny recipe with 150 epochs, as test_phogpt_qlora.py trains: 100 leave this
        # session's tiny model (its tokenizer is trained on other text) at 4 of 6 answers.
        "epochs = 150",
        "lr = 1e-2",
        f"questions = {questions!r}",
        f"output = {adapter!r}",
        f"export_dir = {export!r}",
        f"gguf = {'f32' if can_gguf else 'none'!r}",
    ])
    notebook = run_all(folder, overrides)
    for cell in notebook.cells:
        assert not errors(cell), (f"cell {cell.source[:80]!r} ended with {errors(cell)[0].ename}: "
                                  f"{errors(cell)[0].evalue}\n{text_of(cell)[-2000:]}")
    return notebook, adapter, export


def test_after_training_the_notebook_gives_the_trained_answers(ran):
    notebook, adapter, export = ran
    before = text_of(tagged(notebook, "answers-before"))
    assert before.count("Đáp: ") == 3
    # The base, random weights: none of the answers it has yet to learn.
    assert not any(row["response"] in before for row in tiny_rows())
    shown = text_of(tagged(notebook, "answers-after"))
    for row in tiny_rows()[:3]:
        assert f"Hỏi: {row['prompt']}\nĐáp: {row['response']}\n" in shown
    with open(os.path.join(adapter, "training_summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    recall = summary["recall"]
    assert f"{recall['exact']}/{recall['total']}" in shown
    held_out = summary["eval"]["recall"]
    assert held_out["total"] == 2
    assert f"trả lời đúng từng chữ: {held_out['exact']}/2" in shown


def test_the_loss_curve_is_shown_inline(ran):
    notebook, adapter, export = ran
    images = [o.data["image/png"] for o in tagged(notebook, "loss-curve").outputs
              if "image/png" in o.get("data", {})]
    with open(os.path.join(adapter, "loss_curve.png"), "rb") as f:
        assert images == [base64.b64encode(f.read()).decode()]


def test_the_export_cell_writes_a_gguf(ran):
    pytest.importorskip("gguf")
    pytest.importorskip("llama_cpp")
    notebook, adapter, export = ran
    assert [name for name in os.listdir(export) if name.endswith(".gguf")]
    assert "ollama create" in "".join(text_of(cell) for cell in notebook.cells)


def test_a_failing_step_stops_run_all_with_the_scripts_own_line(tiny_phogpt, tmp_path):
    notebook = run_all(tmp_path, f"model = {tiny_phogpt!r}\ndata = 'data/no_such_file.jsonl'")
    failed = [i for i, cell in enumerate(notebook.cells) if errors(cell)]
    assert len(failed) == 1
    cell = notebook.cells[failed[0]]
    assert "--dry-run" in cell.source
    assert "error: data/no_such_file.jsonl: file not found" in text_of(cell)
    # One line, no traceback through the notebook's helper.
    assert errors(cell)[0].traceback == [
        "Dừng ở đây: phogpt_qlora.py thoát với mã 1; dòng error: ở trên nói cách sửa"]
    assert not any(c.get("outputs") for c in notebook.cells[failed[0] + 1:])
