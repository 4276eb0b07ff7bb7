"""Shared test fixtures: a tiny PhoGPT-4B-Chat-format checkpoint, built once per session (< 1 s)."""

import glob
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Tests import the top-level scripts and modules
sys.path.insert(0, ROOT)

import prompts  # noqa: E402
from tiny_phogpt import save_tiny_checkpoint  # noqa: E402


def _strings(value):
    """Every string inside a JSON value (a row of data/*.jsonl)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def tokenizer_texts():
    """Text the tiny tokenizer is trained on: data/*.jsonl plus prompts.py's template strings."""
    texts = [v for v in vars(prompts).values() if isinstance(v, str) and not v.startswith("__")]
    texts += list(prompts.STOP_STRINGS.values())
    texts += [
        "Xin chào! Tôi là PhoGPT, một trợ lý ảo tiếng Việt.",
        "Hà Nội là thủ đô của Việt Nam.",
    ]
    for name in sorted(glob.glob(os.path.join(ROOT, "data", "*.jsonl"))):
        with open(name, encoding="utf-8") as f:
            for line in f:
                try:
                    texts += list(_strings(json.loads(line)))
                except ValueError:
                    # A deliberately broken row is still text
                    texts.append(line)
    return [prompts.nfc(t) for t in texts]


@pytest.fixture(scope="session")
def tiny_phogpt(tmp_path_factory):
    """A tiny random PhoGPT-4B-Chat-format checkpoint: config.json, model.safetensors, tokenizer."""
    return save_tiny_checkpoint(str(tmp_path_factory.mktemp("tiny_phogpt")), tokenizer_texts())


# Tests that drive another program: CI runs them in one leg only (.ci/run, -m "not other_program").
OTHER_PROGRAM_FILES = {"test_chat_browser.py", "test_notebook.py", "test_colab_notebook.py"}


def count_block_forwards(monkeypatch):
    """A list that grows by one at each block's MLP forward: checkpointing runs them again."""
    import phogpt_model
    forward, calls = phogpt_model.MLP.forward, []

    def counted(self, x):
        calls.append(1)
        return forward(self, x)

    monkeypatch.setattr(phogpt_model.MLP, "forward", counted)
    return calls


def pytest_collection_modifyitems(items):
    for item in items:
        in_llama_cpp = item.path.name == "test_phogpt_export.py" and (
            "gguf" in item.name or "llama_cpp" in item.name)
        if item.path.name in OTHER_PROGRAM_FILES or in_llama_cpp:
            item.add_marker(pytest.mark.other_program)
