"""With the model, adapter and data on disk, no script looks up or connects to another machine,
even without HF_HUB_OFFLINE. Every process below loads tests/netguard/sitecustomize.py, which
refuses and records each non-loopback look-up and connection, while the offline tour of the
README runs: tiny_phogpt.py, training, chat (one answer and the web page), DPO, export, onechat."""
import os
import socket
import subprocess
import sys
import time
import urllib.request
from importlib.util import find_spec

from conftest import ROOT

GUARD = os.path.join(ROOT, "tests", "netguard")
QUESTION = "Trung tâm có xuất hóa đơn không?"
# Switches that would hide a network call: the scripts must do without them.
HIDING = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE",
          "HF_HUB_DISABLE_TELEMETRY", "GRADIO_ANALYTICS_ENABLED", "USE_HUB_KERNELS")


def guarded_env(log):
    env = {key: value for key, value in os.environ.items() if key not in HIDING}
    env.update(PYTHONPATH=GUARD, NETGUARD_LOG=str(log), PYTHONIOENCODING="utf-8",
               OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return env


def run(script, *flags, cwd, env):
    done = subprocess.run([sys.executable, os.path.join(ROOT, script), *flags], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{script} failed:\n{done.stderr[-3000:]}"
    return done.stdout


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def open_page(port, env, cwd):
    """Start the web page, read it once over loopback, stop it."""
    server = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "phogpt_chat.py"), "--model", "tiny-phogpt",
         "--adapter", "tiny-adapter", "--ui", "--port", str(port)],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as page:
                    return page.read().decode("utf-8", "replace")
            except OSError:
                time.sleep(1)
        raise AssertionError(f"the web page never answered:\n{server.communicate()[0][-3000:]}")
    finally:
        server.terminate()
        server.wait(timeout=60)


def test_the_offline_tour_makes_no_network_call(tmp_path):
    log = tmp_path / "network.log"
    env = guarded_env(log)
    data = os.path.join(ROOT, "data")
    run("tiny_phogpt.py", "--data", data, cwd=tmp_path, env=env)
    run("phogpt_qlora.py", "--model", "tiny-phogpt", "--data", f"{data}/faq_tiny_vi.jsonl",
        "--output", "tiny-adapter", "--epochs", "2", "--lr", "1e-2", cwd=tmp_path, env=env)
    run("phogpt_chat.py", "--model", "tiny-phogpt", "--adapter", "tiny-adapter",
        "--temperature", "0", "--max-new-tokens", "8", "--prompt", QUESTION,
        cwd=tmp_path, env=env)
    assert "gradio" in open_page(free_port(), env, tmp_path).lower()
    run("phogpt_dpo.py", "--model", "tiny-phogpt", "--adapter", "tiny-adapter",
        "--data", f"{data}/dpo_vi.jsonl", "--output", "tiny-dpo", "--epochs", "1",
        cwd=tmp_path, env=env)
    # The GGUF needs llama.cpp; without it the export still merges and saves.
    gguf = "q4_k_m" if find_spec("llama_cpp") and find_spec("gguf") else "none"
    run("phogpt_export.py", "--model", "tiny-phogpt", "--adapter", "tiny-adapter",
        "--output", "tiny-export", "--gguf", gguf, cwd=tmp_path, env=env)
    answer = run("onechat_tiny.py", cwd=ROOT, env=env)
    assert "Công ty BICweb kính chào quý khách!" in answer
    assert (tmp_path / "tiny-export").is_dir() and (tmp_path / "tiny-dpo").is_dir()
    calls = log.read_text(encoding="utf-8") if log.exists() else ""
    assert calls == "", f"network calls were made:\n{calls[:6000]}"


def test_the_guard_catches_a_look_up(tmp_path):
    """The guard itself works: a plain look-up in a guarded process is refused and recorded."""
    log = tmp_path / "network.log"
    code = ("import socket\ntry:\n    socket.getaddrinfo('huggingface.co', 443)\n"
            "except OSError as err:\n    print(err)\n")
    done = subprocess.run([sys.executable, "-c", code], env=guarded_env(log),
                          capture_output=True, text=True, timeout=60)
    assert "refused" in done.stdout
    assert "look-up 'huggingface.co'" in log.read_text(encoding="utf-8")
