"""phogpt_qlora.py end to end on a tiny PhoGPT-format checkpoint (CPU, offline)."""
import json, os, runpy, shutil, signal, subprocess, sys
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
FAST = ["--lora-r", "16", "--lora-alpha", "32", "--lora-dropout", "0.0", "--lr", "1e-2", "--logging-steps", "10"]


def run(*args, check=True, **kwargs):
    """Run the script as a student would; return the finished process (stdout and stderr as text)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, SCRIPT, *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, **kwargs)
    if check:
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def run_here(capsys, *args):
    """Run the script in this process (cheap: torch is already imported); return (exit code, stdout, stderr)."""
    argv, sys.argv = sys.argv, [SCRIPT, *map(str, args)]
    try:
        runpy.run_path(SCRIPT, run_name="__main__")
        code = 0
    except SystemExit as exit:
        code = exit.code
    finally:
        sys.argv = argv
    out = capsys.readouterr()
    return code, out.out, out.err


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def assert_same_adapter(resumed_dir, whole_dir):
    """The adapter a resumed run saved equals the one of an uninterrupted run, tensor by tensor."""
    from safetensors.torch import load_file
    resumed, whole = (load_file(Path(d) / "adapter_model.safetensors") for d in (resumed_dir, whole_dir))
    assert whole.keys() == resumed.keys()
    for name in whole:
        torch.testing.assert_close(resumed[name], whole[name], rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    texts = [q + " " + a for q, a in FAQ] + [prompts.PHOGPT_USER_FIRST, prompts.PHOGPT_ASSISTANT, "Xin chào"]
    return save_tiny_checkpoint(str(tmp_path_factory.mktemp("tiny") / "phogpt"), texts)


@pytest.fixture(scope="module")
def faq(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "faq.jsonl", [{"question": q, "answer": a} for q, a in FAQ])


@pytest.fixture(scope="module")
def trained(tiny, faq, tmp_path_factory):
    """One SFT run on the FAQ, shared by the tests that need a trained adapter."""
    output = tmp_path_factory.mktemp("runs") / "adapter"
    done = run("--model", tiny, "--data", faq, "--output", output, "--epochs", 150, "--batch-size", 6, *FAST)
    return output, done.stdout


def test_learns_every_answer_and_stops_at_eos(tiny, trained):
    output, stdout = trained
    assert "answered 6/6 exactly" in stdout
    summary = json.loads((output / "training_summary.json").read_text())
    assert summary["recall"] == {"exact": 6, "total": 6} and summary["steps"] == 150 and summary["tokens_per_s"] > 0
    assert (output / "loss_curve.png").stat().st_size > 1000
    assert summary["final_loss"] < 0.1
    # plain peft loads the adapter on the base, and greedy decoding gives the answer then EOS
    from peft import PeftModel
    base, tokenizer = load_phogpt(tiny)
    model = PeftModel.from_pretrained(base, output).eval()
    question, answer = FAQ[1]
    prompt = prompts.generation_prompt([{"role": "user", "content": question}], tokenizer.eos_token)
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    new = model.generate(ids, max_new_tokens=40, do_sample=False, use_cache=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)[0, ids.shape[1]:].tolist()
    assert new[-1] == tokenizer.eos_token_id and tokenizer.decode(new[:-1]) == " " + answer


def test_ctrl_c_saves_a_checkpoint_and_resume_matches_an_uninterrupted_run(tiny, faq, tmp_path):
    common = ["--model", tiny, "--data", faq, "--max-steps", 60, "--batch-size", 2, "--save-steps", 1000,
              "--recall-limit", -1, *FAST[:-4], "--lora-dropout", "0.1", "--logging-steps", 1]
    run(*common, "--output", tmp_path / "whole")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    student = subprocess.Popen([sys.executable, SCRIPT, *map(str, common), "--output", tmp_path / "cut"], cwd=ROOT,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in student.stdout:
        if "'loss'" in line:
            student.send_signal(signal.SIGINT)  # the student presses Ctrl+C mid-training
            break
    rest = student.stdout.read()
    assert student.wait(timeout=120) == 130, rest
    assert "rerun with --resume" in rest and list((tmp_path / "cut").glob("checkpoint-*"))
    resumed_run = run(*common, "--output", tmp_path / "cut", "--resume")
    assert f"resuming from {tmp_path / 'cut' / 'checkpoint-'}" in resumed_run.stdout  # not a fresh start
    assert_same_adapter(tmp_path / "cut", tmp_path / "whole")


BAD_ROWS = {  # file name -> (content, the place the error must name)
    "pr.jsonl": ('{"prompt": "Xin chào", "response": "Chào bạn"}\n\n{"prompt": "Bạn là ai?", "response": ""}\n', "pr.jsonl:3", "response"),
    "alpaca.jsonl": ('{"instruction": "Dịch", "input": "hello", "output": "xin chào"}\n{"instruction": "Tóm tắt"}\n', "alpaca.jsonl:2", "output"),
    "qa.jsonl": ('{"question": "Hà Nội ở đâu?", "answer": "Miền Bắc."}\n' * 3 + '{"question": "Huế?", "answer": 5}\n', "qa.jsonl:4", "answer"),
    "msgs.jsonl": ('{"messages": [{"role": "user", "content": "Chào"}, {"role": "bot", "content": "Chào bạn"}]}\n', "msgs.jsonl:1", "messages[1].role"),
    "sharegpt.jsonl": ('{"conversations": [{"from": "human", "value": "Chào"}, {"from": "gpt", "value": "Chào bạn"}]}\n'
                       '{"conversations": [{"from": "human", "value": "Chào"}, {"from": "human", "value": "Ơi"}]}\n', "sharegpt.jsonl:2", "conversations"),
    "table.csv": ("question,answer\nHà Nội ở đâu?,Miền Bắc.\n\"Huế?\",\n", "table.csv:3", "answer"),
    "list.json": ('[{"question": "Chào", "answer": "Chào bạn"}, {"câu hỏi": "Chào"}]', "list.json item 2", "no known fields"),
    "broken.jsonl": ('{"question": "Chào", "answer": "Chào bạn"}\n{"question": "Chào", \n', "broken.jsonl:2", "not valid JSON"),
}


@pytest.mark.parametrize("name", BAD_ROWS)
def test_a_bad_row_gets_one_line_with_file_line_field_and_fix(tiny, tmp_path, capsys, name):
    content, place, field = BAD_ROWS[name]
    (tmp_path / name).write_text(content, encoding="utf-8")
    code, out, err = run_here(capsys, "--model", tiny, "--data", tmp_path / name, "--output", tmp_path / "out")
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"{tmp_path / place}:" in err or f"{tmp_path / place}: " in err, err
    assert field in err and "fix:" in err


def test_data_is_checked_before_the_model_is_fetched(tmp_path, capsys):
    # A typo in the data must not wait for (or be hidden by) a multi-GB download of the model.
    content, place, field = BAD_ROWS["table.csv"]
    (tmp_path / "table.csv").write_text(content, encoding="utf-8")
    for data, message in [(tmp_path / "table.csv", f"{tmp_path / place}: field '{field}'"),
                          (tmp_path / "missing.jsonl", "file not found")]:
        code, out, err = run_here(capsys, "--model", "vinai/no-such-PhoGPT", "--data", data, "--output", tmp_path / "o")
        assert code == 1 and message in err and "no-such-PhoGPT" not in err, err


def test_bad_input_gets_one_line(tiny, faq, tmp_path, capsys):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "adapter_config.json").write_text("{}")
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "adapter_config.json").write_text("{not json")
    cases = [(["--output", tmp_path / "old"], "already exists"),
             (["--merge", "--adapter", tmp_path / "damaged"], "adapter_config.json is not valid"),
             (["--load-in", "4bit"], "needs a CUDA GPU"),
             (["--merge", "--adapter", tmp_path / "nothing"], "no adapter_config.json"),
             (["--data", tmp_path / "missing.jsonl"], "file not found"),
             (["--data", tmp_path / "latin1.csv"], "not UTF-8")]
    (tmp_path / "latin1.csv").write_bytes("question,answer\nHà Nội?,Miền Bắc.\n".encode("cp1258", errors="replace"))
    for extra, message in cases:
        code, out, err = run_here(capsys, "--model", tiny, "--data", faq, "--output", tmp_path / "new", *extra)
        assert code == 1 and message in err and err.count("\n") == 1 and "Traceback" not in err, (extra, err)
    done = run("--model", "vinai/no-such-PhoGPT", "--data", faq, check=False)  # offline here, like a typo'd id
    assert done.returncode == 1 and "no-such-PhoGPT" in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_dry_run_prints_examples_lengths_and_t4_estimates(tiny, tmp_path, capsys):
    chat = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [
        {"role": "system", "content": "Bạn là trợ lý."}, {"role": "user", "content": FAQ[0][0]},
        {"role": "assistant", "content": FAQ[0][1]}, {"role": "user", "content": FAQ[1][0]},
        {"role": "assistant", "content": FAQ[1][1]}]},
        {"prompt": prompts.PHOGPT_USER_FIRST + FAQ[3][0] + prompts.PHOGPT_ASSISTANT, "response": FAQ[3][1]},  # VinAI's format
        {"prompt": FAQ[2][0] * 30, "response": FAQ[2][1]}])
    code, out, err = run_here(capsys, "--model", tiny, "--data", chat, "--dry-run", "--max-length", 100)
    assert code == 0, err
    assert f"⟦ {FAQ[0][1]}</s>⟧" in out and f"⟦ {FAQ[1][1]}</s>⟧" in out  # both answers of the conversation, EOS included
    assert "Bạn là trợ lý.\n\nCửa hàng" in out and "⟦Bạn" not in out  # the system text is folded in and not trained
    assert f"\n{prompts.PHOGPT_USER_FIRST}{FAQ[3][0]}{prompts.PHOGPT_ASSISTANT}⟦ {FAQ[3][1]}</s>⟧" in out  # kept as is
    assert "1 truncated by --max-length 100" in out and "T4 estimate" in out and "GiB" in out and "$" in out
    assert not (tmp_path / "phogpt-adapter").exists()


def test_dpo_raises_the_chosen_over_rejected_margin(tiny, trained, tmp_path):
    from peft import PeftModel
    adapter, _ = trained
    pairs = [{"prompt": q, "chosen": a, "rejected": FAQ[(i + 1) % len(FAQ)][1]} for i, (q, a) in enumerate(FAQ)]
    data = write_jsonl(tmp_path / "dpo.jsonl", [{**p, "chosen": p["rejected"], "rejected": p["chosen"]} for p in pairs])
    done = run("--method", "dpo", "--model", tiny, "--data", data, "--adapter", adapter, "--output", tmp_path / "dpo",
               "--max-steps", 10, "--batch-size", 6, "--lr", "1e-3", "--logging-steps", 5)
    assert "preference pairs" in done.stdout

    def margin(adapter_dir):  # sum over pairs of log p(chosen) - log p(rejected), chosen/rejected as in the DPO file
        base, tokenizer = load_phogpt(tiny)
        model = PeftModel.from_pretrained(base, adapter_dir).eval()
        total = 0.0
        for p in pairs:
            prompt = prompts.generation_prompt([{"role": "user", "content": p["prompt"]}], tokenizer.eos_token)
            for answer, sign in ((p["rejected"], 1), (p["chosen"], -1)):  # the file swapped them
                head = tokenizer(prompt, add_special_tokens=False).input_ids
                tail = tokenizer(" " + answer, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
                with torch.no_grad():
                    logits = model(torch.tensor([head + tail])).logits[0, len(head) - 1 : -1]
                total += sign * logits.log_softmax(-1).gather(1, torch.tensor(tail)[:, None]).sum().item()
        return total

    before, after = margin(adapter), margin(tmp_path / "dpo")
    assert after > before + 1.0, (before, after)
    assert not (tmp_path / "dpo" / "ref").exists()  # only the trained adapter is saved


def test_dpo_resumes_to_the_weights_of_an_uninterrupted_run(tiny, trained, tmp_path):
    adapter, _ = trained
    data = write_jsonl(tmp_path / "dpo.jsonl", [{"prompt": q, "chosen": a, "rejected": FAQ[(i + 1) % len(FAQ)][1]}
                                                for i, (q, a) in enumerate(FAQ)])
    common = ["--method", "dpo", "--model", tiny, "--data", data, "--adapter", adapter, "--max-steps", 4,
              "--save-steps", 2, "--batch-size", 2, "--lr", "1e-3", "--lora-dropout", "0.1"]
    run(*common, "--output", tmp_path / "whole")
    run(*common, "--output", tmp_path / "cut")
    for later in ("checkpoint-4", "adapter_model.safetensors"):  # as if it had stopped after step 2
        path = tmp_path / "cut" / later
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    resumed_run = run(*common, "--output", tmp_path / "cut", "--resume")
    assert f"resuming from {tmp_path / 'cut' / 'checkpoint-2'}" in resumed_run.stdout  # not a fresh start
    assert_same_adapter(tmp_path / "cut", tmp_path / "whole")


def test_merge_matches_adapter_on_base(tiny, trained, tmp_path, capsys):
    from peft import PeftModel
    adapter, _ = trained
    code, out, err = run_here(capsys, "--merge", "--adapter", adapter, "--output", tmp_path / "merged", "--dtype", "fp32")
    assert code == 0 and "merged logits vs adapter-on-base" in out, err
    assert (tmp_path / "merged" / "model.safetensors").exists() and (tmp_path / "merged" / "tokenizer.json").exists()
    merged, tokenizer = load_phogpt(str(tmp_path / "merged"))
    base, _ = load_phogpt(tiny)
    with_adapter = PeftModel.from_pretrained(base, adapter).eval()
    ids = torch.tensor([tokenizer(prompts.generation_prompt([{"role": "user", "content": FAQ[0][0]}], "</s>"), add_special_tokens=False).input_ids])
    with torch.no_grad():
        torch.testing.assert_close(merged.eval()(ids).logits, with_adapter(ids).logits, rtol=1e-4, atol=1e-4)
    code, out, err = run_here(capsys, "--merge", "--adapter", adapter, "--output", tmp_path / "bf16")  # the default on a CPU
    assert code == 0 and "(torch.bfloat16)" in out, err
    code, out, err = run_here(capsys, "--merge", "--adapter", adapter, "--output", tmp_path / "m4", "--load-in", "4bit")
    assert code == 1 and "can't merge an adapter into a 4bit base" in err


def torchrun(*args):
    """The command line of phogpt_qlora.py under torchrun with 2 CPU processes."""
    import socket
    with socket.socket() as s:  # a free port, so parallel test runs don't collide
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [str(a) for a in [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", 2, "--master_port", port,
                             SCRIPT, *args]]


def test_torchrun_with_two_processes(tiny, faq, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(torchrun("--model", tiny, "--data", faq, "--output", tmp_path / "ddp", "--max-steps", 4,
                                   "--batch-size", 3, "--recall-limit", 2, *FAST),
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "training_summary.json").read_text())
    assert summary["steps"] == 4 and summary["tokens_seen"] > 0
    assert (tmp_path / "ddp" / "adapter_model.safetensors").exists()


def test_ctrl_c_in_one_torchrun_process_stops_both_after_the_same_step(tiny, faq, tmp_path):
    common = ["--model", tiny, "--data", faq, "--output", tmp_path / "ddp", "--max-steps", 40, "--batch-size", 1,
              "--recall-limit", -1, "--save-steps", 1000, *FAST[:-2], "--logging-steps", 1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    launcher = subprocess.Popen(torchrun(*common), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        for line in launcher.stdout:
            if "'loss'" in line:  # training runs: Ctrl+C reaches rank 1 only (without a shared flag, rank 0 hangs)
                rank1 = [int(p) for p in os.listdir("/proc") if p.isdigit() and _is_rank1_of(int(p), launcher.pid)]
                assert len(rank1) == 1
                os.kill(rank1[0], signal.SIGINT)
                break
        rest = launcher.communicate(timeout=120)[0]
    finally:
        try:
            os.killpg(launcher.pid, signal.SIGKILL)  # nothing left running, even if the test failed
        except ProcessLookupError:
            pass
    assert "rerun with --resume" in rest, rest[-3000:]
    checkpoints = list((tmp_path / "ddp").glob("checkpoint-*"))
    assert len(checkpoints) == 1 and (checkpoints[0] / "adapter_model.safetensors").exists()
    done = subprocess.run(torchrun(*common, "--resume"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert json.loads((tmp_path / "ddp" / "training_summary.json").read_text())["steps"] == 40


def _is_rank1_of(pid, launcher_pid):
    try:
        parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        return parent == launcher_pid and b"LOCAL_RANK=1" in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return False


def test_packing_gives_the_same_loss_as_padded_batches(tiny, faq, tmp_path):
    """Packed rows restart attention and ALiBi per example: the first step's loss equals the padded batch's."""
    first_loss = {}
    for how in ("padded", "packed"):
        run("--model", tiny, "--data", faq, "--output", tmp_path / how, "--max-steps", 1, "--batch-size", 6,
            "--logging-steps", 1, "--recall-limit", -1, "--lora-dropout", 0, *(["--packing"] if how == "packed" else []))
        first_loss[how] = json.loads((tmp_path / how / "training_summary.json").read_text())["final_loss"]
    assert first_loss["packed"] == pytest.approx(first_loss["padded"], rel=1e-4)


def test_phogpt_chat_loads_the_adapter(tiny, trained):
    adapter, _ = trained
    question, answer = FAQ[4]
    done = subprocess.run([sys.executable, str(ROOT / "phogpt_chat.py"), "--model", tiny, "--adapter", str(adapter),
                           "--prompt", question, "--temperature", "0"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert answer in done.stdout
