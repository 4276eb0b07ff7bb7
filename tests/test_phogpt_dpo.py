"""phogpt_dpo.py on a tiny PhoGPT-format checkpoint (CPU, offline), run as a student would."""
import json
import os
import re
import runpy
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import prompts  # noqa: E402
from phogpt_model import load_phogpt, load_tokenizer  # noqa: E402
from tiny_phogpt import save_tiny_checkpoint  # noqa: E402

SCRIPT = str(ROOT / "phogpt_dpo.py")
FAQ = [
    ("Cửa hàng mở cửa lúc mấy giờ?", "Cửa hàng mở cửa từ 8 giờ sáng đến 9 giờ tối."),
    ("Địa chỉ cửa hàng ở đâu?", "Số 12 phố Huế, Hà Nội."),
    ("Có giao hàng không?", "Có, giao hàng miễn phí trong nội thành."),
    ("Làm sao để đổi trả?", "Mang hoá đơn đến quầy trong vòng 7 ngày."),
    ("Số điện thoại là gì?", "Gọi 024 3826 1234."),
    ("Có nhận thẻ không?", "Có, chúng tôi nhận thẻ Visa và tiền mặt."),
]
# The right answer is chosen, the next question's answer rejected.
PAIRS = [{"prompt": q, "chosen": a, "rejected": FAQ[(i + 1) % len(FAQ)][1]}
         for i, (q, a) in enumerate(FAQ)]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
       "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
PROGRESS = re.compile(r"^step (\d+)/(\d+) · epoch [\d.]+ · loss ([\d.]+) · "
                      r"reward margin (-?[\d.]+) · reward accuracy \d+% · [\d,]+ tok/s$", re.M)


def run(*args, check=True):
    """Run the script as a student would; return the finished process."""
    done = subprocess.run([sys.executable, SCRIPT, *map(str, args)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)
    if check:
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def run_here(capsys, *args):
    """Run the script in this process (torch is already imported): (exit code, stdout, stderr)."""
    argv, sys.argv = sys.argv, [SCRIPT, *map(str, args)]
    try:
        runpy.run_path(SCRIPT, run_name="__main__")
        code = 0
    except SystemExit as stop:
        code = stop.code
    finally:
        sys.argv = argv
    out = capsys.readouterr()
    # sys.exit("error: ...") prints the text to stderr and exits 1, as Python itself would.
    if isinstance(code, str):
        return 1, out.out, out.err + code + "\n"
    return code, out.out, out.err


def assert_one_line(code, err, *fragments):
    assert code == 1 and err.count("\n") == 1 and err.startswith("error: "), err
    assert "fix:" in err and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


def write_jsonl(path, rows):
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    path.write_text(text, encoding="utf-8")
    return path


def make_adapter(model_dir, output):
    """A LoRA adapter with random, non-zero weights: it stands for an SFT run's adapter."""
    from peft import LoraConfig, get_peft_model
    base, _ = load_phogpt(str(model_dir))
    targets = ["attn.Wqkv", "attn.out_proj", "ffn.up_proj", "ffn.down_proj"]
    torch.manual_seed(0)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=targets, init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(str(output))
    return output


def log_margin(model_dir, adapter_dir):
    """Mean over PAIRS of log p(chosen) - log p(rejected), EOS included, computed here."""
    from peft import PeftModel
    base, tokenizer = load_phogpt(str(model_dir))
    model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    total = 0.0
    for pair in PAIRS:
        question = [{"role": "user", "content": pair["prompt"]}]
        head = tokenizer(prompts.generation_prompt(question, "</s>"), add_special_tokens=False)
        for answer, sign in ((pair["chosen"], 1), (pair["rejected"], -1)):
            tail = tokenizer(" " + answer, add_special_tokens=False).input_ids
            tail = tail + [tokenizer.eos_token_id]
            ids = torch.tensor([head.input_ids + tail])
            with torch.no_grad():
                logits = model(ids).logits[0, len(head.input_ids) - 1: -1]
            logp = logits.log_softmax(-1).gather(1, torch.tensor(tail)[:, None]).sum().item()
            total += sign * logp
    return total / len(PAIRS)


def same_adapter(first_dir, second_dir):
    from safetensors.torch import load_file
    first = load_file(Path(first_dir) / "adapter_model.safetensors")
    second = load_file(Path(second_dir) / "adapter_model.safetensors")
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    texts = [q + " " + a for q, a in FAQ] + [prompts.PHOGPT_USER_FIRST, prompts.PHOGPT_ASSISTANT]
    return Path(save_tiny_checkpoint(str(tmp_path_factory.mktemp("tiny") / "phogpt"), texts))


@pytest.fixture(scope="module")
def sft(tiny, tmp_path_factory):
    return make_adapter(tiny, tmp_path_factory.mktemp("sft") / "adapter")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "dpo.jsonl", PAIRS)


@pytest.fixture(scope="module")
def trained(sft, data, tmp_path_factory):
    """One DPO run: 10 steps of the 6 pairs at a tiny-model learning rate."""
    output = tmp_path_factory.mktemp("runs") / "dpo"
    done = run("--adapter", sft, "--data", data, "--output", output, "--max-steps", 10,
               "--batch-size", 6, "--lr", "1e-3", "--logging-steps", 1)
    return output, done


def test_dpo_raises_the_chosen_over_rejected_margin(tiny, sft, trained):
    output, done = trained
    before, after = log_margin(tiny, sft), log_margin(tiny, output)
    assert after > before + 1.0, (before, after)
    # The script's own before/after line says the same.
    said = re.search(r"mean over 6 pairs: (-?[\d.]+) with the SFT adapter -> "
                     r"(-?[\d.]+) after DPO \(\+", done.stdout)
    assert said, done.stdout
    assert float(said[1]) == pytest.approx(before, abs=0.01)
    assert float(said[2]) == pytest.approx(after, abs=0.01)
    # Only the trained adapter is saved, not trl's frozen "ref" copy.
    assert not (output / "ref").exists() and not (output / "adapter.partial").exists()
    summary = json.loads((output / "training_summary.json").read_text(encoding="utf-8"))
    assert summary["steps"] == 10 and summary["margin_after"] > summary["margin_before"]


def test_the_reference_is_the_sft_adapter_not_the_bare_base(trained):
    # The adapter is far from zero, yet the first step's loss is ln 2 with margin 0: the
    # reference is a copy of the adapter. Against the bare base it would not be.
    output, done = trained
    first = PROGRESS.search(done.stdout)
    assert first and first[1] == "1", done.stdout
    assert float(first[3]) == pytest.approx(0.693, abs=0.001) and float(first[4]) == 0


def test_progress_is_one_readable_line_per_log_and_a_bar(trained):
    output, done = trained
    steps = [int(match[1]) for match in PROGRESS.finditer(done.stdout)]
    assert steps == list(range(1, 11)), done.stdout
    assert "{'loss'" not in done.stdout
    # The Trainer's progress bar (with its ETA) goes to stderr.
    assert "10/10 [" in done.stderr
    # Nothing from our calls tells a student about deprecations.
    assert "Warning" not in done.stderr and "deprecated" not in done.stderr, done.stderr


def test_phogpt_chat_loads_the_dpo_adapter(trained):
    output, _ = trained
    chat = [sys.executable, str(ROOT / "phogpt_chat.py"), "--adapter", str(output),
            "--prompt", FAQ[0][0], "--temperature", "0", "--max-new-tokens", "20"]
    done = subprocess.run(chat, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_ctrl_c_saves_a_checkpoint_and_resume_matches_an_uninterrupted_run(
        sft, data, tmp_path, capsys):
    common = ["--adapter", sft, "--data", data, "--max-steps", 30, "--batch-size", 2,
              "--lr", "1e-3", "--save-steps", 1000, "--logging-steps", 1]
    run(*common, "--output", tmp_path / "whole")
    command = [sys.executable, SCRIPT, *map(str, common), "--output", str(tmp_path / "cut")]
    student = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    for line in student.stdout:
        if line.startswith("step "):
            # The student presses Ctrl+C mid-training.
            student.send_signal(signal.SIGINT)
            break
    rest = student.stdout.read()
    assert student.wait(timeout=120) == 130, rest
    assert "with --resume" in rest, rest
    cut = tmp_path / "cut"
    assert list(cut.glob("checkpoint-*")) and not (cut / "adapter_config.json").exists()
    # A half-written newer checkpoint, as a kill during a save leaves it, is skipped.
    (cut / "checkpoint-999").mkdir()
    (cut / "checkpoint-999" / "adapter_model.safetensors").write_bytes(b"\0" * 10)
    resumed = run(*common, "--output", cut, "--resume")
    assert re.search(rf"resuming from {re.escape(str(cut))}/checkpoint-\d+ "
                     r"\(set aside checkpoint-999 \(optimizer.pt is missing\)\)",
                     resumed.stdout), resumed.stdout
    same_adapter(cut, tmp_path / "whole")
    assert not (cut / "checkpoint-999").exists()
    # Resuming with other data would mix two runs: refused in one line.
    other = write_jsonl(tmp_path / "other.jsonl", PAIRS[:3])
    code, out, err = run_here(capsys, *common, "--data", other, "--output", cut, "--resume")
    assert_one_line(code, err, f"trained with data {data}, not {other}")


BAD_FLAGS = [
    (["--beta", "0"], "--beta must be between"), (["--beta", "-0.1"], "--beta"),
    (["--beta", "1e9"], "--beta"), (["--beta", "nan"], "--beta"),
    (["--lr", "0"], "--lr must be between"), (["--lr", "-1e-4"], "--lr"), (["--lr", "1e6"], "--lr"),
    (["--epochs", "0"], "--epochs"), (["--epochs", "-3"], "--epochs"),
    (["--epochs", "1e9"], "--epochs"),
    (["--max-steps", "-5"], "--max-steps"), (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "-1"], "--batch-size"), (["--batch-size", "100000"], "--batch-size"),
    (["--grad-accum", "0"], "--grad-accum"), (["--max-length", "0"], "--max-length"),
    (["--max-length", "-512"], "--max-length"), (["--max-length", "10000000"], "--max-length"),
    (["--save-steps", "0"], "--save-steps"), (["--logging-steps", "-1"], "--logging-steps"),
    (["--seed", "-1"], "--seed"), (["--seed", str(2**40)], "--seed"),
    (["--beta", "abc"], "--beta"), (["--device", "tpu"], "--device"),
    (["--load-in", "3bit"], "--load-in"), (["--template", "poem"], "--template"),
    (["--gradient-checkpointing", "maybe"], "--gradient-checkpointing"),
    (["--no-such-flag"], "--no-such-flag"), (["--resume", "--overwrite"], "pick one"),
]


@pytest.mark.parametrize("flags,message", BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_a_bad_flag_gets_one_line(sft, data, tmp_path, capsys, flags, message):
    code, out, err = run_here(capsys, "--adapter", sft, "--data", data,
                              "--output", tmp_path / "out", *flags)
    assert_one_line(code, err, message)
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message of a machine without CUDA")
def test_cuda_only_settings_without_a_gpu_get_one_line(sft, data, tmp_path, capsys):
    for flags in (["--device", "cuda"],):
        code, out, err = run_here(capsys, "--adapter", sft, "--data", data,
                                  "--output", tmp_path / "out", *flags)
        assert_one_line(code, err, flags[0], "CUDA")


def test_a_missing_or_damaged_adapter_gets_one_line(data, tmp_path, capsys):
    # As a student runs it: exit status 1 and one line on stderr, before any model loads.
    done = run("--adapter", tmp_path / "nothing", "--data", data, "--output", tmp_path / "o",
               check=False)
    assert_one_line(done.returncode, done.stderr, "no adapter_config.json", "phogpt_qlora.py")
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "adapter_config.json").write_text("{not json", encoding="utf-8")
    code, out, err = run_here(capsys, "--adapter", tmp_path / "damaged", "--data", data,
                              "--output", tmp_path / "o")
    assert_one_line(code, err, "adapter_config.json is damaged")


def test_an_adapter_of_another_shape_or_damaged_gets_one_line(tiny, sft, data, tmp_path, capsys):
    texts = [q + " " + a for q, a in FAQ] + [prompts.PHOGPT_USER_FIRST, prompts.PHOGPT_ASSISTANT]
    narrow = save_tiny_checkpoint(str(tmp_path / "narrow"), texts, d_model=32)
    narrow_adapter = make_adapter(narrow, tmp_path / "narrow-adapter")
    # A kill or a full disk while the adapter was written: its weights are cut short.
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "adapter_config.json").write_bytes((sft / "adapter_config.json").read_bytes())
    (damaged / "adapter_model.safetensors").write_bytes((sft / "adapter_model.safetensors")
                                                        .read_bytes()[:100])
    cases = [(narrow_adapter, ["in the adapter", "in the model", str(narrow)]), (damaged, [])]
    for adapter, fragments in cases:
        capsys.readouterr()
        code, out, err = run_here(capsys, "--adapter", adapter, "--model", tiny, "--data", data,
                                  "--output", tmp_path / "out")
        # Found once the base is loaded (its progress bar comes first), then one line.
        last = err.splitlines()[-1] + "\n"
        assert err.count("error:") == 1 and err.endswith(last) and "Traceback" not in err, err
        assert_one_line(code, last, f"--adapter {adapter} does not load on", *fragments)
        assert not (tmp_path / "out").exists()


def test_an_existing_output_is_kept_without_overwrite(sft, data, trained, tmp_path, capsys):
    old = tmp_path / "old"
    (old / "checkpoint-5").mkdir(parents=True)
    (old / "adapter_config.json").write_text("{}", encoding="utf-8")
    (old / "notes.txt").write_text("ghi chú", encoding="utf-8")
    before = sorted(str(p) for p in old.rglob("*"))
    # A folder no run of ours made is never replaced, not even with --overwrite.
    for flags in ([], ["--overwrite"]):
        code, out, err = run_here(capsys, "--adapter", sft, "--data", data, "--output", old,
                                  *flags)
        assert_one_line(code, err, "no run of ours made")
    assert sorted(str(p) for p in old.rglob("*")) == before
    assert (old / "notes.txt").read_text(encoding="utf-8") == "ghi chú"
    # A run of ours: kept without --overwrite, and with bad data nothing is deleted.
    ours, _ = trained
    kept = {p: p.read_bytes() for p in ours.rglob("*") if p.is_file() and "lock" not in p.name}
    code, out, err = run_here(capsys, "--adapter", sft, "--data", data, "--output", ours)
    assert_one_line(code, err, "already exists", "--overwrite")
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "Chào", "chosen": "Chào bạn"}])
    code, out, err = run_here(capsys, "--adapter", sft, "--data", bad, "--output", ours,
                              "--overwrite")
    assert_one_line(code, err, "bad.jsonl:1", "rejected")
    assert all(path.read_bytes() == content for path, content in kept.items())
    # A file where the folder should go, and the adapter folder itself, are refused too.
    code, out, err = run_here(capsys, "--adapter", sft, "--data", data,
                              "--output", old / "notes.txt")
    assert_one_line(code, err, "is a file")
    code, out, err = run_here(capsys, "--adapter", sft, "--data", data, "--output", sft,
                              "--overwrite")
    assert_one_line(code, err, f"--output {sft} holds --adapter")


GOOD = '{"prompt": "Chào", "chosen": "Chào bạn", "rejected": "Không"}\n'
BAD_ROWS = {  # file name -> (content, where the error must point, what it must name)
    "missing.jsonl": (GOOD * 2 + '{"prompt": "Chào", "chosen": "Chào bạn"}\n',
                      "missing.jsonl:3", "'rejected' is missing"),
    "empty.jsonl": (GOOD + '\n{"prompt": "  ", "chosen": "A", "rejected": "B"}\n',
                    "empty.jsonl:3", "'prompt' is empty"),
    "same.jsonl": (GOOD + '{"prompt": "Chào", "chosen": "Dạ", "rejected": "Dạ"}\n',
                   "same.jsonl:2", "the same"),
    "eos.jsonl": ('{"prompt": "Chào", "chosen": "Chào</s> bạn", "rejected": "Không"}\n',
                  "eos.jsonl:1", "'</s>'"),
    "turn.jsonl": ('{"prompt": "Hi", "chosen": "Dạ\\n### Câu hỏi: giả", "rejected": "Không"}\n',
                   "turn.jsonl:1", "### Câu hỏi"),
    "number.jsonl": ('{"prompt": "Chào", "chosen": 5, "rejected": "Không"}\n',
                     "number.jsonl:1", "'chosen' is empty or not text"),
    "broken.jsonl": (GOOD + '{"prompt": "Chào", \n', "broken.jsonl:2", "not valid JSON"),
    "list.json": ('[{"prompt": "Chào", "chosen": "Dạ", "rejected": "Không"}, ["x"]]',
                  "list.json item 2", "expected an object"),
    "table.csv": ("prompt,chosen,rejected\nChào,Chào bạn,Không\nChào,Dạ, vâng,Không\n",
                  "table.csv:3", "more fields than the header"),
}


@pytest.mark.parametrize("name", BAD_ROWS)
def test_a_bad_row_gets_one_line_with_file_and_line(sft, tmp_path, capsys, name):
    content, place, what = BAD_ROWS[name]
    (tmp_path / name).write_text(content, encoding="utf-8")
    code, out, err = run_here(capsys, "--adapter", sft, "--data", tmp_path / name,
                              "--output", tmp_path / "out")
    assert_one_line(code, err, f"{tmp_path / place}", what)


def test_a_file_that_is_not_there_or_not_utf8_gets_one_line(sft, tmp_path, capsys):
    latin1 = b'{"prompt": "Ch\xe0o", "chosen": "A", "rejected": "B"}\n'
    (tmp_path / "latin1.jsonl").write_bytes(latin1)
    for name, message in (("nowhere.jsonl", "file not found"), ("latin1.jsonl", "not UTF-8"),
                          ("notes.txt", "use .jsonl, .json or .csv")):
        code, out, err = run_here(capsys, "--adapter", sft, "--data", tmp_path / name,
                                  "--output", tmp_path / "out")
        assert_one_line(code, err, name, message)


# Issue 22: a --max-length that cuts </s> off every answer teaches a model that never stops.
@pytest.mark.parametrize("room", ["not even the prompt", "part of every answer"])
def test_a_max_length_that_cuts_the_end_off_every_answer_is_refused(tiny, sft, data, tmp_path,
                                                                    capsys, room):
    tokenizer = load_tokenizer(str(tiny))
    # Prompt, answer and </s>, in tokens, as trl puts them together: the longer answer counts.
    whole = []
    for pair in PAIRS:
        prompt = prompts.generation_prompt([{"role": "user", "content": pair["prompt"]}], "</s>")
        whole.append(max(len(tokenizer(prompt + " " + pair[answer] + "</s>").input_ids)
                         for answer in ("chosen", "rejected")))
    max_length = 8 if room == "not even the prompt" else min(whole) - 1
    code, out, err = run_here(capsys, "--adapter", sft, "--data", data, "--max-steps", 1,
                              "--output", tmp_path / "out", "--max-length", max_length)
    assert_one_line(code, err, f"--max-length {max_length} cuts the end (</s>) off every answer",
                    f"fix: --max-length {max(whole)} keeps them whole")
    assert not (tmp_path / "out").exists()


def test_gradient_checkpointing_recomputes_and_trains_the_same_adapter(sft, data, tmp_path,
                                                                        capsys, monkeypatch):
    # On a T4 it is on: each block runs again in the backward pass, and the adapter is the
    # one training without it gives.
    from conftest import count_block_forwards
    calls = count_block_forwards(monkeypatch)
    common = ["--adapter", sft, "--data", data, "--max-steps", 3, "--batch-size", 2,
              "--lr", "1e-3"]
    forwards = {}
    for setting in ("on", "off"):
        calls.clear()
        code, out, err = run_here(capsys, *common, "--output", tmp_path / setting,
                                  "--gradient-checkpointing", setting)
        assert code == 0, err
        forwards[setting] = len(calls)
    # The reference pass (no gradients) runs once either way: the difference is the recompute.
    assert forwards["on"] > forwards["off"] > 0, forwards
    same_adapter(tmp_path / "on", tmp_path / "off")
