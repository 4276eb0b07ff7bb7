"""onechat_tiny.py end to end: run the script as a student would, read what it prints and saves."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "onechat_tiny.py")
SENTENCE = "Question: Xin chào Answer: Công ty BICweb kính chào quý khách!"
PAIRS_FILE = ROOT / "data" / "onechat_pairs.txt"


def run(*flags, stdin=None, env=None, timeout=120):
    """Run onechat_tiny.py in a fresh process, offline; return (exit code, stdout, stderr)."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONIOENCODING": "utf-8", **(env or {})}
    done = subprocess.run(
        [sys.executable, SCRIPT, *flags],
        input=stdin,
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=full_env,
        cwd=ROOT,
        timeout=timeout,
    )
    return done.returncode, done.stdout, done.stderr


def answers(stdout):
    """{question: answer} from the 'Question: ...' / 'Answer: ...' lines the script prints."""
    lines = stdout.splitlines()
    return {
        q[len("Question: ") :]: a[len("Answer: ") :]
        for q, a in zip(lines, lines[1:])
        if q.startswith("Question: ") and a.startswith("Answer: ")
    }


def without_timings(stdout):
    return re.sub(r"\(\d+\.\d+s\)|[\d.]+ s of training", "T", stdout)


def read_pairs_file():
    return [
        tuple(p.strip() for p in line[len("Question:") :].split("Answer:"))
        for line in PAIRS_FILE.read_text(encoding="utf-8").splitlines()
        if line.startswith("Question:")
    ]


@pytest.fixture(scope="module")
def default_run():
    return run()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Train on the sample pairs file and save; shared by the save/load, chat, fine-tune tests."""
    folder = tmp_path_factory.mktemp("onechat") / "model"
    code, out, err = run("--data", str(PAIRS_FILE), "--output", str(folder))
    assert code == 0, err
    return folder, out


def test_default_run_memorises_the_sentence_and_stops_on_eos(default_run):
    code, out, err = default_run
    assert code == 0, err
    epochs = re.findall(r"^\(\d+\.\d{3}s\) Epoch (\d+), Loss (\d+\.\d{6})$", out, re.M)
    assert epochs and [int(e) for e, _ in epochs] == list(range(1, len(epochs) + 1))
    # The loss went down
    assert float(epochs[-1][1]) < float(epochs[0][1])
    match = re.search(r"^Exact answer after (\d+) epochs, [\d.]+ s of training\.$", out, re.M)
    # It stopped at the first exact epoch
    assert match and int(match.group(1)) == len(epochs)
    # The answer is exactly the sentence's answer, with nothing after it: the model emitted EOS
    # itself.
    assert answers(out) == {"Xin chào": "Công ty BICweb kính chào quý khách!"}
    assert "no EOS" not in out and "Traceback" not in err


def test_nfd_input_gives_the_same_run_as_nfc(default_run):
    nfd = unicodedata.normalize("NFD", SENTENCE)
    assert nfd != SENTENCE
    code, out, err = run("--sentence", nfd)
    assert code == 0, err
    # Same tokens, same seed: the same losses and answer, printed in NFC (also shows runs are
    # reproducible).
    assert without_timings(out) == without_timings(default_run[1])
    assert unicodedata.is_normalized("NFC", out)


def test_pasted_in_a_notebook_ignores_the_kernel_argv():
    code = (
        "import runpy, sys; sys.modules['ipykernel'] = sys; "
        "sys.argv = ['ipykernel_launcher.py', '-f', '/tmp/kernel-1.json']; "
        f"runpy.run_path({SCRIPT!r}, run_name='__main__')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert answers(done.stdout) == {"Xin chào": "Công ty BICweb kính chào quý khách!"}


def test_several_pairs_from_data_are_all_exact_and_saved(saved):
    folder, out = saved
    expected = dict(read_pairs_file())
    assert len(expected) >= 4
    assert answers(out) == expected
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.bin"))
    assert (folder / "tokenizer.json").is_file()
    summary = json.loads((folder / "onechat_run.json").read_text(encoding="utf-8"))
    assert summary["exact"] is True and summary["epochs_run"] >= 1
    assert [(p["question"], p["generated"]) for p in summary["pairs"]] == list(expected.items())


def test_load_answers_identically_without_training(saved):
    folder, out = saved
    code, loaded, err = run("--load", str(folder))
    assert code == 0, err
    # No training
    assert "Epoch" not in loaded
    assert answers(loaded) == answers(out)


def test_chat_answers_in_a_loop_until_an_empty_line_or_end_of_input(saved):
    folder, _ = saved
    pairs = dict(read_pairs_file())
    questions = ["Công ty ở đâu?", unicodedata.normalize("NFD", "Cảm ơn bạn"), "", "Xin chào"]
    code, out, err = run("--load", str(folder), "--chat", stdin="\n".join(questions) + "\n")
    assert code == 0, err
    # First what it learned, then the chat, which stopped at ""
    chat = re.findall(r"Answer: (.*)", out)[len(pairs):]
    assert chat == [pairs["Công ty ở đâu?"], pairs["Cảm ơn bạn"]]
    # --prompt answers one question first; then the loop ends at end of input (Ctrl+D).
    code, out, err = run(
        "--load", str(folder), "--prompt", "Question: Mấy giờ mở cửa?", "--chat", stdin="Xin chào\n"
    )
    assert code == 0, err
    assert re.findall(r"Answer: (.*)", out) == [pairs["Mấy giờ mở cửa?"], pairs["Xin chào"]]


def test_fine_tunes_a_hub_model_id_from_the_local_cache_tokenizer_without_pad(saved, tmp_path):
    from transformers import AutoTokenizer

    folder, _ = saved
    assert AutoTokenizer.from_pretrained(folder).pad_token is None
    # Lay the saved model out as the hub cache does, so the model id resolves offline.
    repo = tmp_path / "hub" / "models--onechat--tiny-test"
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(folder, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    data = tmp_path / "new.txt"
    pair = "Question: Bạn tên gì? Answer: Tôi là trợ lý ảo của BICweb.\n"
    data.write_text(pair, encoding="utf-8")
    code, out, err = run(
        "--model",
        "onechat/tiny-test",
        "--data",
        str(data),
        "--lr",
        "3e-3",
        "--epochs",
        "100",
        env={"HF_HOME": str(tmp_path)},
    )
    assert code == 0, err
    assert "Model onechat/tiny-test:" in out and "lr 0.003" in out
    assert answers(out) == {"Bạn tên gì?": "Tôi là trợ lý ảo của BICweb."}


def test_nfd_data_with_comments_a_byte_order_mark_and_full_loss(tmp_path):
    lines = [
        "# my pairs",
        "Question: Chào buổi sáng Answer: Chúc quý khách một ngày tốt lành!",
        "",
        unicodedata.normalize("NFD", "Question: Tạm biệt Answer: Hẹn gặp lại quý khách!"),
    ]
    data = tmp_path / "pairs.txt"
    # utf-8-sig: what Windows Notepad writes as "UTF-8"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8-sig")
    code, out, err = run("--data", str(data), "--loss", "full")
    assert code == 0, err
    assert "loss on full" in out
    assert answers(out) == {
        "Chào buổi sáng": "Chúc quý khách một ngày tốt lành!",
        "Tạm biệt": "Hẹn gặp lại quý khách!",
    }


def test_sweep_bench_writes_a_markdown_table(tmp_path):
    """The old --sweep lives in bench/: one onechat_tiny.py run per size, figures to a file."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "onechat_sweep.py"), "--models", "1x16,2x32",
         "--output", str(tmp_path / "sweep")],
        capture_output=True, text=True, encoding="utf-8", cwd=ROOT, timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONIOENCODING": "utf-8"},
    )
    assert done.returncode == 0, done.stderr
    rows = (tmp_path / "sweep.md").read_text(encoding="utf-8").splitlines()
    assert rows[0].startswith("| model | parameters | lr | epochs to exact |")
    assert [r.split("|")[1].strip() for r in rows[2:]] == ["scratch 1x16", "scratch 2x32"]
    for row in rows[2:]:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert int(cells[1].replace(",", "")) > 0 and int(cells[3]) >= 1
        assert cells[6] == "Công ty BICweb kính chào quý khách!"
    assert int(rows[2].split("|")[2].replace(",", "")) < int(rows[3].split("|")[2].replace(",", ""))
    figures = json.loads((tmp_path / "sweep.json").read_text(encoding="utf-8"))
    assert [r["epochs_to_exact"] >= 1 for r in figures["rows"]] == [True, True]


def test_says_plainly_when_it_did_not_memorise():
    code, out, err = run("--epochs", "1")
    assert code == 2
    assert "NOT memorised after 1 epochs" in out and "Traceback" not in err


def one_line_error(code, err, *words):
    assert code not in (0, 2), err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    for word in words:
        assert word in err


@pytest.mark.parametrize(
    "flags, words",
    [
        (
            ["--sentence", "Xin chào, Công ty BICweb kính chào quý khách!"],
            ["--sentence", "Question: ... Answer: ..."],
        ),
        (["--sentence", "Question: Xin chào Answer:   "], ["empty"]),
        (["--data", "no/such/file.txt"], ["--data", "No such file"]),
        (["--lr", "0"], ["--lr", "between"]),
        (["--lr", "3"], ["--lr", "between"]),
        (["--epochs", "0"], ["--epochs", "between"]),
        (["--max-length", "4"], ["--max-length", "between"]),
        (["--size", "2x7"], ["--size", "between 8 and"]),
        (["--size", "2"], ["--size", "(got )"]),
        (["--device", "tpu"], ["--device"]),
        (["--loss", "question"], ["--loss"]),
        (["--load", "no/such/folder"], ["--load", "onechat_run.json"]),
        (["--no-such-flag"], ["--no-such-flag"]),
        (["--prompt", "Answer:"], ["--prompt", "holds no question"]),
        (["--max-length", "10"], ["over --max-length 10 tokens"]),
    ],
)
def test_bad_flags_give_one_clear_line(flags, words):
    one_line_error(*run(*flags)[::2], *words)


def test_bad_data_files_give_one_clear_line_with_the_line_number(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n", encoding="utf-8")
    one_line_error(*run("--data", str(empty))[::2], "no Question/Answer pairs")
    no_answer = tmp_path / "no_answer.txt"
    no_answer.write_text("Question: Xin chào Answer: Chào bạn!\nQuestion: Xin chào\n", "utf-8")
    one_line_error(*run("--data", str(no_answer))[::2], "line 2", "Question: ... Answer: ...")
    bad_text = tmp_path / "bad.txt"
    bad_text.write_text(SENTENCE + "\n\nXin chào mà không có câu trả lời\n", encoding="utf-8")
    one_line_error(*run("--data", str(bad_text))[::2], "line 3")


def test_unreachable_hub_model_says_so_in_one_line(tmp_path):
    code, out, err = run(
        "--model", "roneneldan/TinyStories-33M", env={"HF_HOME": str(tmp_path)}, timeout=60
    )
    one_line_error(code, err, "cannot load roneneldan/TinyStories-33M", "connect", "fix:")


def test_unavailable_device_says_so():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    one_line_error(*run("--device", "cuda")[::2], "--device cuda", "--device cpu")


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--seed", str(2**70)], ["--seed", "between"]),
        (["--max-length", "1000000000"], ["--max-length", "between"]),
        (["--epochs", "1000000000"], ["--epochs", "between"]),
        (["--epochs", "-3"], ["--epochs", "between"]),
        (["--lr", "nan"], ["--lr", "between"]),
        (["--lr", "-0.001"], ["--lr", "between"]),
        (["--lr", "fast"], ["--lr", "between"]),
        (["--size", "1000x64"], ["--size", "between 1 and 48"]),
        (["--size", "2x99999"], ["--size", "between 8 and 4,096"]),
    ],
)
def test_every_numeric_flag_is_checked_with_its_range(flags, words):
    one_line_error(*run(*flags)[::2], *words)


def test_help_shows_the_defaults():
    code, out, err = run("--help")
    assert code == 0, err
    assert "(default: 2x64)" in out and "(default: auto)" in out


SAVED = [".phogpt-run.json", ".phogpt-run.lock", "config.json", "generation_config.json",
         "model.safetensors", "onechat_run.json", "tokenizer.json", "tokenizer_config.json"]


def test_output_of_an_earlier_run_is_replaced_only_with_overwrite(tmp_path):
    folder = tmp_path / "bot"
    code, out, err = run("--output", str(folder))
    assert code == 0, err
    assert sorted(p.name for p in folder.iterdir()) == SAVED
    one_line_error(*run("--output", str(folder))[::2], "--output", "--overwrite")
    code, out, err = run("--output", str(folder), "--overwrite", "--sentence",
                         "Question: Tạm biệt Answer: Hẹn gặp lại!")
    assert code == 0, err
    assert sorted(p.name for p in folder.iterdir()) == SAVED
    summary = json.loads((folder / "onechat_run.json").read_text(encoding="utf-8"))
    assert [p["question"] for p in summary["pairs"]] == ["Tạm biệt"]
    # Saved under a temporary name, then moved in: nothing else is left next to it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bot"]


def test_a_folder_with_the_users_own_files_is_never_touched(tmp_path):
    folder = tmp_path / "bot"
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes", encoding="utf-8")
    for flags in [[], ["--overwrite"]]:
        one_line_error(*run("--output", str(folder), *flags)[::2], "--output", "notes.txt")
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    # Nor the working folder, nor the data.
    one_line_error(*run("--output", ".", "--overwrite")[::2], "--output", "working folder")
    one_line_error(*run("--output", str(ROOT / "data"), "--data", str(PAIRS_FILE),
                        "--overwrite")[::2], "--output", "--data")


def test_never_deletes_the_users_output_old_or_output_partial(tmp_path):
    """onechat once used OUTPUT.old and OUTPUT.partial as its own temporary names."""
    folder = tmp_path / "bot"
    for name in ["bot.old", "bot.partial"]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "thesis.txt").write_text("mine", encoding="utf-8")
    for flags in [[], ["--overwrite"], ["--overwrite"]]:
        code, out, err = run("--output", str(folder), *flags)
        assert code == 0, err
    for name in ["bot.old", "bot.partial"]:
        assert (tmp_path / name / "thesis.txt").read_text(encoding="utf-8") == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bot", "bot.old", "bot.partial"]
    assert sorted(p.name for p in folder.iterdir()) == SAVED


def test_output_that_is_a_file_is_one_line_before_any_work(tmp_path):
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("x", encoding="utf-8")
    code, out, err = run("--output", str(a_file))
    one_line_error(code, err, "--output", "is a file")
    assert "Epoch" not in out
    assert a_file.read_text(encoding="utf-8") == "x"


def test_output_inside_a_file_is_one_line(tmp_path):
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("x", encoding="utf-8")
    one_line_error(*run("--output", str(a_file / "bot"))[::2], "--output")


def start(*flags):
    """Start onechat_tiny.py as a student would in a terminal (Ctrl+C sends SIGINT)."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONIOENCODING": "utf-8",
        "PYTHONUNBUFFERED": "1",
    }
    return subprocess.Popen(
        [sys.executable, SCRIPT, *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        env=env,
        cwd=ROOT,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


# When Ctrl+C comes: during the imports, or in training.
@pytest.mark.parametrize("when", [1.0, "epoch 1", "epoch 3"])
def test_ctrl_c_stops_training_and_keeps_what_it_learned(when, tmp_path):
    folder = tmp_path / "bot"
    # A learning rate this small never memorises: the run ends only by Ctrl+C.
    proc = start("--output", str(folder), "--lr", "1e-6", "--epochs", "100000")
    if isinstance(when, float):
        time.sleep(when)
    else:
        for line in proc.stdout:
            if re.match(rf"^\(\d+\.\d+s\) Epoch {when.split()[1]},", line):
                break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert "Traceback" not in err
    if isinstance(when, float):
        assert proc.returncode == 130 and "Ctrl+C: stopped" in out, err
        # The folder this run made, still empty, went again.
        assert list(tmp_path.iterdir()) == []
        return
    # In training: it stops, answers with what it learned and saves that (exit 2: not exact).
    assert proc.returncode == 2, err
    assert "Ctrl+C: training stopped in epoch" in out
    assert "Answer:" in out and (folder / "onechat_run.json").is_file()


def test_a_save_that_fails_on_a_full_disk_is_one_line_and_keeps_the_earlier_run(tmp_path):
    folder = tmp_path / "bot"
    code, _, err = run("--output", str(folder))
    earlier = (folder / "onechat_run.json").read_text(encoding="utf-8")
    # A full disk, as the script sees it: writes past 64 KiB fail (EFBIG, not a signal).
    code = ("import resource, runpy, signal, sys\n"
            f"sys.path.insert(0, {str(ROOT)!r})\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))\n"
            f"sys.argv = [{SCRIPT!r}, '--output', {str(folder)!r}, '--overwrite']\n"
            f"runpy.run_path({SCRIPT!r}, run_name='__main__')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    one_line_error(done.returncode, done.stderr, "--output", "saving failed")
    assert (folder / "onechat_run.json").read_text(encoding="utf-8") == earlier
    assert not [p for p in folder.iterdir() if p.name.startswith(".phogpt-previous")]


def test_other_encodings_than_utf8_are_one_line(tmp_path):
    text = "".join(f"Question: {q} Answer: {a}\n" for q, a in read_pairs_file()[:2])
    utf16 = tmp_path / "notepad.txt"
    # What Windows Notepad writes when saving as "Unicode".
    utf16.write_text(text, encoding="utf-16")
    one_line_error(*run("--data", str(utf16))[::2], "--data", "UTF-8")
    legacy = tmp_path / "legacy.txt"
    # Vietnamese in Windows' legacy code page, as an old editor might save it.
    vietnamese = unicodedata.normalize("NFD", "Question: Chào Answer: Dạ, chào bạn!")
    legacy.write_bytes(b"# a comment\n" + vietnamese.encode("cp1258"))
    one_line_error(*run("--data", str(legacy))[::2], "--data", "UTF-8", "fix:")


def test_chat_goes_on_after_a_line_that_is_not_utf8(saved):
    folder, _ = saved
    done = subprocess.run(
        [sys.executable, SCRIPT, "--load", str(folder), "--chat"],
        input=b"\xff\xfe garbage\nXin ch\xc3\xa0o\n",
        capture_output=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONIOENCODING": "utf-8"},
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0 and b"Traceback" not in done.stderr, done.stderr
    assert "Answer: " + dict(read_pairs_file())["Xin chào"] in done.stdout.decode("utf-8")


def test_a_phogpt_model_is_pointed_to_the_phogpt_scripts(tiny_phogpt):
    for model in [tiny_phogpt, "vinai/PhoGPT-4B-Chat"]:
        one_line_error(*run("--model", model)[::2], "PhoGPT", "phogpt_qlora.py", "phogpt_chat.py")


@pytest.mark.parametrize("damage", ["truncated model.safetensors", "garbled tokenizer.json"])
def test_a_damaged_saved_model_is_one_line(saved, tmp_path, damage):
    folder, _ = saved
    copy = tmp_path / "bot"
    shutil.copytree(folder, copy)
    name = damage.split()[1]
    data = (copy / name).read_bytes()
    (copy / name).write_bytes(data[: len(data) // 2] if "truncated" in damage else b"\xff" * 50)
    one_line_error(*run("--load", str(copy))[::2], f"cannot load {copy}", "fix:")
