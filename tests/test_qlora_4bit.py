"""QLoRA itself on the CPU: a 4-bit (nf4) or 8-bit base with LoRA on top, end to end.

The scripts run in subprocesses on a tiny PhoGPT, with the T4's settings where a CPU allows them
(nf4, double quantisation, fp16 compute: what --dtype auto picks on a T4). Also PhoGPT issue #27
(4-bit on a T4 answered only "\\n"): a checkpoint built to overflow fp16 where VinAI's original
attention code does, and the one-line notice when logits are not finite.
"""
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import prompts  # noqa: E402
from phogpt_model import load_phogpt, pick_dtype  # noqa: E402

pytest.importorskip("bitsandbytes", reason="the 4-bit path needs bitsandbytes")

FAQ_FILE = ROOT / "data" / "faq_tiny_vi.jsonl"
FAQ = [(row["prompt"], row["response"]) for row in map(json.loads, FAQ_FILE.open(encoding="utf-8"))]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
       "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
# The T4's precision: nf4 (double-quantised) weights, fp16 compute.
T4 = ["--data", FAQ_FILE, "--load-in", "4bit", "--dtype", "fp16", "--device", "cpu"]
# The README's tiny recipe; in 4-bit it memorises all six answers without LoRA dropout
# (with the default 0.05, 3 of 6 on the tests' tiny model).
RECIPE = ["--epochs", 150, "--lr", "1e-2", "--lora-dropout", 0]
T4_SFT = T4 + RECIPE


def run(script, *args, check=True):
    """python SCRIPT ARGS as a student types it; the finished process (text output)."""
    done = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT,
                          env=ENV, capture_output=True, text=True, timeout=600)
    if check:
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def ask(question):
    return prompts.generation_prompt([{"role": "user", "content": question}], "</s>")


@torch.no_grad()
def greedy(model, tokenizer, question, steps=40):
    ids = tokenizer(ask(question), add_special_tokens=False, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=steps, do_sample=False)[0, ids.shape[1]:]
    return tokenizer.decode(out, skip_special_tokens=True)


def load_adapter(path):
    from safetensors.torch import load_file
    return load_file(Path(path) / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def sft4(tiny_phogpt, tmp_path_factory):
    """One 4-bit SFT run with the T4's settings, shared by the tests that need its adapter."""
    output = tmp_path_factory.mktemp("sft4") / "adapter"
    done = run("phogpt_qlora.py", "--model", tiny_phogpt, "--output", output, *T4_SFT)
    return output, done


# ---- SFT on a 4-bit base ----
def test_4bit_sft_with_t4_settings_memorises_the_faq(sft4):
    output, done = sft4
    # One line says the CPU path is for checking; no claim of an unquantised base.
    notice = "lưu ý: --load-in 4bit trên CPU rất chậm, chỉ để kiểm tra; chạy thật thì dùng GPU"
    assert notice in done.stderr.splitlines()
    assert "full-precision base" not in done.stdout
    assert "4-bit nf4 weights, float16 compute on cpu" in done.stdout
    assert f"answered {len(FAQ)}/{len(FAQ)} exactly" in done.stdout
    summary = json.loads((output / "training_summary.json").read_text(encoding="utf-8"))
    assert summary["load_in"] == "4bit" and summary["dtype"] == "float16"
    assert summary["recall"] == {"exact": len(FAQ), "total": len(FAQ)}
    # The logged loss (a mean over the last logging interval) fell by far.
    assert summary["final_loss"] < summary["losses"][0][1] / 4
    # The model card a student shares says what the base was.
    assert "4-bit nf4" in (output / "README.md").read_text(encoding="utf-8")


def test_auto_dtype_is_fp16_on_a_t4_and_fp32_on_the_cpu(monkeypatch):
    # What the run above passes as --dtype fp16 is what auto picks on a T4 (no bf16).
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert pick_dtype("cuda") == torch.float16
    assert pick_dtype("cpu") == torch.float32


def test_the_adapter_trained_on_linear4bit_layers(tiny_phogpt, sft4):
    from peft import PeftModel
    base, tokenizer = load_phogpt(tiny_phogpt, load_in="4bit", dtype=torch.float16)
    model = PeftModel.from_pretrained(base, sft4[0]).eval()
    wqkv = model.base_model.model.transformer.blocks[0].attn.Wqkv
    assert type(wqkv.base_layer).__name__ == "Linear4bit"
    assert wqkv.base_layer.weight.quant_state.quant_type == "nf4"
    assert wqkv.base_layer.compute_dtype == torch.float16
    # Trained: the LoRA B matrices (zero at the start) moved.
    trained = load_adapter(sft4[0])
    assert all(t.abs().max() > 1e-3 for name, t in trained.items() if "lora_B" in name)


def test_resume_of_a_4bit_run_matches_an_uninterrupted_run(tiny_phogpt, tmp_path):
    common = ["--model", tiny_phogpt, *T4_SFT, "--max-steps", 6, "--save-steps", 3,
              "--recall-limit", -1]
    run("phogpt_qlora.py", *common, "--output", tmp_path / "whole")
    # A run that stopped after checkpoint-3: the later checkpoint and the adapter are gone.
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "whole", cut)
    shutil.rmtree(cut / "checkpoint-6")
    (cut / "adapter_model.safetensors").unlink()
    done = run("phogpt_qlora.py", *common, "--output", cut, "--resume")
    assert "resuming from" in done.stdout and "checkpoint-3" in done.stdout
    summary = json.loads((cut / "training_summary.json").read_text(encoding="utf-8"))
    assert summary["steps"] == 6
    whole, resumed = load_adapter(tmp_path / "whole"), load_adapter(cut)
    first = load_adapter(cut / "checkpoint-3")
    assert whole.keys() == resumed.keys()
    for name in whole:
        torch.testing.assert_close(resumed[name], whole[name], rtol=1e-5, atol=1e-6)
    # ...and the three resumed steps did change the adapter.
    assert any((whole[k] - first[k]).abs().max() > 1e-4 for k in whole if "lora_B" in k)


def test_held_out_eval_during_4bit_training_changes_no_gradient(tiny_phogpt, tmp_path):
    # A no-grad forward (the per-epoch eval) makes bitsandbytes repack 4-bit weights for a
    # CPU kernel without a backward: unless the script prevents it, training then fails
    # (biases) or silently gets wrong gradients. The eval must not change the adapter.
    common = ["--model", tiny_phogpt, *T4, "--dtype", "fp32", "--epochs", 4, "--lr", "1e-2",
              "--lora-dropout", 0, "--recall-limit", -1]
    run("phogpt_qlora.py", *common, "--output", tmp_path / "plain")
    # Held out: two questions asked another way (the training rows themselves are refused).
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text("".join(json.dumps({"question": "Cho mình hỏi: " + q, "answer": a},
                                           ensure_ascii=False) + "\n" for q, a in FAQ[:2]),
                        encoding="utf-8")
    done = run("phogpt_qlora.py", *common, "--output", tmp_path / "eval", "--eval-data", held_out)
    assert "held-out questions" in done.stdout
    plain, evaluated = load_adapter(tmp_path / "plain"), load_adapter(tmp_path / "eval")
    for name in plain:
        torch.testing.assert_close(evaluated[name], plain[name], rtol=1e-3, atol=2e-4)


def test_8bit_sft_and_chat_work_on_the_cpu(tiny_phogpt, tmp_path):
    output = tmp_path / "adapter8"
    done = run("phogpt_qlora.py", "--model", tiny_phogpt, "--output", output, "--data", FAQ_FILE,
               "--load-in", "8bit", "--device", "cpu", *RECIPE, "--epochs", 150)
    assert "--load-in 8bit trên CPU rất chậm" in done.stderr and "8-bit weights" in done.stdout
    assert f"answered {len(FAQ)}/{len(FAQ)} exactly" in done.stdout
    question, answer = FAQ[-1]
    chat = run("phogpt_chat.py", "--model", tiny_phogpt, "--adapter", output, "--load-in", "8bit",
               "--device", "cpu", "--temperature", 0, "--prompt", question)
    assert chat.stdout.strip() == answer
    assert "--load-in 8bit trên CPU rất chậm" in chat.stderr


# ---- after SFT: chat, DPO and export from the 4-bit run's adapter ----
def test_4bit_chat_answers_a_trained_question_to_the_letter(tiny_phogpt, sft4):
    for question, answer in (FAQ[0], FAQ[-1]):
        done = run("phogpt_chat.py", "--model", tiny_phogpt, "--adapter", sft4[0],
                   "--load-in", "4bit", "--device", "cpu", "--temperature", 0,
                   "--prompt", question)
        assert done.stdout.strip() == answer
        assert "--load-in 4bit trên CPU rất chậm, chỉ để kiểm tra" in done.stderr
        assert "(4bit, " in done.stderr


def test_dpo_on_a_4bit_base_raises_the_margin(tiny_phogpt, sft4, tmp_path):
    output = tmp_path / "dpo"
    done = run("phogpt_dpo.py", "--adapter", sft4[0], "--model", tiny_phogpt, "--output", output,
               "--load-in", "4bit", "--device", "cpu", "--max-steps", 10, "--batch-size", 6,
               "--lr", "1e-3", "--logging-steps", 1)
    assert "--load-in 4bit trên CPU rất chậm" in done.stderr
    assert f"{tiny_phogpt} (4bit, float32 on cpu)" in done.stdout
    summary = json.loads((output / "training_summary.json").read_text(encoding="utf-8"))
    assert summary["load_in"] == "4bit" and summary["steps"] == 10
    assert summary["margin_after"] > summary["margin_before"] + 1.0
    # The count of pairs won moves by whole pairs in 10 steps (7 -> 7 seen in CI): the mean
    # margin above carries the signal; the count must not drop.
    assert summary["chosen_ahead_after"] >= summary["chosen_ahead_before"]


def test_export_merges_a_4bit_trained_adapter_and_llama_cpp_answers_the_same(
        tiny_phogpt, sft4, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp", reason="needs llama-cpp-python")
    from peft import PeftModel
    from test_phogpt_export import answer_in_llama_cpp
    out = tmp_path / "export"
    done = run("phogpt_export.py", "--model", tiny_phogpt, "--adapter", sft4[0], "--gguf", "f32",
               "--merge", "--output", out)
    assert "merged logits vs adapter-on-base" in done.stdout
    # Into the unquantised base: merged == that base with the adapter on top.
    merged, tokenizer = load_phogpt(str(out), dtype=torch.float32)
    base, _ = load_phogpt(tiny_phogpt, dtype=torch.float32)
    with_adapter = PeftModel.from_pretrained(base, sft4[0]).eval()
    ids = tokenizer(ask(FAQ[0][0]), add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(merged.eval()(ids).logits, with_adapter(ids).logits,
                                   rtol=1e-4, atol=1e-4)
    assert type(merged.transformer.blocks[0].attn.Wqkv).__name__ == "Linear"
    llm = llama_cpp.Llama(model_path=str(out / "phogpt-f32.gguf"), n_ctx=256, n_threads=1,
                          verbose=False)
    for question, answer in FAQ:
        # Learnt on nf4 weights, the answers survive the unquantised base...
        assert greedy(merged, tokenizer, question) == " " + answer
        # ...and llama.cpp gives the same.
        assert answer_in_llama_cpp(llm, tokenizer, question) == " " + answer


# ---- PhoGPT issue #27: empty 4-bit answers in fp16 ----
def edit_checkpoint(path, edit):
    """Apply edit(tensors) to a checkpoint's model.safetensors, values kept fp16-exact."""
    from safetensors.torch import load_file, save_file
    weights = load_file(Path(path) / "model.safetensors")
    edit(weights)
    # fp16-exact: an fp16 and an fp32 load quantise the very same numbers.
    weights = {k: v.half().float() if v.abs().max() < 6e4 else v for k, v in weights.items()}
    save_file(weights, str(Path(path) / "model.safetensors"), metadata={"format": "pt"})


@pytest.fixture(scope="module")
def big_scores(tiny_phogpt, tmp_path_factory):
    """A tiny PhoGPT whose first head's q.k^T passes fp16's 65,504 before the 1/sqrt(d) scale."""
    path = tmp_path_factory.mktemp("issue27") / "big-scores"
    shutil.copytree(tiny_phogpt, path)
    generator = torch.Generator().manual_seed(27)

    def edit(weights):
        qkv_w = weights["transformer.blocks.0.attn.Wqkv.weight"]
        qkv_b = weights["transformer.blocks.0.attn.Wqkv.bias"]
        d = qkv_w.shape[1]
        head = d // 4
        # Head 0: every query ~100 in each dimension; keys large and token-dependent.
        qkv_b[:head] = 100.0
        qkv_w[d:d + head] = torch.randn(head, d, generator=generator) * 15
    edit_checkpoint(path, edit)
    return str(path)


def original_attention_scores(q, k, softmax_scale):
    """The order of VinAI's remote code (llm-foundry 'torch' attention): q.k^T in the model's
    dtype, then times the scale, then the fp32 ALiBi bias and the causal mask, then softmax."""
    weights = q.matmul(k.transpose(-1, -2)) * softmax_scale
    weights = weights + torch.zeros(weights.shape[-2:], dtype=torch.float32)
    causal = torch.ones(weights.shape[-2:], dtype=torch.bool).tril()
    weights = weights.masked_fill(~causal, torch.finfo(q.dtype).min)
    return torch.softmax(weights, dim=-1)


def test_issue_27_big_attention_scores_stay_finite_in_4bit_fp16(big_scores):
    runs = {}
    for load_in in ("4bit", "none"):
        for dtype in (torch.float16, torch.float32):
            model, tokenizer = load_phogpt(big_scores, load_in=load_in, dtype=dtype)
            model.eval()
            captured = {}
            hook = model.transformer.blocks[0].attn.Wqkv.register_forward_hook(
                lambda module, args, out: captured.setdefault("qkv", out))
            ids = tokenizer(ask(FAQ[0][0]), add_special_tokens=False,
                            return_tensors="pt").input_ids
            with torch.no_grad():
                logits = model(ids).logits
            hook.remove()
            runs[load_in, dtype] = (logits, captured["qkv"], greedy(model, tokenizer, FAQ[0][0]))
    # The checkpoint provokes the cause: in fp16, the original order overflows to inf
    # (65,504 is fp16's largest number) and softmax turns the row into NaN.
    qkv = runs["4bit", torch.float16][1][0]
    d = qkv.shape[-1] // 3
    q, k = qkv[:, : d // 4], qkv[:, d: d + d // 4]
    assert q.dtype == torch.float16
    assert torch.isinf(q.matmul(k.T)).any()
    assert torch.isnan(original_attention_scores(q, k, 1 / math.sqrt(d // 4))).any()
    # Ours: fp16 gives fp32's logits and answer, on the 4-bit and on the unquantised base.
    for load_in in ("4bit", "none"):
        half, single = runs[load_in, torch.float16], runs[load_in, torch.float32]
        assert torch.isfinite(half[0]).all()
        torch.testing.assert_close(half[0].float(), single[0], rtol=0, atol=0.05)
        assert half[2] == single[2]


def overflowing_checkpoint(source, path, value):
    """A tiny PhoGPT whose residual stream overflows: two biases of `value` add up in dim 0."""
    shutil.copytree(source, path)

    def edit(weights):
        weights["transformer.blocks.1.attn.out_proj.bias"][0] = value
        weights["transformer.blocks.1.ffn.down_proj.bias"][0] = value
    edit_checkpoint(path, edit)
    return path


def test_recall_says_so_when_fp16_logits_are_not_finite(tiny_phogpt, tmp_path):
    # 40,000 twice: 80,000 is over fp16's 65,504, well within fp32.
    model = overflowing_checkpoint(tiny_phogpt, tmp_path / "overflow16", 40_000.0)
    done = run("phogpt_qlora.py", "--model", model, *T4_SFT, "--max-steps", 1,
               "--output", tmp_path / "out")
    notices = [line for line in done.stdout.splitlines() if "NaN/inf logits" in line]
    assert len(notices) == 1 and "fix: --dtype fp32" in notices[0], done.stdout
    assert "answered 0/" in done.stdout
    # In fp32 the same model's logits are finite: no such line.
    done = run("phogpt_qlora.py", "--model", model, "--data", FAQ_FILE, "--load-in", "4bit",
               "--dtype", "fp32", "--device", "cpu", "--max-steps", 1,
               "--output", tmp_path / "out32")
    assert "NaN/inf" not in done.stdout


def test_chat_says_so_when_logits_are_not_finite(tiny_phogpt, tmp_path):
    # 3e38 twice overflows even fp32, the chat's dtype on a CPU.
    model = overflowing_checkpoint(tiny_phogpt, tmp_path / "overflow32", 3e38)
    done = run("phogpt_chat.py", "--model", model, "--load-in", "4bit", "--device", "cpu",
                "--temperature", 0, "--prompt", FAQ[0][0], check=False)
    assert done.returncode == 1 and done.stdout.strip() == "", done.stdout
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "NaN/inf" in errors[0] and "Traceback" not in done.stderr
