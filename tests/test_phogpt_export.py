"""phogpt_export.py checked against llama.cpp itself (llama-cpp-python), on tiny PhoGPTs (CPU).

llama.cpp's MPT was written by other people: an exported tiny PhoGPT that gives our greedy
tokens, our logits and our tokenization there is an independent check of phogpt_model.py too.
The tiny models have 6 heads, so ALiBi's slope interleave (heads not a power of two) is used.
"""
import json
import logging
import ctypes
import os
import resource
import runpy
import shutil
import signal
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import prompts  # noqa: E402
from conftest import tokenizer_texts  # noqa: E402
from phogpt_model import load_phogpt  # noqa: E402
from tiny_phogpt import save_tiny_checkpoint  # noqa: E402

llama_cpp = pytest.importorskip(
    "llama_cpp", reason="needs llama-cpp-python (pip install llama-cpp-python gguf; "
    "it builds llama.cpp from source, ~6 min once)")
gguf = pytest.importorskip("gguf", reason="needs the gguf package (pip install gguf)")

SCRIPT = str(ROOT / "phogpt_export.py")
# what the tiny bases are taught (full fine-tune), so greedy tokens are well separated
GREETINGS = [
    ("Xin chào", "Chào bạn! Tôi là PhoGPT, một trợ lý ảo tiếng Việt. Tôi có thể giúp gì cho bạn "
     "hôm nay?"),
    ("Hà Nội là thủ đô của nước nào?", "Hà Nội là thủ đô của Việt Nam, một thành phố nghìn năm "
     "văn hiến bên sông Hồng."),
    ("Bạn là ai?", "Tôi là PhoGPT, mô hình ngôn ngữ tiếng Việt của VinAI, được huấn luyện trên "
     "nhiều văn bản."),
]
# what the adapter learns (LoRA on top of the taught base)
FAQ = [
    ("Cửa hàng mở cửa lúc mấy giờ?", "Cửa hàng mở cửa từ 8 giờ sáng đến 9 giờ tối."),
    ("Địa chỉ cửa hàng ở đâu?", "Số 12 phố Huế, Hà Nội."),
    ("Có giao hàng không?", "Có, giao hàng miễn phí trong nội thành."),
]
LORA_TARGETS = ["attn.Wqkv", "attn.out_proj", "ffn.up_proj", "ffn.down_proj"]


# llama.cpp logs every tensor it loads, through this logger
logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)


def ask(question):
    return prompts.generation_prompt([{"role": "user", "content": question}], "</s>")


def run(*args, preexec_fn=None):
    """Run the script as a student would; return the finished process (text output)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, preexec_fn=preexec_fn)


def run_here(capsys, *args):
    """Run the script in this process (torch is already imported); return (code, out, err)."""
    argv, sys.argv = sys.argv, [SCRIPT, *map(str, args)]
    # the script sets its own Ctrl+C handler: pytest's comes back after it
    ctrl_c = signal.getsignal(signal.SIGINT)
    try:
        runpy.run_path(SCRIPT, run_name="__main__")
        code = 0
    except SystemExit as exit:
        code = exit.code
    except KeyboardInterrupt:
        # a traceback for the student: this test fails, the others still run
        code = "KeyboardInterrupt"
    finally:
        sys.argv = argv
        signal.signal(signal.SIGINT, ctrl_c)
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_error_line(code, err):
    assert code == 1 or (isinstance(code, str) and code.startswith("error: ")), (code, err)
    lines = (code if isinstance(code, str) else err).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err


def teach(model, tokenizer, pairs, steps=400, lr=3e-3):
    """Fit answers after their questions (loss on answers only) with AdamW; returns the loss."""
    rows = []
    for question, answer in pairs:
        head = tokenizer(ask(question), add_special_tokens=False).input_ids
        tail = tokenizer(" " + answer, add_special_tokens=False).input_ids
        eos = [tokenizer.eos_token_id]
        rows.append((head + tail + eos, [-100] * len(head) + tail + eos))
    width = max(len(ids) for ids, _ in rows)
    ids = torch.tensor([i + [tokenizer.pad_token_id] * (width - len(i)) for i, _ in rows])
    labels = torch.tensor([t + [-100] * (width - len(t)) for _, t in rows])
    mask = (torch.arange(width)[None] < torch.tensor([len(i) for i, _ in rows])[:, None]).long()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(ids, attention_mask=mask, labels=labels).loss
        if loss < 0.01:
            break
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return loss.item()


def taught_base(path, no_bias):
    # the project's data and templates (conftest): a vocabulary with thousands of merges
    texts = tokenizer_texts() + [q + " " + a for q, a in GREETINGS + FAQ]
    save_tiny_checkpoint(str(path), texts, d_model=96, n_heads=6, n_layers=2, no_bias=no_bias)
    model, tokenizer = load_phogpt(str(path), dtype=torch.float32)
    assert teach(model, tokenizer, GREETINGS) < 0.05
    model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """Two taught tiny PhoGPTs, with biases (as PhoGPT-4B) and without (no_bias: true)."""
    root = tmp_path_factory.mktemp("bases")
    return {"biases": taught_base(root / "biases", False),
            "no-bias": taught_base(root / "no-bias", True)}


@pytest.fixture(scope="module")
def adapter(bases, tmp_path_factory):
    """A LoRA adapter that memorised the FAQ on the biased base (peft, as phogpt_qlora.py saves)."""
    from peft import LoraConfig, get_peft_model
    model, tokenizer = load_phogpt(bases["biases"], dtype=torch.float32)
    config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=LORA_TARGETS)
    model = get_peft_model(model, config)
    assert teach(model, tokenizer, FAQ, steps=400, lr=1e-2) < 0.05
    path = tmp_path_factory.mktemp("adapter") / "faq-adapter"
    model.save_pretrained(path)
    return str(path)


def listing(folder):
    """What a student sees in a folder (our marker and lock files start with a dot)."""
    return sorted(p.name for p in Path(folder).iterdir() if not p.name.startswith("."))


def export(capsys, tmp_path, *args):
    code, out, err = run_here(capsys, *args)
    assert code == 0, out + err
    return out


def open_gguf(path, n_ctx=256):
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, logits_all=True, n_threads=1,
                           verbose=False)


def llama_cpp_greedy(llm, ids, steps):
    """Greedy tokens from llama.cpp, one eval per token; returns (new ids, logits of every step)."""
    llm.reset()
    llm.eval(ids)
    new = []
    for _ in range(steps):
        new.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([new[-1]])
    return new, np.array(llm.scores[:llm.n_tokens])


@torch.no_grad()
def torch_greedy(model, ids, steps):
    """Greedy tokens from our PyTorch model (no cache, no EOS stop: the same loop as above)."""
    seq = list(ids)
    for _ in range(steps):
        seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(ids):], model(torch.tensor([seq])).logits[0].numpy()


def answer_in_llama_cpp(llm, tokenizer, question):
    """Greedy answer text until EOS (or 40 tokens), as llama.cpp's sampler gives it."""
    ids = tokenizer(ask(question), add_special_tokens=False).input_ids
    new = []
    for token in llm.generate(ids, temp=0.0, reset=True):
        if token == tokenizer.eos_token_id or len(new) == 40:
            break
        new.append(token)
    return tokenizer.decode(new)


CONVERSATIONS = [
    [{"role": "user", "content": "Xin chào"}],
    [{"role": "system", "content": "Trả lời ngắn."}, {"role": "user", "content": "Xin chào"}],
    [{"role": "user", "content": "Hà Nội ở đâu?"}, {"role": "assistant", "content": "Miền Bắc."},
     {"role": "user", "content": "Còn Huế?"}],
]
GO_RENDER = """package main

import (
\t"encoding/json"
\t"os"
\t"text/template"
)

func main() {
\tsource, _ := os.ReadFile(os.Args[1])
\tvar messages []struct{ Role, Content string }
\tjson.Unmarshal([]byte(os.Args[2]), &messages)
\ttemplate.Must(template.New("").Parse(string(source))).Execute(os.Stdout,
\t\tmap[string]any{"Messages": messages, "System": os.Args[3]})
}
"""


def render_with_go(template, conversation, tmp_path):
    """The prompt Ollama builds from the Modelfile's TEMPLATE (Go's text/template), via `go run`."""
    (tmp_path / "render.go").write_text(GO_RENDER, encoding="utf-8")
    (tmp_path / "template.txt").write_text(template, encoding="utf-8")
    messages = json.dumps([{"Role": m["role"], "Content": m["content"]} for m in conversation])
    # Ollama passes the system messages, joined, as .System (and keeps them in .Messages)
    system = "\n\n".join(m["content"] for m in conversation if m["role"] == "system")
    env = {**os.environ, "GO111MODULE": "off", "GOCACHE": str(tmp_path / "gocache")}
    done = subprocess.run(["go", "run", "render.go", "template.txt", messages, system],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


# ---- the GGUF computes what our model computes ----
@pytest.mark.parametrize("kind", ["biases", "no-bias"])
def test_f32_gguf_gives_our_greedy_tokens_and_logits(bases, kind, tmp_path, capsys):
    out = export(capsys, tmp_path, "--model", bases[kind], "--gguf", "f32", "--output",
                 tmp_path / "gguf")
    assert "llama.cpp tokenizes a Vietnamese sample as PhoGPT does" in out
    model, tokenizer = load_phogpt(bases[kind], dtype=torch.float32)
    assert (model.transformer.blocks[0].attn.Wqkv.bias is None) == (kind == "no-bias")
    llm = open_gguf(tmp_path / "gguf" / "phogpt-f32.gguf")
    questions = [q for q, _ in GREETINGS] + ["Hôm nay trời thế nào?"]
    for question in questions:
        ids = tokenizer(ask(question), add_special_tokens=False).input_ids
        ours, our_logits = torch_greedy(model, ids, 20)
        theirs, their_logits = llama_cpp_greedy(llm, ids, 20)
        assert theirs == ours, (question, tokenizer.decode(ours), tokenizer.decode(theirs))
        # llama.cpp's GELU is the tanh approximation (PhoGPT's is exact): close, not equal
        scale = np.abs(our_logits).max()
        assert np.abs(their_logits - our_logits).max() < 2e-3 * scale + 1e-3
    # the taught answers really come out (so the tokens compared above are not noise)
    question, answer = GREETINGS[0]
    assert answer_in_llama_cpp(llm, tokenizer, question) == " " + answer
    llm.close()


def test_phogpt_4b_width_gives_our_logits_in_llama_cpp(tmp_path, capsys):
    """PhoGPT-4B's own attention: 24 heads of 128 (ALiBi slopes of 32 heads, interleaved, cut
    to 24), d_model 3072; one layer and a small vocabulary keep it at 0.5 GB (random weights)."""
    texts = [q + " " + a for q, a in GREETINGS]
    path = save_tiny_checkpoint(str(tmp_path / "wide"), texts, d_model=3072, n_heads=24,
                                n_layers=1)
    export(capsys, tmp_path, "--model", path, "--gguf", "f32", "--output", tmp_path / "gguf")
    model, tokenizer = load_phogpt(path, dtype=torch.float32)
    # a long prompt (~170 tokens), so that far-apart tokens meet ALiBi's distance penalty
    ids = tokenizer(" ".join(ask(q) + " " + a for q, a in GREETINGS * 2),
                    add_special_tokens=False).input_ids
    with torch.no_grad():
        ours = model(torch.tensor([ids])).logits[0].numpy()
    llm = open_gguf(tmp_path / "gguf" / "phogpt-f32.gguf", n_ctx=512)
    llm.eval(ids)
    theirs = np.array(llm.scores[:len(ids)])
    llm.close()
    assert len(ids) > 100
    assert (theirs.argmax(-1) == ours.argmax(-1)).all()
    assert np.abs(theirs - ours).max() < 2e-3 * np.abs(ours).max() + 1e-3


def test_gguf_has_llama_cpp_mpt_names_and_phogpt_metadata(bases, tmp_path, capsys):
    export(capsys, tmp_path, "--model", bases["biases"], "--gguf", "f16", "--output",
           tmp_path / "gguf")
    reader = gguf.GGUFReader(tmp_path / "gguf" / "phogpt-f16.gguf")
    names = {t.name: t for t in reader.tensors}
    expected = {"token_embd.weight", "output_norm.weight", "output_norm.bias"}
    for i in range(2):
        for part in ["attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_up", "ffn_down"]:
            expected |= {f"blk.{i}.{part}.weight", f"blk.{i}.{part}.bias"}
    assert set(names) == expected
    assert names["blk.0.attn_qkv.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert names["blk.0.attn_norm.bias"].tensor_type == gguf.GGMLQuantizationType.F32

    def field(key):
        value = reader.fields[key]
        return value.contents()

    assert field("general.architecture") == "mpt"
    assert field("mpt.context_length") == 512 and field("mpt.embedding_length") == 96
    assert field("mpt.block_count") == 2 and field("mpt.feed_forward_length") == 384
    assert field("mpt.attention.head_count") == 6
    assert field("mpt.attention.max_alibi_bias") == 8.0
    assert abs(field("mpt.attention.layer_norm_epsilon") - 1e-5) < 1e-9
    assert field("tokenizer.ggml.model") == "gpt2" and field("tokenizer.ggml.pre") == "gpt-2"
    assert [field(f"tokenizer.ggml.{k}_token_id") for k in ["unknown", "bos", "eos", "padding"]] \
        == [0, 1, 2, 3]
    assert field("tokenizer.ggml.add_bos_token") is False
    assert field("tokenizer.chat_template") == prompts.PHOGPT_CHAT_TEMPLATE_JINJA
    assert len(field("tokenizer.ggml.merges")) > 100


# ---- llama.cpp splits text exactly as PhoGPT's tokenizer does ----
VIETNAMESE = [
    "Tiếng Việt có dấu: ả ã ạ ế ở ữ đ Ư Ơ, và chữ hoa ĐẶNG THỊ HỒNG.",
    "Gọi 024 3826 1234 lúc 8:30, giá 1.250.000đ (giảm 12,5%) — năm 2024!",
    unicodedata.normalize("NFD", "Người dùng macOS dán chữ tổ hợp: Nguyễn Thị Hương"),
    "  hai  dấu cách\n\nxuống   dòng\ttab  \n",
    "Emoji 😀🇻🇳, English I've been 'told', dấu chấm lửng... ?!!",
    prompts.generation_prompt([{"role": "user", "content": "Xin chào"}], "</s>"),
    prompts.conversation_text([{"role": "user", "content": "Hà Nội ở đâu?"},
                               {"role": "assistant", "content": "Ở miền Bắc."},
                               {"role": "user", "content": "Còn Huế?"}], "</s>"),
    prompts.instruct_prompt("Viết một câu về Đà Nẵng") + " Đà Nẵng đẹp.</s>",
    prompts.STOP_STRINGS["chat"],
]
BLOOM_PRE_TOKENIZER = {"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"Regex": " ?[^(\\s|[.,!?…。，、।۔،])]+"},
     "behavior": "Isolated", "invert": False},
    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}


@pytest.mark.parametrize("style", ["gpt-2", "bloom"])
def test_llama_cpp_tokenizes_vietnamese_as_the_hf_tokenizer(bases, style, tmp_path, capsys):
    """The tiny tokenizer is GPT-2 style; a Bloom-style split (PhoGPT's tokenizer_class is
    BloomTokenizer) is exported with llama.cpp's 'bloom' pre-tokenizer."""
    model_dir = tmp_path / "model"
    shutil.copytree(bases["biases"], model_dir)
    if style == "bloom":
        tokenizer_file = model_dir / "tokenizer.json"
        tokenizer_json = json.loads(tokenizer_file.read_text(encoding="utf-8"))
        tokenizer_json["pre_tokenizer"] = BLOOM_PRE_TOKENIZER
        tokenizer_file.write_text(json.dumps(tokenizer_json, ensure_ascii=False), "utf-8")
    export(capsys, tmp_path, "--model", model_dir, "--gguf", "f16", "--output", tmp_path / "g")
    path = tmp_path / "g" / "phogpt-f16.gguf"
    reader = gguf.GGUFReader(path)
    assert reader.fields["tokenizer.ggml.pre"].contents() == style
    _, tokenizer = load_phogpt(str(model_dir), dtype=torch.float32)
    vocab = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    for text in VIETNAMESE + [prompts.nfc(VIETNAMESE[2])]:
        expected = tokenizer(text, add_special_tokens=False).input_ids
        got = vocab.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        assert got == expected, (text, got, expected)
        assert vocab.detokenize(got, special=True).decode("utf-8") == text
    vocab.close()


# ---- the merged adapter, in PyTorch and in llama.cpp ----
def test_merge_matches_adapter_on_base(bases, adapter, tmp_path, capsys):
    from peft import PeftModel
    out = export(capsys, tmp_path, "--adapter", adapter, "--gguf", "none", "--dtype", "fp32",
                 "--output", tmp_path / "merged")
    assert "merged logits vs adapter-on-base" in out
    assert (tmp_path / "merged" / "model.safetensors").exists()
    assert (tmp_path / "merged" / "tokenizer.json").exists()
    assert not list(tmp_path.glob("*.partial"))
    merged, tokenizer = load_phogpt(str(tmp_path / "merged"), dtype=torch.float32)
    base, _ = load_phogpt(bases["biases"], dtype=torch.float32)
    with_adapter = PeftModel.from_pretrained(base, adapter).eval()
    ids = tokenizer(ask(FAQ[0][0]), add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(merged.eval()(ids).logits, with_adapter(ids).logits,
                                   rtol=1e-4, atol=1e-4)
    # the default on a CPU merges in bf16, PhoGPT's own dtype
    out = export(capsys, tmp_path, "--adapter", adapter, "--gguf", "none", "--output",
                 tmp_path / "bf16")
    assert "the merged model (bfloat16, safetensors)" in out


def test_merged_adapter_answers_the_faq_in_llama_cpp(bases, adapter, tmp_path, capsys):
    from peft import PeftModel
    export(capsys, tmp_path, "--adapter", adapter, "--gguf", "f32", "--output", tmp_path / "g")
    base, tokenizer = load_phogpt(bases["biases"], dtype=torch.float32)
    with_adapter = PeftModel.from_pretrained(base, adapter).eval()
    llm = open_gguf(tmp_path / "g" / "phogpt-f32.gguf")
    for question, answer in FAQ:
        ids = tokenizer(ask(question), add_special_tokens=False, return_tensors="pt").input_ids
        ours = with_adapter.generate(ids, max_new_tokens=40, do_sample=False)[0, ids.shape[1]:]
        assert tokenizer.decode(ours, skip_special_tokens=True) == " " + answer
        assert answer_in_llama_cpp(llm, tokenizer, question) == " " + answer
    # llama.cpp's chat mode uses the template stored in the GGUF: the same prompt, same answer
    question, answer = FAQ[1]
    reply = llm.create_chat_completion([{"role": "user", "content": question}], temperature=0.0,
                                       max_tokens=40)
    assert reply["choices"][0]["message"]["content"].strip() == answer
    llm.close()
    # the base alone does not know the FAQ: the answers above came from the merged adapter
    ids = tokenizer(ask(question), add_special_tokens=False, return_tensors="pt").input_ids
    with with_adapter.disable_adapter():
        alone = with_adapter.generate(ids, max_new_tokens=40, do_sample=False)[0, ids.shape[1]:]
    assert tokenizer.decode(alone, skip_special_tokens=True) != " " + answer
    modelfile = (tmp_path / "g" / "Modelfile").read_text(encoding="utf-8")
    assert "FROM ./phogpt-f32.gguf\n" in modelfile
    template = modelfile.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    assert "{{ if $first }}" + prompts.PHOGPT_USER_FIRST in template
    assert "{{ else }}" + prompts.PHOGPT_USER_NEXT + "{{ end }}{{ .Content }}" in template
    assert prompts.PHOGPT_ASSISTANT + " {{ .Content }}</s>" in template
    assert template.endswith("{{ end }}{{ end }}" + prompts.PHOGPT_ASSISTANT)
    if shutil.which("go"):
        # Ollama renders with Go's text/template: the prompts must be ours, byte for byte
        for conversation in CONVERSATIONS:
            expected = prompts.generation_prompt(conversation, "</s>")
            assert render_with_go(template, conversation, tmp_path) == expected
    assert f'PARAMETER stop """{prompts.STOP_STRINGS["chat"]}"""' in modelfile
    assert 'PARAMETER stop "</s>"' in modelfile
    # the tiny base learned 512 positions: the context never promises more
    for line in ["temperature 1.0", "top_p 0.9", "top_k 50", "num_ctx 512"]:
        assert f"PARAMETER {line}\n" in modelfile
    readme = (tmp_path / "g" / "README.md").read_text(encoding="utf-8")
    assert "ollama create" in readme and "llama-cli -m phogpt-f32.gguf" in readme


def test_quantised_ggufs_answer_the_faq(adapter, bases, tmp_path, capsys):
    _, tokenizer = load_phogpt(bases["biases"], dtype=torch.float32)
    sizes = {}
    for gguf_type, file_type in [("q8_0", 7), ("q4_k_m", 15)]:
        output = tmp_path / gguf_type
        export(capsys, tmp_path, "--adapter", adapter, "--gguf", gguf_type, "--output", output)
        path = output / f"phogpt-{gguf_type}.gguf"
        assert listing(output) == ["Modelfile", "README.md", path.name]
        assert gguf.GGUFReader(path).fields["general.file_type"].contents() == file_type
        sizes[gguf_type] = path.stat().st_size
        llm = open_gguf(path)
        question, answer = FAQ[0]
        assert answer_in_llama_cpp(llm, tokenizer, question) == " " + answer
        llm.close()
    assert sizes["q4_k_m"] < sizes["q8_0"]


# ---- bad input: one line, and nothing destroyed ----
def test_bad_input_gets_one_line(bases, tmp_path):
    four_bit = tmp_path / "phogpt-4bit"
    four_bit.mkdir()
    config = {"model_type": "mpt", "quantization_config": {"load_in_4bit": True}}
    (four_bit / "config.json").write_text(json.dumps(config), encoding="utf-8")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "old.txt").write_text("keep me", encoding="utf-8")
    a_file = tmp_path / "a-file"
    a_file.write_text("x", encoding="utf-8")
    cases = [
        (["--adapter", tmp_path / "nowhere"], "no adapter_config.json"),
        (["--model", four_bit, "--output", tmp_path / "o"], "full-precision base"),
        (["--model", bases["biases"], "--gguf", "q5_k"], "invalid choice"),
        (["--model", bases["biases"], "--output", taken], "which no run of ours made"),
        (["--model", bases["biases"], "--output", taken, "--overwrite"],
         "which no run of ours made"),
        (["--model", bases["biases"], "--output", a_file], "is a file"),
        (["--model", bases["biases"], "--load-in", "4bit"], "unrecognized arguments"),
        (["--model", bases["biases"], "--gguf", "none"], "need an adapter to merge"),
        (["--model", bases["biases"], "--merge"], "need an adapter to merge"),
        (["--model", bases["biases"], "--output", Path(bases["biases"]).parent, "--overwrite"],
         "holds --model"),
    ]
    for args, message in cases:
        done = run(*args)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert_one_error_line(done.returncode, done.stderr)
        assert message in done.stderr, (args, done.stderr)
    assert (taken / "old.txt").read_text(encoding="utf-8") == "keep me"


def test_an_adapter_of_another_shape_fails_and_keeps_the_old_export(adapter, tmp_path, capsys):
    other = save_tiny_checkpoint(str(tmp_path / "other"), ["xin chào"], d_model=64, n_heads=4)
    old = tmp_path / "export"
    export(capsys, tmp_path, "--model", other, "--gguf", "f32", "--output", old)
    before = (old / "phogpt-f32.gguf").read_bytes()
    code, out, err = run_here(capsys, "--model", other, "--adapter", adapter, "--output", old,
                              "--overwrite")
    assert_one_error_line(code, err)
    assert "does not fit" in str(code) + err
    assert (old / "phogpt-f32.gguf").read_bytes() == before
    # --overwrite replaces it once a new export is complete
    export(capsys, tmp_path, "--model", other, "--gguf", "f16", "--output", old, "--overwrite")
    assert listing(old) == ["Modelfile", "README.md", "phogpt-f16.gguf"]
    assert listing(tmp_path) == ["export", "other"]


def test_export_never_touches_the_students_own_folders_beside_output(tmp_path, capsys):
    """OUTPUT.old and OUTPUT.partial beside --output are the student's: the old export
    deleted them on --overwrite. Now temporary names are unique and live inside --output."""
    model = save_tiny_checkpoint(str(tmp_path / "model"), ["xin chào"], d_model=32, n_heads=2)
    mine = {tmp_path / "export.old": "luận văn", tmp_path / "export.partial": "ghi chú"}
    for folder, text in mine.items():
        folder.mkdir()
        (folder / "thesis.txt").write_text(text, encoding="utf-8")
    for flags in [[], ["--overwrite"], ["--overwrite"]]:
        export(capsys, tmp_path, "--model", model, "--gguf", "f16", "--output",
               tmp_path / "export", *flags)
    for folder, text in mine.items():
        assert (folder / "thesis.txt").read_text(encoding="utf-8") == text
    assert listing(tmp_path / "export") == ["Modelfile", "README.md", "phogpt-f16.gguf"]


# ---- issue 22: the context, Ctrl+C, a full disk, a read-only --output ----
def small_model(path, **shape):
    """A small random PhoGPT whose weights (~0.2 MB) outgrow the 64 KiB 'disk' below."""
    return save_tiny_checkpoint(str(path), ["xin chào"], d_model=64, n_heads=4, **shape)


def snapshot(folder):
    """Every file in a folder, our marker and lock included, as bytes."""
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}


@pytest.mark.parametrize("max_seq_len", [8, 100, 300, 512, 4096])
def test_the_modelfile_never_promises_more_context_than_the_model_has(max_seq_len, tmp_path,
                                                                    capsys):
    """A model that learned 8 positions once got a Modelfile saying num_ctx 2048."""
    model = small_model(tmp_path / "model", max_seq_len=max_seq_len)
    output = tmp_path / "export"
    code, out, err = run_here(capsys, "--model", model, "--gguf", "f16", "--output", output)
    if max_seq_len < 256:
        # too short for a question and its answer: one line, nothing written
        assert_one_error_line(code, err)
        assert "too short to chat" in str(code) + err and "max_seq_len" in str(code) + err
        assert not output.exists()
        return
    assert code == 0, out + err
    context = min(2048, max_seq_len)
    modelfile = (output / "Modelfile").read_text(encoding="utf-8")
    assert f"PARAMETER num_ctx {context}\n" in modelfile
    readme = (output / "README.md").read_text(encoding="utf-8")
    assert f"-c {context} " in readme and f"n_ctx={context}," in readme
    assert "2048" not in readme or context == 2048
    reader = gguf.GGUFReader(output / "phogpt-f16.gguf")
    assert reader.fields["mpt.context_length"].contents() == max_seq_len


CTRL_C_MOMENTS = {
    "header": ("gguf", "GGUFWriter.write_header_to_file"),
    "tensors": ("gguf", "GGUFWriter.write_tensor_data"),
    "quantising": ("llama_cpp", "llama_model_quantize"),
}


@pytest.mark.parametrize("before", ["nothing", "an export"])
@pytest.mark.parametrize("moment", list(CTRL_C_MOMENTS))
def test_ctrl_c_while_writing_stops_in_one_line_and_keeps_the_old_export(moment, before,
                                                                         tmp_path, capsys,
                                                                         monkeypatch):
    model = small_model(tmp_path / "model")
    output = tmp_path / "export"
    if before == "an export":
        export(capsys, tmp_path, "--model", model, "--gguf", "f16", "--output", output)
    kept = snapshot(output) if output.exists() else None
    module, name = CTRL_C_MOMENTS[moment]
    owner = sys.modules[module]
    for part in name.split(".")[:-1]:
        owner = getattr(owner, part)
    attribute = name.split(".")[-1]
    original = getattr(owner, attribute)

    def pressed(*args, **kwargs):
        # the student presses Ctrl+C: the real signal, to this process
        os.kill(os.getpid(), signal.SIGINT)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, attribute, pressed)
    code, out, err = run_here(capsys, "--model", model, "--gguf", "q4_k_m", "--output", output,
                              "--overwrite")
    assert code == 130, (code, out, err)
    assert "stopped by Ctrl+C" in out and "Traceback" not in out + err
    if kept is None:
        # nothing half-written: the folder this run made is gone again
        assert not output.exists()
    else:
        assert snapshot(output) == kept and sorted(os.listdir(output)) == sorted(kept)


def limit_file_size():
    """A full disk, as the script sees it: writes past 64 KiB fail (EFBIG, not a signal)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small model and a LoRA adapter on it (untrained: merging needs only its shape)."""
    from peft import LoraConfig, get_peft_model
    root = tmp_path_factory.mktemp("small")
    model = small_model(root / "model")
    lora = get_peft_model(load_phogpt(model, dtype=torch.float32)[0],
                          LoraConfig(r=4, target_modules=LORA_TARGETS))
    lora.save_pretrained(root / "adapter")
    return model, str(root / "adapter")


@pytest.mark.parametrize("gguf_type", ["f16", "q8_0", "none"])
@pytest.mark.parametrize("before", ["nothing", "an export"])
def test_a_full_disk_gets_one_line_and_keeps_the_old_export(gguf_type, before, small, tmp_path,
                                                          capsys):
    model, adapter = small
    flags = ["--model", model, "--adapter", adapter, "--gguf", gguf_type]
    output = tmp_path / "export"
    if before == "an export":
        export(capsys, tmp_path, *flags, "--output", output)
    kept = snapshot(output) if output.exists() else None
    # twice: a failed export, then its rerun, still keep the one before
    for _ in range(2):
        done = run(*flags, "--output", output, "--overwrite", preexec_fn=limit_file_size)
        assert done.returncode == 1, (done.stdout, done.stderr)
        assert_one_error_line(done.returncode, done.stderr)
        assert "the disk is full" in done.stderr and "fix: free some" in done.stderr
        if kept is None:
            assert not output.exists()
        else:
            assert snapshot(output) == kept and sorted(os.listdir(output)) == sorted(kept)
    # with room again, the same command finishes
    export(capsys, tmp_path, *flags, "--output", output, "--overwrite")
    assert (output / ("config.json" if gguf_type == "none" else "Modelfile")).exists()


def without_root_powers():
    """Permission bits apply to root too: drop CAP_DAC_OVERRIDE for the child (Linux)."""
    if os.geteuid() == 0:
        # prctl(PR_CAPBSET_DROP, CAP_DAC_OVERRIDE): gone from the program run next
        assert ctypes.CDLL(None, use_errno=True).prctl(24, 1, 0, 0, 0) == 0


@pytest.mark.parametrize("where", ["an export", "an empty folder", "a new folder"])
def test_a_read_only_output_gets_one_line_before_any_work(where, small, tmp_path, capsys):
    model, _ = small
    read_only = tmp_path / "read-only"
    output = read_only if where != "a new folder" else read_only / "export"
    read_only.mkdir()
    if where == "an export":
        export(capsys, tmp_path, "--model", model, "--gguf", "f16", "--output", output,
               "--overwrite")
    kept = snapshot(read_only)
    read_only.chmod(0o555)
    try:
        done = run("--model", model, "--gguf", "f16", "--output", output, "--overwrite",
                   preexec_fn=without_root_powers)
    finally:
        read_only.chmod(0o755)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert_one_error_line(done.returncode, done.stderr)
    assert "is read-only" in done.stderr and "fix: pick a folder" in done.stderr
    # refused before the model was loaded
    assert "loading" not in done.stdout
    assert snapshot(read_only) == kept and not (read_only / "export").exists()
