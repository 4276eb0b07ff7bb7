"""Take your PhoGPT chatbot home: merge the LoRA adapter, write a GGUF for llama.cpp.

    python phogpt_export.py --adapter phogpt-adapter              # GGUF q4_k_m + Modelfile
    python phogpt_export.py --adapter phogpt-adapter --gguf none  # merged safetensors
    ollama create phogpt -f phogpt-export/Modelfile && ollama run phogpt"""
import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import warnings
from pathlib import Path

import plumbing
import prompts
from plumbing import fail

# ---- flags ----
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
add = parser.add_argument
add("--model", default="auto", help="base, hub id or folder; auto: the adapter's")
add("--adapter", default="none", help="LoRA folder; none: the base alone")
add("--output", default="phogpt-export", help="folder to write")
add("--gguf", default="q4_k_m", choices=["none", "f32", "f16", "q8_0", "q4_k_m"],
    help="GGUF (pip install gguf llama-cpp-python): q4_k_m ~2.3 GB for 4B, q8_0 ~3.9 GB")
add("--merge", action="store_true", help="also save merged safetensors")
# The Modelfile's prompts; auto: instruct if the model's name says so.
add("--template", default="auto", choices=["auto", "chat", "instruct"], help="prompts")
add("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="where to merge")
add("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"], help="while merging")
add("--overwrite", action="store_true", help="replace an earlier export")
args = plumbing.parse_flags(parser)

# ---- check every input, before any work ----
adapter = "" if args.adapter == "none" else args.adapter
adapter_config = plumbing.read_json(Path(adapter, "adapter_config.json")) if adapter else {}
if not isinstance(adapter_config, dict):
    fail(f"--adapter {adapter}: no adapter_config.json; fix: give phogpt_qlora.py's --output")
base = adapter_config.get("base_model_name_or_path") or "vinai/PhoGPT-4B-Chat"
model_name = base if args.model == "auto" else args.model
make_gguf = args.gguf != "none"
save_merged = args.merge or not make_gguf
if save_merged and not adapter:
    fail("--merge and --gguf none need an adapter to merge; fix: add --adapter DIR")
# 4/8-bit weights are rounded: the model is lost.
base_config = plumbing.read_json(Path(model_name, "config.json")) or {}
if "quantization_config" in base_config:
    fail(f"--model {model_name} holds 4/8-bit weights; fix: pass the full-precision base")
# Context: 2,048 keeps 4B q4_k_m in ~3.5 GB of RAM (bench/phogpt_laptop.py).
context = min(2048, base_config.get("max_seq_len", 2048))
# Never past the model's; a question and its answer need a few hundred.
if make_gguf and context < 256:
    fail(f"--model {model_name}: max_seq_len {context} is too short to chat; fix: 256 or more")
template = prompts.pick_template(args.template, model_name)
if make_gguf:
    try:
        import gguf
        import llama_cpp
    except ImportError as err:
        fail(f"--gguf {args.gguf} needs {err.name}; fix: pip install gguf llama-cpp-python")
# Read-only: said now, not after the slow part.
where = Path(args.output).absolute()
where = next(p for p in [where, *where.parents] if p.exists())
if not os.access(where, os.W_OK):
    fail(f"--output {args.output}: {where} is read-only; fix: pick a folder you can write to")
protect = {"--model": model_name, "--adapter": adapter}
output = plumbing.claim_output(args.output, args.overwrite, protect=protect)
plumbing.on_ctrl_c(f"stopped by Ctrl+C: nothing exported, {output} as it was")

# torch after the flags: --help stays instant.
import numpy as np
import torch
# Full weights: no bitsandbytes, no hub kernels.
plumbing.keep_hub_code_out()
# Our lines say what happens: no bars, no notices.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
warnings.filterwarnings("ignore", category=FutureWarning)
from phogpt_model import load_phogpt
device = plumbing.pick_device(args.device)
# Merge in the dtype we write: LoRA is rounded once. q8_0 and q4_k_m start
# from f16; safetensors are bf16, PhoGPT's own (fp16 on a T4: no bf16).
bf16 = device != "cuda" or torch.cuda.is_bf16_supported(False)
auto = "bf16" if not make_gguf and bf16 else "fp16"
auto = "fp32" if args.gguf == "f32" else auto
names = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
dtype_name = names[auto if args.dtype == "auto" else args.dtype]
dtype = getattr(torch, dtype_name)

# ---- the model, and the adapter merged in (checked on a question) ----
print(f"loading {model_name} ({dtype_name}) on {device}", flush=True)
try:
    device_map = None if device == "cpu" else device
    model, tokenizer = load_phogpt(model_name, dtype=dtype, device_map=device_map)
except (OSError, ValueError) as err:
    fail(err)
config = model.config
context = min(context, config.max_seq_len)
eos = tokenizer.eos_token
# llama.cpp's MPT scales attention by 1/sqrt(head size), logits by 1.
attn = config.attn_config
usual = (config.d_model // config.n_heads) ** -0.5
if make_gguf and (config.logit_scale is not None or attn.get("softmax_scale") not in (None, usual)):
    fail("llama.cpp's MPT has no logit_scale or softmax_scale; fix: --gguf none")
question = [{"role": "user", "content": "Xin chào, bạn là ai?"}]
probe_text = prompts.generation_prompt(question, eos, template)
if adapter:
    from peft import PeftModel
    try:
        model = PeftModel.from_pretrained(model, adapter).eval()
    except (RuntimeError, ValueError, OSError) as err:
        # A size mismatch: a LoRA for another base.
        fail(f"--adapter {adapter} does not fit {model_name} "
             f"({str(err).splitlines()[0][:120]}); fix: pass the base it was trained on")
    ids = tokenizer(probe_text, add_special_tokens=False, return_tensors="pt").input_ids.to(device)
    with torch.no_grad():
        expected = model(ids).logits.float()
        model = model.merge_and_unload()
        got = model(ids).logits.float()
    error = (got - expected).abs().max().item()
    scale = expected.abs().max().item()
    print(f"merged logits vs adapter-on-base: max difference {error:.2e} (logit scale {scale:.1f})")
    # W + BA is rounded once: bf16 has ~3 digits.
    if error > 0.02 * scale + 1e-3:
        fail(f"merged and adapter-on-base differ by {error:.2e}; fix: merge with --dtype fp32")

# ---- Ollama's Modelfile and a README ----
gguf_name = f"phogpt-{args.gguf}.gguf"
# Our prompts (prompts.py), cut where turns go.
turns = [{"role": role, "content": "@"} for role in ("user", "assistant", "user")]
head, answer, later, tail = prompts.generation_prompt(turns, eos, template).split("@")
# A Go template over the whole chat, as generation_prompt writes it ({{ .Prompt }}
# loses separators and EOS); system text goes before the first question.
question = ("{{ if $first }}" + head + "{{ if $.System }}{{ $.System }}\n\n{{ end }}"
            + "{{ else }}" + later.removeprefix(eos) + "{{ end }}{{ .Content }}")
ollama_template = ("{{ $first := true }}{{ range .Messages }}"
                   + '{{ if eq .Role "user" }}' + question + "{{ $first = false }}"
                   + '{{ else if eq .Role "assistant" }}' + answer + "{{ .Content }}" + eos
                   + "{{ end }}{{ end }}" + tail)
# Sampling as phogpt_chat.py (VinAI's); the stop string starts with a newline.
modelfile = f'''# ollama create phogpt -f Modelfile && ollama run phogpt
FROM ./{gguf_name}
TEMPLATE """{ollama_template}"""
PARAMETER stop """{prompts.STOP_STRINGS[template]}"""
PARAMETER stop "{eos}"
PARAMETER temperature 1.0
PARAMETER top_p 0.9
PARAMETER top_k 50
PARAMETER num_ctx {context}
'''
source = f"`{model_name}`" + (f" with the adapter `{adapter}`" if adapter else "")
# --no-mmap: on x86 llama.cpp copies q4_K weights to its own layout;
# mapped, the file stays too (4B: 3.9 GB of RAM, not 2.5 GB).
readme = f'''# PhoGPT on your laptop ({gguf_name}), from {source}

    ollama create phogpt -f Modelfile && ollama run phogpt
    llama-cli -m {gguf_name} -c {context} --no-mmap   # chat, PhoGPT's template

    # Python: pip install llama-cpp-python
    from llama_cpp import Llama
    llm = Llama("{gguf_name}", n_ctx={context}, use_mmap=False, verbose=False)
    reply = llm.create_chat_completion([{{"role": "user", "content": "Xin chào"}}])
    print(reply["choices"][0]["message"]["content"])
'''

# Model + tokenizer as one GGUF, as llama.cpp's converter
# writes it, a tensor at a time (RAM: one tensor more).
def write_gguf(path, f32, weights=True):
    writer = gguf.GGUFWriter(str(path), "mpt")
    writer.add_context_length(config.max_seq_len)
    writer.add_embedding_length(config.d_model)
    writer.add_block_count(config.n_layers)
    writer.add_feed_forward_length(int(config.d_model * config.expansion_ratio))
    writer.add_head_count(config.n_heads)
    writer.add_layer_norm_eps(config.layer_norm_epsilon)
    writer.add_max_alibi_bias(float(attn.get("alibi_bias_max", 8)))
    if attn.get("clip_qkv"):
        writer.add_clamp_kqv(float(attn["clip_qkv"]))
    by_id = {i: token for token, i in tokenizer.get_vocab().items()}
    kinds = {t.content: gguf.TokenType.CONTROL if t.special else gguf.TokenType.USER_DEFINED
             for t in tokenizer.added_tokens_decoder.values()}
    # Padded embeddings: slots that no text reaches.
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(config.vocab_size)]
    types = [kinds.get(t, gguf.TokenType.NORMAL) if i in by_id else gguf.TokenType.UNUSED
             for i, t in enumerate(tokens)]
    tokenizer_json = json.loads(tokenizer.backend_tokenizer.to_str())
    # GGUF wants merges as "a b", never as pairs.
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer_json["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    # llama.cpp's named split before BPE: GPT-2's regex, or Bloom's (PhoGPT's).
    split = "Split" in json.dumps(tokenizer_json["pre_tokenizer"])
    writer.add_tokenizer_pre("bloom" if split else "gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for kind in ("bos", "eos", "unk", "pad"):
        getattr(writer, f"add_{kind}_token_id")(getattr(tokenizer, f"{kind}_token_id"))
    # PhoGPT's prompts start with the question.
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    chat = prompts.PHOGPT_CHAT_TEMPLATE_JINJA if template == "chat" else tokenizer.chat_template
    if chat:
        writer.add_chat_template(chat)
    # llama.cpp's names (blk.3.attn_qkv); no lm_head: it is wte (token_embd).
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.MPT, config.n_layers)
    state = model.state_dict() if weights else {}
    state.pop("lm_head.weight", None)
    # Norms and biases stay f32, as llama.cpp's do.
    np_types = {k: np.float32 if f32 or t.dim() != 2 else np.float16 for k, t in state.items()}
    for name, tensor in state.items():
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        nbytes = tensor.numel() * np.dtype(np_types[name]).itemsize
        writer.add_tensor_info(gguf_name, list(tensor.shape), np_types[name], nbytes)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for name, tensor in state.items():
        writer.write_tensor_data(tensor.detach().float().cpu().numpy().astype(np_types[name]))
    writer.close()

# ---- write: a failure (full disk, Ctrl+C) leaves the old export ----
staging = plumbing.temp_name(output / "export")
gguf_path = staging / gguf_name
f32 = args.gguf == "f32" or dtype == torch.float32
quantised = args.gguf in ("q8_0", "q4_k_m")
float_path = staging / f"phogpt-{'f32' if f32 else 'f16'}.gguf.tmp" if quantised else gguf_path
sample = probe_text + " Tôi là PhoGPT, trợ lý ảo tiếng Việt (số 12, năm 2024)." + eos
written = [f"the merged model ({dtype_name}, safetensors)"] if save_merged else []
try:
    staging.mkdir()
    if save_merged:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    if make_gguf:
        # Our ids from llama.cpp, checked in seconds on a vocabulary-only
        # GGUF, before any weights (written over it next).
        write_gguf(float_path, True, weights=False)
        with contextlib.redirect_stderr(io.StringIO()):
            vocab = llama_cpp.Llama(str(float_path), vocab_only=True, verbose=False)
        got_ids = vocab.tokenize(sample.encode("utf-8"), add_bos=False, special=True)
        vocab.close()
        if got_ids != tokenizer(sample, add_special_tokens=False).input_ids:
            fail("llama.cpp splits text differently; fix: --gguf none and phogpt_chat.py")
        print(f"llama.cpp tokenizes a Vietnamese sample as PhoGPT does ({len(got_ids)} ids)")
        print(f"writing {float_path.name}", flush=True)
        write_gguf(float_path, f32)
    if quantised:
        print(f"quantising to {gguf_name} with llama.cpp", flush=True)
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{args.gguf.upper()}")
        # Its log, a line per tensor, is kept for an error only.
        with contextlib.redirect_stderr(io.StringIO()) as log:
            code = llama_cpp.llama_model_quantize(bytes(float_path), bytes(gguf_path), params)
        float_path.unlink()
        problem = (log.getvalue().strip().splitlines() or [f"code {code}"])[-1][:120]
        fix = "free some disk space" if plumbing.disk_full(problem) else "try --gguf f16"
        if code:
            fail(f"llama.cpp could not quantise to {args.gguf} ({problem}); fix: {fix}")
    if make_gguf:
        (staging / "Modelfile").write_text(modelfile, encoding="utf-8")
        (staging / "README.md").write_text(readme, encoding="utf-8")
        size = gguf_path.stat().st_size / 1e6
        written += [f"{gguf_name} ({size:,.1f} MB)", "Modelfile", "README.md"]
    # Complete: the old export goes; Ctrl+C waits.
    plumbing.on_ctrl_c(signal.SIG_IGN)
    plumbing.make_way(output)
    plumbing.move_in(staging, output, last="Modelfile" if make_gguf else "config.json")
except Exception as err:
    if not plumbing.disk_full(err):
        raise
    fail(f"the disk is full, nothing in {output} changed; fix: free some space, then rerun")
finally:
    shutil.rmtree(staging, ignore_errors=True)
plumbing.on_ctrl_c(None)
plumbing.release_outputs()
print(f"wrote {', '.join(written)} to {output}")
if make_gguf:
    print(f"next: cd {output} && ollama create phogpt -f Modelfile && ollama run phogpt")
