"""phogpt_qlora.py end to end on a tiny PhoGPT-format checkpoint (CPU, offline)."""
import json
import os
import re
import resource
import runpy
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import prompts  # noqa: E402
from phogpt_model import load_phogpt  # noqa: E402
from tiny_phogpt import save_tiny_checkpoint  # noqa: E402

SCRIPT = str(ROOT / "phogpt_qlora.py")
FAQ = [
    ("Cửa hàng mở cửa lúc mấy giờ?", "Cửa hàng mở cửa từ 8 giờ sáng đến 9 giờ tối."),
    ("Địa chỉ cửa hàng ở đâu?", "Số 12 phố Huế, Hà Nội."),
    ("Có giao hàng không?", "Có, giao hàng miễn phí trong nội thành."),
    ("Làm sao để đổi trả?", "Mang hoá đơn đến quầy trong vòng 7 ngày."),
    ("Số điện thoại là gì?", "Gọi 024 3826 1234."),
    ("Có nhận thẻ không?", "Có, chúng tôi nhận thẻ Visa và tiền mặt."),
]
# The same answers, asked in other words: questions the model never trained on.
REPHRASED = [
    ("Mấy giờ thì cửa hàng mở?", FAQ[0][1]),
    ("Cửa hàng nằm ở chỗ nào?", FAQ[1][1]),
]
FAST = ["--lora-r", "16", "--lora-alpha", "32", "--lora-dropout", "0.0", "--lr", "1e-2",
        "--logging-steps", "10"]
ENV = {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
       "HF_HUB_OFFLINE": "1"}


def run(*args, check=True, **kwargs):
    """Run the script as a student would; return the finished process (stdout, stderr as text)."""
    command = [sys.executable, SCRIPT, *map(str, args)]
    done = subprocess.run(command, cwd=ROOT, env={**os.environ, **ENV}, capture_output=True,
                          text=True, timeout=300, **kwargs)
    if check:
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def run_here(capsys, *args):
    """Run the script in this process (torch is already imported); return (code, stdout, stderr)."""
    argv, sys.argv = sys.argv, [SCRIPT, *map(str, args)]
    ctrl_c = signal.getsignal(signal.SIGINT)
    try:
        runpy.run_path(SCRIPT, run_name="__main__")
        code = 0
    except SystemExit as exit:
        code = exit.code
        # sys.exit("error: ...") prints its message and exits 1, as Python does at the end.
        if isinstance(code, str):
            print(code, file=sys.stderr)
            code = 1
    finally:
        sys.argv = argv
        signal.signal(signal.SIGINT, ctrl_c)
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_error_line(code, err, *words):
    assert code == 1 and err.count("\n") == 1 and err.startswith("error: "), err
    assert "Traceback" not in err and "fix:" in err, err
    for word in words:
        assert word in err, (word, err)


def write_jsonl(path, rows):
    lines = [json.dumps(row, ensure_ascii=False) + "\n" for row in rows]
    path.write_text("".join(lines), encoding="utf-8")
    return path


def assert_same_adapter(resumed_dir, whole_dir):
    """The adapter a resumed run saved equals the one of an uninterrupted run, tensor by tensor."""
    from safetensors.torch import load_file
    resumed = load_file(Path(resumed_dir) / "adapter_model.safetensors")
    whole = load_file(Path(whole_dir) / "adapter_model.safetensors")
    assert whole.keys() == resumed.keys()
    for name in whole:
        torch.testing.assert_close(resumed[name], whole[name], rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    texts = [q + " " + a for q, a in FAQ + REPHRASED]
    texts += [prompts.PHOGPT_USER_FIRST, prompts.PHOGPT_ASSISTANT, "Xin chào"]
    return save_tiny_checkpoint(str(tmp_path_factory.mktemp("tiny") / "phogpt"), texts)


@pytest.fixture(scope="module")
def faq(tmp_path_factory):
    rows = [{"question": q, "answer": a} for q, a in FAQ]
    return write_jsonl(tmp_path_factory.mktemp("data") / "faq.jsonl", rows)


@pytest.fixture(scope="module")
def trained(tiny, faq, tmp_path_factory):
    """One SFT run on the FAQ, shared by the tests that need a trained adapter."""
    output = tmp_path_factory.mktemp("runs") / "adapter"
    done = run("--model", tiny, "--data", faq, "--output", output, "--epochs", 150,
               "--batch-size", 6, *FAST)
    return output, done.stdout


def test_learns_every_answer_and_stops_at_eos(tiny, trained):
    output, stdout = trained
    assert "answered 6/6 exactly" in stdout
    summary = json.loads((output / "training_summary.json").read_text())
    assert summary["recall"] == {"exact": 6, "total": 6} and summary["steps"] == 150
    assert summary["tokens_per_s"] > 0 and summary["final_loss"] < 0.1
    assert (output / "loss_curve.png").stat().st_size > 1000
    # plain peft loads the adapter on the base, and greedy decoding gives the answer then EOS
    from peft import PeftModel
    base, tokenizer = load_phogpt(tiny)
    model = PeftModel.from_pretrained(base, output).eval()
    question, answer = FAQ[1]
    prompt = prompts.generation_prompt([{"role": "user", "content": question}], tokenizer.eos_token)
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    new = model.generate(ids, max_new_tokens=40, do_sample=False, use_cache=True,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    new = new[0, ids.shape[1]:].tolist()
    assert new[-1] == tokenizer.eos_token_id and tokenizer.decode(new[:-1]) == " " + answer


def test_a_40_epoch_run_shows_progress_a_curve_held_out_figures_and_a_model_card(tiny, tmp_path):
    data = write_jsonl(tmp_path / "faq4.jsonl", [{"question": q, "answer": a} for q, a in FAQ[:4]])
    held_out = write_jsonl(tmp_path / "rephrased.jsonl",
                           [{"question": q, "answer": a} for q, a in REPHRASED])
    output = tmp_path / "adapter"
    flags = ["--model", tiny, "--data", data, "--eval-data", held_out, "--output", output,
             "--epochs", 40, "--batch-size", 4, "--lr", "1e-2", "--lora-r", 16]
    done = run(*flags)
    # The Trainer's own progress bar, with its ETA, and one readable line per log.
    assert re.search(r"\d+/40 \[\d\d:\d\d<\d\d:\d\d", done.stderr), done.stderr[-2000:]
    assert re.search(r"step \d+/40 · epoch [\d.]+ · loss [\d.]+ · [\d,]+ tok/s", done.stdout)
    assert "{'loss'" not in done.stdout and "Warning" not in done.stderr, done.stderr[-2000:]
    summary = json.loads((output / "training_summary.json").read_text())
    assert len(summary["losses"]) >= 10 and summary["steps"] == 40
    # Held-out loss every epoch, and the recall check on the held-out questions.
    assert len(summary["eval"]["losses"]) == 40 and summary["eval"]["rows"] == 2
    held = summary["eval"]["recall"]
    assert held["total"] == 2 and f"answered {held['exact']}/2 held-out questions" in done.stdout
    assert (output / "loss_curve.png").stat().st_size > 1000
    # The adapter's README.md tells what it is and how to use it.
    card = (output / "README.md").read_text(encoding="utf-8")
    recall = summary["recall"]
    assert str(tiny) in card and "faq4.jsonl" in card and "4 dòng" in card
    assert f"{recall['exact']}/{recall['total']}" in card and f"{held['exact']}/2" in card
    assert f"--eval-data {held_out}" in card and f"python phogpt_chat.py --adapter {output}" in card
    assert not list(output.glob("*.partial")) and not (output / "adapter.partial").exists()


def test_help_shows_every_default(tmp_path):
    done = run("--help")
    assert "(default: 30" in done.stdout and "(default: auto)" in done.stdout
    assert "--eval-data" in done.stdout and "(default: None)" not in done.stdout


def test_ctrl_c_saves_a_checkpoint_and_resume_matches_an_uninterrupted_run(tiny, faq, tmp_path):
    common = ["--model", tiny, "--data", faq, "--max-steps", 60, "--batch-size", 2,
              "--save-steps", 1000, "--recall-limit", -1, *FAST[:-4], "--lora-dropout", "0.1",
              "--logging-steps", 1]
    run(*common, "--output", tmp_path / "whole")
    student = subprocess.Popen([sys.executable, SCRIPT, *map(str, common), "--output",
                                tmp_path / "cut"], cwd=ROOT, env={**os.environ, **ENV},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in student.stdout:
        if " · loss " in line:
            # the student presses Ctrl+C mid-training
            student.send_signal(signal.SIGINT)
            break
    rest = student.stdout.read()
    assert student.wait(timeout=120) == 130, rest
    assert "rerun with --resume" in rest and list((tmp_path / "cut").glob("checkpoint-*"))
    resumed_run = run(*common, "--output", tmp_path / "cut", "--resume")
    assert f"resuming from {tmp_path / 'cut' / 'checkpoint-'}" in resumed_run.stdout
    assert_same_adapter(tmp_path / "cut", tmp_path / "whole")


def test_resume_skips_a_half_written_checkpoint_and_says_which_it_used(tiny, faq, tmp_path,
                                                                       capsys):
    common = ["--model", tiny, "--data", faq, "--max-steps", 4, "--save-steps", 2,
              "--batch-size", 2, "--lr", "1e-2", "--lora-dropout", "0.1", "--recall-limit", -1]
    run(*common, "--output", tmp_path / "whole")
    run(*common, "--output", tmp_path / "cut")
    cut = tmp_path / "cut"
    # Killed while saving checkpoint-4: its weights file is cut in half.
    weights = cut / "checkpoint-4" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (cut / "adapter_model.safetensors").unlink()
    resumed_run = run(*common, "--output", cut, "--resume")
    assert "skipping checkpoint-4 (adapter_model.safetensors is cut short)" in resumed_run.stdout
    assert f"resuming from {cut / 'checkpoint-2'}" in resumed_run.stdout
    assert_same_adapter(cut, tmp_path / "whole")
    # Both checkpoints damaged (the state file written last is missing, a cut optimizer file):
    # one line that names them.
    (cut / "checkpoint-4" / "trainer_state.json").unlink()
    optimizer = cut / "checkpoint-2" / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:100])
    code, out, err = run_here(capsys, *common, "--output", cut, "--resume")
    assert_one_error_line(code, err, "no complete checkpoint", "trainer_state.json is missing",
                          "optimizer.pt is cut short")


def test_resume_refuses_other_data_another_lora_shape_and_a_finished_run(tiny, faq, trained,
                                                                         tmp_path, capsys):
    output, _ = trained
    other = write_jsonl(tmp_path / "other.jsonl", [{"question": "Chào", "answer": "Chào bạn"}])
    common = ["--model", tiny, "--output", output, "--epochs", 150, "--batch-size", 6, *FAST,
              "--resume"]
    code, out, err = run_here(capsys, *common, "--data", other)
    assert_one_error_line(code, err, f"trained with data {faq}, not {other}")
    # The same file, edited since: said so, not "data faq.jsonl, not faq.jsonl".
    rows = faq.read_bytes()
    try:
        faq.write_bytes(rows + '{"question": "Mới", "answer": "Thêm"}\n'.encode())
        code, out, err = run_here(capsys, *common, "--data", faq)
        assert_one_error_line(code, err, f"trained with data {faq}, not its edited contents")
    finally:
        faq.write_bytes(rows)
    code, out, err = run_here(capsys, *common, "--data", faq, "--lora-r", 8)
    assert_one_error_line(code, err, "lora_r 16, not 8")
    # Same data, same settings, nothing left to do: say so instead of "training" 0 steps.
    code, out, err = run_here(capsys, *common, "--data", faq)
    assert_one_error_line(code, err, "already reached step 150 of 150", "raise --epochs")
    assert json.loads((output / "training_summary.json").read_text())["steps"] == 150


def test_overwrite_keeps_the_old_run_until_the_new_input_is_valid(tiny, faq, tmp_path, capsys):
    old = tmp_path / "old-run"
    run("--model", tiny, "--data", faq, "--output", old, "--max-steps", 2, "--save-steps", 1,
        "--recall-limit", -1)
    before = {p: p.read_bytes() for p in old.rglob("*") if p.is_file() and "lock" not in p.name}
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    code, out, err = run_here(capsys, "--model", tiny, "--data", empty, "--output", old,
                              "--overwrite")
    assert_one_error_line(code, err, "no rows")
    assert all(path.read_bytes() == data for path, data in before.items())
    run("--model", tiny, "--data", faq, "--output", old, "--overwrite", "--max-steps", 3,
        "--save-steps", 3, "--recall-limit", -1, "--seed", 7)
    assert sorted(p.name for p in old.glob("checkpoint-*")) == ["checkpoint-3"]
    assert not [p for p in old.iterdir() if "previous-run" in p.name]
    adapter = old / "adapter_model.safetensors"
    assert adapter.read_bytes() != before[adapter]


BAD_ROWS = {  # file name -> (content, the place the error must name, a word it must say)
    "pr.jsonl": ('{"prompt": "Xin chào", "response": "Chào bạn"}\n\n'
                 '{"prompt": "Bạn là ai?", "response": ""}\n', "pr.jsonl:3", "response"),
    "alpaca.jsonl": ('{"instruction": "Dịch", "input": "hello", "output": "xin chào"}\n'
                     '{"instruction": "Tóm tắt"}\n', "alpaca.jsonl:2", "output"),
    "input.jsonl": ('{"instruction": "Dịch", "input": 5, "output": "năm"}\n',
                    "input.jsonl:1", "'input' is int"),
    "qa.jsonl": ('{"question": "Hà Nội ở đâu?", "answer": "Miền Bắc."}\n' * 3
                 + '{"question": "Huế?", "answer": 5}\n', "qa.jsonl:4", "answer"),
    "msgs.jsonl": ('{"messages": [{"role": "user", "content": "Chào"}, '
                   '{"role": "bot", "content": "Chào bạn"}]}\n', "msgs.jsonl:1",
                   "messages[1].role"),
    "sharegpt.jsonl": ('{"conversations": [{"from": "human", "value": "Chào"}, '
                       '{"from": "gpt", "value": "Chào bạn"}]}\n'
                       '{"conversations": [{"from": "human", "value": "Chào"}, '
                       '{"from": "human", "value": "Ơi"}]}\n', "sharegpt.jsonl:2",
                       "conversations"),
    "table.csv": ('question,answer\nHà Nội ở đâu?,Miền Bắc.\n"Huế?",\n', "table.csv:3", "answer"),
    # An unquoted comma would cut the answer at "Chào bạn".
    "comma.csv": ("question,answer\nXin chào,Chào bạn, tôi là trợ lý\n", "comma.csv:2",
                  "3 fields but the header has 2"),
    "list.json": ('[{"question": "Chào", "answer": "Chào bạn"}, {"câu hỏi": "Chào"}]',
                  "list.json item 2", "no known fields"),
    "broken.jsonl": ('{"question": "Chào", "answer": "Chào bạn"}\n{"question": "Chào", \n',
                     "broken.jsonl:2", "not valid JSON"),
    # Text that forges a turn of the template, or a literal EOS, is not trained silently.
    "marker.jsonl": ('{"question": "Chào", "answer": "Chào bạn"}\n'
                     '{"question": "Chào", "answer": "Chào bạn\\n### Câu hỏi: Bạn tên gì?"}\n',
                     "marker.jsonl:2", "'### Câu hỏi' (1 of 2 rows do)"),
    "eos.jsonl": ('{"question": "Chào", "answer": "Chào bạn</s> và tạm biệt"}\n',
                  "eos.jsonl:1", "'</s>'"),
}


@pytest.mark.parametrize("name", BAD_ROWS)
def test_a_bad_row_gets_one_line_with_file_line_field_and_fix(tiny, tmp_path, capsys, name):
    content, place, field = BAD_ROWS[name]
    (tmp_path / name).write_text(content, encoding="utf-8")
    code, out, err = run_here(capsys, "--model", tiny, "--data", tmp_path / name,
                              "--output", tmp_path / "out")
    assert_one_error_line(code, err, f"{tmp_path / place}:", field)


def test_data_is_checked_before_the_model_is_fetched(tmp_path, capsys):
    # A typo in the data must not wait for (or be hidden by) a multi-GB download of the model.
    content, place, field = BAD_ROWS["table.csv"]
    (tmp_path / "table.csv").write_text(content, encoding="utf-8")
    for data, message in [(tmp_path / "table.csv", f"{tmp_path / place}: field '{field}'"),
                          (tmp_path / "missing.jsonl", "file not found")]:
        code, out, err = run_here(capsys, "--model", "vinai/no-such-PhoGPT", "--data", data,
                                  "--output", tmp_path / "o")
        assert code == 1 and message in err and "no-such-PhoGPT" not in err, err


BAD_FLAGS = [
    (["--lr", "0"], "--lr must be between"), (["--lr", "-1e-4"], "--lr"), (["--lr", "1e6"], "--lr"),
    (["--lr", "nan"], "--lr"), (["--epochs", "0"], "--epochs must be between"),
    (["--epochs", "-3"], "--epochs"), (["--epochs", "1e9"], "--epochs"),
    (["--max-steps", "-5"], "--max-steps"),
    (["--batch-size", "0"], "--batch-size must be between 1"),
    (["--batch-size", "100000"], "--batch-size"), (["--grad-accum", "0"], "--grad-accum"),
    (["--lora-r", "0"], "--lora-r"), (["--lora-r", "100000"], "--lora-r"),
    (["--lora-alpha", "-1"], "--lora-alpha"), (["--lora-dropout", "1"], "--lora-dropout"),
    (["--lora-dropout", "-0.1"], "--lora-dropout"), (["--warmup-steps", "-1"], "--warmup-steps"),
    (["--max-length", "-5"], "--max-length"), (["--max-length", "0"], "--max-length"),
    (["--save-steps", "0"], "--save-steps"), (["--logging-steps", "-1"], "--logging-steps"),
    (["--logging-steps", "ten"], "--logging-steps"), (["--recall-limit", "-2"], "--recall-limit"),
    (["--seed", "-1"], "--seed"), (["--lr-scheduler", "cosinus"], "--lr-scheduler"),
    (["--optim", "adam_bogus"], "--optim"), (["--lora-targets", "attn.Wqkv,lm_head"], "lm_head"),
    (["--report-to", "bogus"], "--report-to"),
    (["--report-to", "swanlab"], "pip install swanlab"), (["--device", "tpu"], "--device"),
    (["--template", "alpaca"], "--template"), (["--load-in", "2bit"], "--load-in"),
    (["--bogus-flag"], "--bogus-flag"), (["--resume", "--overwrite"], "pick one"),
]


@pytest.mark.parametrize("flags, message", BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_every_flag_is_checked_before_any_work(tiny, faq, tmp_path, capsys, flags, message):
    code, out, err = run_here(capsys, "--model", tiny, "--data", faq, "--output",
                              tmp_path / "out", *flags)
    assert_one_error_line(code, err, message)
    assert not (tmp_path / "out").exists()


def test_bad_input_gets_one_line(tiny, faq, tmp_path, capsys):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "adapter_config.json").write_text("{}")
    (tmp_path / "a-file").write_text("not a folder")
    (tmp_path / "latin1.csv").write_bytes("question,answer\nHà Nội?,Miền Bắc.\n".encode(
        "cp1258", errors="replace"))
    # Notepad's "Unicode" is UTF-16.
    (tmp_path / "notepad.jsonl").write_text('{"question": "Chào", "answer": "Chào bạn"}\n',
                                            encoding="utf-16")
    cases = [(["--output", tmp_path / "old"], "which no run of ours made"),
             (["--output", tmp_path / "a-file"], "is a file"),
             (["--data", tmp_path / "missing.jsonl"], "file not found"),
             (["--data", tmp_path / "latin1.csv"], "not UTF-8"),
             (["--data", tmp_path / "notepad.jsonl"], "UTF-16 text"),
             (["--resume", "--output", tmp_path / "nothing"], "does not exist")]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "no CUDA GPU"))
    for extra, message in cases:
        code, out, err = run_here(capsys, "--model", tiny, "--data", faq, "--output",
                                  tmp_path / "new", *extra)
        assert_one_error_line(code, err, message)
    # offline here, like a typo'd id
    done = run("--model", "vinai/no-such-PhoGPT", "--data", faq, check=False)
    assert done.returncode == 1 and "no-such-PhoGPT" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_dry_run_prints_examples_and_lengths(tiny, tmp_path, capsys):
    chat = write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "system", "content": "Bạn là trợ lý."},
                      {"role": "user", "content": FAQ[0][0]},
                      {"role": "assistant", "content": FAQ[0][1]},
                      {"role": "user", "content": FAQ[1][0]},
                      {"role": "assistant", "content": FAQ[1][1]}]},
        # VinAI's own format: the prompt is ready-made
        {"prompt": prompts.PHOGPT_USER_FIRST + FAQ[3][0] + prompts.PHOGPT_ASSISTANT,
         "response": FAQ[3][1]},
        {"prompt": FAQ[2][0] * 30, "response": FAQ[2][1]}])
    code, out, err = run_here(capsys, "--model", tiny, "--data", chat, "--dry-run",
                              "--max-length", 100)
    assert code == 0, err
    # both answers of the conversation, EOS included
    assert f"⟦ {FAQ[0][1]}</s>⟧" in out and f"⟦ {FAQ[1][1]}</s>⟧" in out
    # the system text is folded in and not trained
    assert "Bạn là trợ lý.\n\nCửa hàng" in out and "⟦Bạn" not in out
    ready_made = prompts.PHOGPT_USER_FIRST + FAQ[3][0] + prompts.PHOGPT_ASSISTANT
    assert f"\n{ready_made}⟦ {FAQ[3][1]}</s>⟧" in out
    assert "1 truncated by --max-length 100" in out and "median" in out
    assert not (tmp_path / "phogpt-adapter").exists()


def limit_file_size():
    """A full disk, as the script sees it: writes past 64 KiB fail (EFBIG, not a signal)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


def test_a_full_disk_leaves_nothing_that_looks_finished(tiny, faq, tmp_path, capsys):
    output = tmp_path / "adapter"
    done = run("--model", tiny, "--data", faq, "--output", output, "--max-steps", 2,
               "--recall-limit", -1, check=False, preexec_fn=limit_file_size)
    # (the Trainer's progress bar comes before it on stderr)
    # No checkpoint survived the full disk: the fix is to start afresh, not --resume.
    assert_one_error_line(done.returncode, done.stderr.strip().splitlines()[-1] + "\n",
                          "disk is full", "rerun with --overwrite")
    assert "Traceback" not in done.stderr
    for finished in ("adapter_model.safetensors", "training_summary.json", "README.md"):
        assert not (output / finished).exists(), finished
    # The checkpoint cut short by the full disk is not taken for a complete one.
    code, out, err = run_here(capsys, "--model", tiny, "--data", faq, "--output", output,
                              "--max-steps", 2, "--resume")
    assert_one_error_line(code, err, "no complete checkpoint")
    # The command the error advised finishes the run.
    run("--model", tiny, "--data", faq, "--output", output, "--max-steps", 2, "--overwrite",
        "--recall-limit", -1)
    assert (output / "adapter_model.safetensors").exists()


def test_ctrl_c_before_training_says_nothing_was_trained(tiny, faq, tmp_path):
    flags = ["--model", tiny, "--data", faq, "--output", tmp_path / "out", "--max-steps", 500]
    student = subprocess.Popen([sys.executable, SCRIPT, *map(str, flags)],
                               cwd=ROOT, env={**os.environ, **ENV}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    # The data is read: the model loads next.
    assert "examples from" in student.stdout.readline()
    student.send_signal(signal.SIGINT)
    out, err = student.communicate(timeout=120)
    assert student.returncode == 130 and "Traceback" not in err, err
    assert "nothing was trained" in out or "rerun with --resume" in out, out


def test_without_matplotlib_the_last_line_claims_no_plot(tiny, faq, tmp_path, capsys,
                                                         monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    code, out, err = run_here(capsys, "--model", tiny, "--data", faq, "--output",
                              tmp_path / "out", "--max-steps", 2, "--recall-limit", -1)
    assert code == 0, err
    last = out.strip().splitlines()[-1]
    assert "training_summary.json" in last and "loss_curve.png" not in last, last
    assert not (tmp_path / "out" / "loss_curve.png").exists()


def torchrun(*args):
    """The command line of phogpt_qlora.py under torchrun with 2 CPU processes."""
    # a free port, so parallel test runs don't collide
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [str(a) for a in [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", 2,
                             "--master_port", port, SCRIPT, *args]]


def test_torchrun_with_two_processes(tiny, faq, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(torchrun("--model", tiny, "--data", faq, "--output", tmp_path / "ddp",
                                   "--max-steps", 4, "--batch-size", 3, "--recall-limit", 2,
                                   *FAST),
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "training_summary.json").read_text())
    assert summary["steps"] == 4 and summary["tokens_seen"] > 0
    assert (tmp_path / "ddp" / "adapter_model.safetensors").exists()


def test_ctrl_c_in_one_torchrun_process_stops_both_after_the_same_step(tiny, faq, tmp_path):
    common = ["--model", tiny, "--data", faq, "--output", tmp_path / "ddp", "--max-steps", 40,
              "--batch-size", 1, "--recall-limit", -1, "--save-steps", 1000, *FAST[:-2],
              "--logging-steps", 1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    launcher = subprocess.Popen(torchrun(*common), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        for line in launcher.stdout:
            # training runs: Ctrl+C reaches rank 1 only (without a shared flag, rank 0 hangs)
            if " · loss " in line:
                rank1 = [int(p) for p in os.listdir("/proc")
                         if p.isdigit() and _is_rank1_of(int(p), launcher.pid)]
                assert len(rank1) == 1
                os.kill(rank1[0], signal.SIGINT)
                break
        rest = launcher.communicate(timeout=120)[0]
    finally:
        # nothing left running, even if the test failed
        try:
            os.killpg(launcher.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert "rerun with --resume" in rest, rest[-3000:]
    checkpoints = list((tmp_path / "ddp").glob("checkpoint-*"))
    assert len(checkpoints) == 1 and (checkpoints[0] / "adapter_model.safetensors").exists()
    done = subprocess.run(torchrun(*common, "--resume"), cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert json.loads((tmp_path / "ddp" / "training_summary.json").read_text())["steps"] == 40


def _is_rank1_of(pid, launcher_pid):
    try:
        parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        return parent == launcher_pid and b"LOCAL_RANK=1" in environ
    except (OSError, ValueError, IndexError):
        return False


def test_packing_gives_the_same_loss_as_padded_batches(tiny, faq, tmp_path):
    """Packed rows restart attention and ALiBi per example: the first step's loss is the same."""
    first_loss = {}
    for how in ("padded", "packed"):
        run("--model", tiny, "--data", faq, "--output", tmp_path / how, "--max-steps", 1,
            "--batch-size", 6, "--logging-steps", 1, "--recall-limit", -1, "--lora-dropout", 0,
            *(["--packing"] if how == "packed" else []))
        summary = json.loads((tmp_path / how / "training_summary.json").read_text())
        first_loss[how] = summary["final_loss"]
    assert first_loss["packed"] == pytest.approx(first_loss["padded"], rel=1e-4)


def test_phogpt_chat_loads_the_adapter(tiny, trained):
    adapter, _ = trained
    question, answer = FAQ[4]
    done = subprocess.run([sys.executable, str(ROOT / "phogpt_chat.py"), "--model", tiny,
                           "--adapter", str(adapter), "--prompt", question, "--temperature", "0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert answer in done.stdout


# ---- issue 22, what the model learns: every answer ends in </s>; held-out rows are held out ----
def dry_run_lengths(capsys, tiny, data):
    """(shortest, longest) example of data in tokens, as the dry run counts them."""
    code, out, err = run_here(capsys, "--model", tiny, "--data", data, "--dry-run")
    assert code == 0, err
    found = re.search(r"tokens min (\d+), median \d+, max (\d+)", out)
    return int(found[1]), int(found[2])


@pytest.mark.parametrize("mode", [[], ["--dry-run"]], ids=["train", "dry-run"])
@pytest.mark.parametrize("cut", ["--data", "--eval-data"])
def test_a_max_length_that_cuts_the_end_off_every_answer_is_refused(tiny, faq, tmp_path, capsys,
                                                                    cut, mode):
    # The same questions with long answers: every one longer than the longest FAQ example.
    long_rows = [{"question": q, "answer": " ".join([a] * 4)} for q, a in FAQ]
    long = write_jsonl(tmp_path / "long.jsonl", long_rows)
    faq_shortest, faq_longest = dry_run_lengths(capsys, tiny, faq)
    long_shortest, long_longest = dry_run_lengths(capsys, tiny, long)
    assert long_shortest > faq_longest and faq_shortest - 1 >= 16
    # A model that never sees </s> never learns to stop: one line, with the length that fits.
    if cut == "--data":
        flags, max_length, fits, name = [], faq_shortest - 1, faq_longest, faq
    else:
        flags, max_length, fits, name = ["--eval-data", long], faq_longest, long_longest, long
    code, out, err = run_here(capsys, "--model", tiny, "--data", faq, *flags, "--output",
                              tmp_path / "out", "--max-length", max_length, "--max-steps", 1,
                              *mode)
    assert_one_error_line(code, err, f"{name}: --max-length {max_length} cuts the end (</s>)",
                          f"fix: --max-length {fits} keeps them whole")
    assert not (tmp_path / "out").exists()


def test_a_max_length_that_cuts_some_answers_is_a_notice_with_the_length_that_fits(tiny, faq,
                                                                                   capsys):
    shortest, longest = dry_run_lengths(capsys, tiny, faq)
    code, out, err = run_here(capsys, "--model", tiny, "--data", faq, "--dry-run",
                              "--max-length", longest - 1)
    assert code == 0, err
    assert re.search(rf"[1-5] truncated by --max-length {longest - 1} \({longest} keeps all\)",
                     out), out


def write_csv(path, rows):
    import csv
    with open(path, "w", encoding="utf-8", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["question", "answer"])
        writer.writeheader()
        writer.writerows(rows)
    return path


HELD_OUT_IS_TRAINING = {  # --eval-data, given the --data file and its rows; --dry-run or not
    "the same file": (lambda faq, rows, tmp: faq, []),
    "a copy": (lambda faq, rows, tmp: write_jsonl(tmp / "copy.jsonl", rows), ["--dry-run"]),
    "the same rows as CSV": (lambda faq, rows, tmp: write_csv(tmp / "faq.csv", rows), []),
    "some of its rows": (lambda faq, rows, tmp: write_jsonl(tmp / "some.jsonl", rows[3:]),
                         ["--dry-run"]),
}


@pytest.mark.parametrize("how", HELD_OUT_IS_TRAINING)
def test_eval_data_that_is_the_training_data_is_refused(tiny, faq, tmp_path, capsys, how):
    make, mode = HELD_OUT_IS_TRAINING[how]
    held_out = make(faq, [{"question": q, "answer": a} for q, a in FAQ], tmp_path)
    code, out, err = run_here(capsys, "--model", tiny, "--data", faq, "--eval-data", held_out,
                              "--output", tmp_path / "out", "--max-steps", 1,
                              "--recall-limit", -1, *mode)
    assert_one_error_line(code, err, f"--eval-data {held_out}",
                          "a held-out score on the training data")
    assert not (tmp_path / "out").exists()
    # One trained row among held-out ones is a notice: the score still means something.
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [{"question": q, "answer": a}
                                                  for q, a in [FAQ[0], *REPHRASED]])
    code, out, err = run_here(capsys, "--model", tiny, "--data", faq, "--eval-data", mixed,
                              "--dry-run")
    assert code == 0 and "lưu ý: 1/3 dòng của --eval-data cũng có trong --data" in err, err


def test_gradient_checkpointing_recomputes_and_trains_the_same_adapter(tiny, faq, tmp_path, capsys,
                                                                        monkeypatch):
    # On a T4 it is on (auto under CUDA): each block runs again in the backward pass, and the
    # adapter, dropout included, is the one training without it gives.
    from conftest import count_block_forwards
    calls = count_block_forwards(monkeypatch)
    common = ["--model", tiny, "--data", faq, "--max-steps", 3, "--batch-size", 3,
              "--lora-r", 8, "--lora-dropout", 0.1, "--recall-limit", -1]
    runs, forwards = {}, {}
    for setting in ("on", "off"):
        calls.clear()
        runs[setting] = tmp_path / setting
        code, out, err = run_here(capsys, *common, "--output", runs[setting],
                                  "--gradient-checkpointing", setting)
        assert code == 0 and f"gradient checkpointing {setting}" in out, err
        forwards[setting] = len(calls)
    assert forwards["on"] == 2 * forwards["off"] > 0, forwards
    assert_same_adapter(runs["on"], runs["off"])
