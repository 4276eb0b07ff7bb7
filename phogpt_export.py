"""Take your PhoGPT chatbot home: merge the LoRA adapter into the base, write a GGUF for llama.cpp.

    python phogpt_export.py --adapter phogpt-adapter               # GGUF q4_k_m + Modelfile
    python phogpt_export.py --adapter phogpt-adapter --gguf none   # merged model (safetensors)
    python phogpt_export.py --model vinai/PhoGPT-4B-Chat --gguf q8_0   # the base, no adapter

Then, on a laptop with no GPU (see README.md in --output):

    ollama create phogpt -f phogpt-export/Modelfile && ollama run phogpt
    llama-cli -m phogpt-export/phogpt-q4_k_m.gguf

The GGUF uses llama.cpp's own MPT architecture (PhoGPT's author added its biases there), with
PhoGPT's vocabulary, merges and chat template. q8_0 and q4_k_m are made by llama.cpp's quantiser
(pip install llama-cpp-python gguf). Everything lands in --output at once, when it is complete.
"""
import argparse
import contextlib
import io
import json
import logging
import os
import shutil
import sys
import warnings
from pathlib import Path

import prompts

GGUF_TYPES = ["none", "f32", "f16", "q8_0", "q4_k_m"]

# ---- flags ----
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
parser.add_argument("--model", default="auto",
                    help="base: hub id or folder; auto: the base the --adapter was trained on, "
                    "else vinai/PhoGPT-4B-Chat")
parser.add_argument("--adapter", default="none",
                    help="LoRA adapter folder (the --output of phogpt_qlora.py); "
                    "none: export the base alone")
parser.add_argument("--output", default="phogpt-export", help="folder to write")
parser.add_argument("--gguf", default="q4_k_m", choices=GGUF_TYPES,
                    help="GGUF weights: q4_k_m (~2.3 GB for 4B), q8_0 (~3.9 GB), f16, f32; "
                    "none: no GGUF")
parser.add_argument("--merge", action="store_true",
                    help="also save the merged model as safetensors (phogpt_chat.py --model "
                    "loads it); --gguf none saves only that")
parser.add_argument("--template", default="auto", choices=["auto", "chat", "instruct"],
                    help="prompt template of the Modelfile; auto: instruct if the model name "
                    "says so, else chat")
parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                    help="where to merge (auto: cuda if there is one)")
parser.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                    help="weights while merging; auto: as stored: fp32 for --gguf f32, fp16 for "
                    "the other GGUFs, bf16 for --gguf none (fp16 on a GPU without bf16)")
parser.add_argument("--overwrite", action="store_true", help="replace an --output that exists")


def fail(message):
    sys.exit(f"error: {message}")


# argparse calls parser.error for unknown flags and bad choices: one line, exit 1, no usage dump
parser.error = fail
args = parser.parse_args([] if "ipykernel" in sys.modules else None)

# ---- settle defaults and check every input (before any work) ----
if args.adapter == "none":
    args.adapter = ""
adapter_base = None
if args.adapter:
    adapter_config = Path(args.adapter, "adapter_config.json")
    if not adapter_config.is_file():
        fail(f"--adapter {args.adapter}: no adapter_config.json there; "
             "fix: give the --output folder of phogpt_qlora.py")
    try:
        adapter_base = json.loads(adapter_config.read_text(encoding="utf-8"))
        adapter_base = adapter_base.get("base_model_name_or_path")
    except (ValueError, AttributeError):
        fail(f"{adapter_config} is damaged (not JSON); fix: train the adapter again")
model_name = args.model if args.model != "auto" else adapter_base or "vinai/PhoGPT-4B-Chat"
if args.gguf == "none" and not args.adapter:
    fail("--gguf none without --adapter leaves nothing to export; "
         "fix: add --adapter DIR, or pick --gguf q4_k_m")
save_merged = args.merge or args.gguf == "none"
if save_merged and not args.adapter:
    fail("--merge needs an adapter to merge; fix: add --adapter DIR, or drop --merge")
base_config = Path(model_name, "config.json")
if base_config.is_file() and "quantization_config" in base_config.read_text(encoding="utf-8"):
    # a 4-bit/8-bit base has rounded weights: merging into them, or exporting them, loses the model
    fail(f"--model {model_name} holds quantised (bitsandbytes) weights; merging and export need "
         "full-precision weights; fix: pass the original base, e.g. vinai/PhoGPT-4B-Chat")
template = args.template
if template == "auto":
    template = "instruct" if "instruct" in model_name.lower() else "chat"
output = Path(args.output)
if output.exists() and not output.is_dir():
    fail(f"--output {output} is a file; fix: pick a folder name for --output")
if output.is_dir() and any(output.iterdir()) and not args.overwrite:
    fail(f"--output {output} already exists; fix: add --overwrite or pick another --output")
# --overwrite replaces the whole folder: never the model or adapter this run reads from
for flag, source in [("--model", model_name), ("--adapter", args.adapter)]:
    source_path = Path(source).resolve()
    if source and source_path.is_dir() and output.resolve() in [source_path, *source_path.parents]:
        fail(f"--output {output} would replace {flag} {source}; fix: pick another --output")
llama_cpp = None
if args.gguf != "none":
    try:
        import gguf
    except ImportError:
        fail(f"--gguf {args.gguf} needs the gguf package; fix: pip install gguf llama-cpp-python")
    try:
        import llama_cpp
    except ImportError:
        # f16/f32 need only gguf; llama.cpp quantises, and checks the tokenizer when it is there
        if args.gguf in ("q8_0", "q4_k_m"):
            fail(f"--gguf {args.gguf} is made by llama.cpp's quantiser; "
                 "fix: pip install llama-cpp-python (or pick --gguf f16)")

# torch after the flags: --help and flag errors stay instant
import numpy as np  # noqa: E402
import torch  # noqa: E402

import plumbing  # noqa: E402

# Merging needs unquantised weights: no bitsandbytes, and no kernels downloads from the hub.
plumbing.keep_hub_code_out()
from transformers.utils import logging as transformers_logging  # noqa: E402

from phogpt_model import load_phogpt  # noqa: E402

# the "Loading weights" bar of transformers: our own lines say what happens
transformers_logging.disable_progress_bar()
# the libraries' deprecation notices are for us, not students
warnings.filterwarnings("ignore", category=FutureWarning)
# bitsandbytes (imported by peft) hints at an optional CPU kernel package
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

if args.device == "cuda" and not torch.cuda.is_available():
    fail("--device cuda, but no CUDA GPU is visible; fix: use --device cpu (or auto)")
if args.device == "mps" and not torch.backends.mps.is_available():
    fail("--device mps, but this machine has no Apple GPU; fix: use --device cpu (or auto)")
device = args.device
if device == "auto":
    device = "cuda" if torch.cuda.is_available() else "cpu"
cuda_bf16 = device == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}.get(args.dtype)
# merge in the dtype the result is stored in, so the LoRA update is rounded once: f32 and f16
# GGUFs (q8_0 and q4_k_m start from f16), bf16 safetensors (PhoGPT's own dtype)
if dtype is None and args.gguf == "f32":
    dtype = torch.float32
if dtype is None and args.gguf != "none":
    dtype = torch.float16
if dtype is None:
    dtype = torch.float16 if device == "cuda" and not cuda_bf16 else torch.bfloat16


# ---- GGUF: llama.cpp's MPT tensor names, metadata and vocabulary ----
# Bloom's split rule, as tokenizer.json writes it; llama.cpp's "bloom" pre-tokenizer is the same
BLOOM_SPLIT = " ?[^(\\s|[.,!?…。，、।۔،])]+"


def llama_cpp_pre_tokenizer(tokenizer_json):
    """llama.cpp's name for the pre-tokenizer of this tokenizer.json, or None if it has none."""
    if tokenizer_json.get("normalizer"):
        return None
    pre = tokenizer_json.get("pre_tokenizer") or {}
    # plain ByteLevel: GPT-2's regex split, then bytes to characters (llama.cpp "gpt-2")
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return None if pre.get("add_prefix_space") else "gpt-2"
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    # Bloom's: its own regex split, then ByteLevel without a second split (llama.cpp "bloom")
    if len(steps) == 2 and steps[0].get("type") == "Split" and steps[1].get("type") == "ByteLevel":
        bloom_split = steps[0].get("pattern", {}).get("Regex") == BLOOM_SPLIT
        byte_level_only = not steps[1].get("use_regex", True)
        if bloom_split and byte_level_only and not steps[1].get("add_prefix_space"):
            return "bloom"
    return None


def gguf_vocabulary(tokenizer, vocab_size):
    """(tokens, token types, merges) as llama.cpp's converter writes them for a GPT-2-style BPE."""
    by_id = {i: token for token, i in tokenizer.get_vocab().items()}
    special = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    added = set(tokenizer.get_added_vocab())
    tokens, types = [], []
    for i in range(vocab_size):
        token = by_id.get(i)
        if token is None:
            # PhoGPT pads its embedding table past the vocabulary: slots no text ever reaches
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif token in special:
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL)
        elif token in added:
            tokens.append(token)
            types.append(gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL)
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    # newer tokenizers store each merge as a pair, older ones as "a b"; GGUF wants "a b"
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    return tokens, types, merges


def write_gguf(model, tokenizer, path, float_type, pre_tokenizer, chat_template):
    """Write model + tokenizer as one GGUF file, a tensor at a time (RAM: model + one tensor)."""
    config = model.config
    attn = config.attn_config
    writer = gguf.GGUFWriter(str(path), "mpt")
    writer.add_name(Path(str(config._name_or_path)).name or "PhoGPT")
    writer.add_context_length(config.max_seq_len)
    writer.add_embedding_length(config.d_model)
    writer.add_block_count(config.n_layers)
    writer.add_feed_forward_length(int(config.d_model * config.expansion_ratio))
    writer.add_head_count(config.n_heads)
    writer.add_layer_norm_eps(config.layer_norm_epsilon)
    writer.add_max_alibi_bias(float(attn.get("alibi_bias_max", 8)))
    if attn.get("clip_qkv"):
        writer.add_clamp_kqv(float(attn["clip_qkv"]))
    ftype = gguf.LlamaFileType.ALL_F32 if float_type == "f32" else gguf.LlamaFileType.MOSTLY_F16
    writer.add_file_type(ftype)
    tokens, types, merges = gguf_vocabulary(tokenizer, config.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_unk_token_id(tokenizer.unk_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    # PhoGPT's prompts start with the question, not <s>: llama.cpp must not add one
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    if chat_template:
        writer.add_chat_template(chat_template)
    # llama.cpp's own table maps transformer.blocks.3.attn.Wqkv.weight -> blk.3.attn_qkv.weight;
    # lm_head is wte (tied), and llama.cpp reuses token_embd when there is no output tensor
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.MPT, config.n_layers)
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    plan = []
    for name, tensor in state.items():
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            fail(f"no llama.cpp name for the tensor {name}; fix: this model is not a PhoGPT (MPT)")
        # as llama.cpp's converter: norms and biases stay f32, matrices take the chosen type
        np_type = np.float16 if float_type == "f16" and tensor.dim() == 2 else np.float32
        plan.append((gguf_name, tensor, np_type))
        nbytes = tensor.numel() * np.dtype(np_type).itemsize
        writer.add_tensor_info(gguf_name, list(tensor.shape), np.dtype(np_type), nbytes)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for gguf_name, tensor, np_type in plan:
        writer.write_tensor_data(tensor.detach().float().cpu().numpy().astype(np_type))
    writer.close()


def quantize(source, target, gguf_type):
    """llama.cpp's quantiser (the llama-quantize tool) on an f16/f32 GGUF: "" or what failed."""
    import ctypes
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = {"q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
                    "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M}[gguf_type]
    params.nthread = os.cpu_count() or 1
    # llama.cpp logs a line per tensor (through Python's stderr): kept for an error message only
    with contextlib.redirect_stderr(io.StringIO()) as log:
        code = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(),
                                              ctypes.byref(params))
    if code == 0:
        return ""
    return (log.getvalue().strip().splitlines() or [f"code {code}"])[-1][:120]


def llama_cpp_token_ids(path, text):
    """How llama.cpp splits text with the vocabulary of the GGUF at path (None: unreadable)."""
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            vocab = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        except ValueError:
            return None
    ids = vocab.tokenize(text.encode("utf-8"), add_bos=False, special=True)
    vocab.close()
    return ids


# ---- model (and adapter) ----
print(f"loading {model_name} ({str(dtype).removeprefix('torch.')}) on {device}", flush=True)
try:
    model, tokenizer = load_phogpt(model_name, load_in="none", dtype=dtype,
                                   device_map=device if device != "cpu" else None)
except (OSError, ValueError) as err:
    fail(err)
if getattr(model.config, "quantization_config", None):
    fail(f"--model {model_name} holds quantised weights; merging and export need "
         "full-precision weights; fix: pass the original base, e.g. vinai/PhoGPT-4B-Chat")
model.eval()
question = {"role": "user", "content": "Xin chào, bạn là ai?"}
probe_text = prompts.generation_prompt([question], tokenizer.eos_token, template)
probe = tokenizer(probe_text, add_special_tokens=False, return_tensors="pt").input_ids
probe = probe.to(model.device)

# llama.cpp must be able to run this model as it is, or the GGUF would answer differently
if args.gguf != "none":
    tokenizer_json = json.loads(tokenizer.backend_tokenizer.to_str())
    pre_tokenizer = llama_cpp_pre_tokenizer(tokenizer_json)
    if pre_tokenizer is None:
        fail("llama.cpp has no pre-tokenizer that splits text like this tokenizer.json "
             f"({json.dumps(tokenizer_json.get('pre_tokenizer'))[:80]}); "
             "fix: use --gguf none and phogpt_chat.py")
    if len(tokenizer) > model.config.vocab_size:
        fail(f"the tokenizer has {len(tokenizer)} tokens, the model {model.config.vocab_size}; "
             "fix: pass the tokenizer files that came with this model")
    softmax_scale = model.config.attn_config.get("softmax_scale")
    head_dim = model.config.d_model // model.config.n_heads
    # llama.cpp's MPT hard-codes both: no logit scale, attention scaled by 1/sqrt(head size)
    if model.config.logit_scale is not None or softmax_scale not in (None, head_dim**-0.5):
        fail("llama.cpp's MPT has no logit_scale or softmax_scale; "
             "fix: use --gguf none and phogpt_chat.py")

# ---- merge: adapter-on-base -> one set of weights, checked on a question ----
if args.adapter:
    from peft import PeftModel
    try:
        model = PeftModel.from_pretrained(model, args.adapter).eval()
    except (RuntimeError, ValueError, OSError) as err:
        # a size mismatch is a LoRA trained on a base of another shape (e.g. 7B5 vs 4B)
        fail(f"--adapter {args.adapter} does not fit {model_name} "
             f"({str(err).splitlines()[0][:120]}); fix: pass the base it was trained on")
    with torch.no_grad():
        expected = model(probe).logits.float()
        model = model.merge_and_unload()
        got = model(probe).logits.float()
    error = (got - expected).abs().max().item()
    scale = expected.abs().max().item()
    print(f"merged logits vs adapter-on-base: max difference {error:.2e} "
          f"(logit scale {scale:.1f})")
    # merging rounds W + BA once into the weights' dtype: bf16 keeps ~3 digits, so allow 2%
    if error > 0.02 * scale + 1e-3:
        fail(f"the merged model disagrees with adapter-on-base ({error:.2e}); "
             "fix: merge with --dtype fp32")

# ---- write everything into a temporary folder, then move it into place ----
partial = output.with_name(output.name + ".partial")
if partial.exists():
    # what a killed earlier run left: never looked finished, safe to drop
    shutil.rmtree(partial)
partial.mkdir(parents=True)
written = []
if save_merged:
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    written.append(f"the merged model ({str(dtype).removeprefix('torch.')}, safetensors)")

if args.gguf != "none":
    gguf_path = partial / f"phogpt-{args.gguf}.gguf"
    float_type = "f32" if args.gguf == "f32" or dtype == torch.float32 else "f16"
    float_path = gguf_path
    if args.gguf in ("q8_0", "q4_k_m"):
        float_path = partial / f"phogpt-{float_type}.gguf.tmp"
    print(f"writing {float_path.name}", flush=True)
    # PhoGPT's own template (prompts.py), so llama.cpp's chat mode prompts as phogpt_chat.py does
    chat_template = tokenizer.chat_template
    if template == "chat":
        chat_template = prompts.PHOGPT_CHAT_TEMPLATE_JINJA
    write_gguf(model, tokenizer, float_path, float_type, pre_tokenizer, chat_template)
    if float_path != gguf_path:
        print(f"quantising to {gguf_path.name} with llama.cpp", flush=True)
        problem = quantize(float_path, gguf_path, args.gguf)
        float_path.unlink()
        if problem:
            shutil.rmtree(partial)
            fail(f"llama.cpp could not quantise to {args.gguf} ({problem}); fix: try --gguf f16")
    size = gguf_path.stat().st_size
    size = f"{size / 1e9:.2f} GB" if size > 1e8 else f"{size / 1e6:.1f} MB"
    written.append(f"{gguf_path.name} ({size})")

    # ---- check: llama.cpp splits Vietnamese text into our tokenizer's ids ----
    sample = prompts.generation_prompt([question], tokenizer.eos_token, template)
    sample += " Tôi là PhoGPT, trợ lý ảo tiếng Việt (số 12, năm 2024)." + tokenizer.eos_token
    if llama_cpp is None:
        print("note: pip install llama-cpp-python to check the GGUF's tokenizer here")
    else:
        expected_ids = tokenizer(sample, add_special_tokens=False).input_ids
        got_ids = llama_cpp_token_ids(gguf_path, sample)
        if got_ids is None:
            shutil.rmtree(partial)
            fail("llama.cpp cannot read the GGUF just written; fix: update llama-cpp-python")
        if got_ids != expected_ids:
            shutil.rmtree(partial)
            fail(f"llama.cpp splits text differently ({got_ids[:12]} vs {expected_ids[:12]}); "
                 "fix: use --gguf none and phogpt_chat.py")
        print(f"llama.cpp tokenizes a Vietnamese sample as PhoGPT does ({len(got_ids)} ids)")

    # ---- Ollama Modelfile and README (template strings come from prompts.py) ----
    if template == "chat":
        head, tail, stop = prompts.PHOGPT_USER_FIRST, prompts.PHOGPT_ASSISTANT, "chat"
        later = prompts.PHOGPT_USER_NEXT
    else:
        head, tail, stop = prompts.INSTRUCT_USER, prompts.INSTRUCT_ASSISTANT, "instruct"
        later = prompts.INSTRUCT_TURN_SEPARATOR + prompts.INSTRUCT_USER
    # Ollama's Go template over the whole chat, so that later turns see the earlier ones exactly
    # as prompts.generation_prompt writes them (a {{ .Prompt }} template loses the separators
    # and the EOS between turns); system text goes before the first question, as in our chat
    system = "{{ if $.System }}{{ $.System }}\n\n{{ end }}"
    question = ("{{ if $first }}" + head + system + "{{ else }}" + later + "{{ end }}"
                + "{{ .Content }}")
    answer = tail + " {{ .Content }}" + tokenizer.eos_token
    ollama_template = ("{{ $first := true }}{{ range .Messages }}"
                       + '{{ if eq .Role "user" }}' + question + "{{ $first = false }}"
                       + '{{ else if eq .Role "assistant" }}' + answer
                       + "{{ end }}{{ end }}" + tail)
    name = gguf_path.name
    # Ollama's triple quotes keep newlines as typed: the stop string starts with a real newline
    modelfile = f'''# ollama create phogpt -f Modelfile && ollama run phogpt
FROM ./{name}
TEMPLATE """{ollama_template}"""
PARAMETER stop """{prompts.STOP_STRINGS[stop]}"""
PARAMETER stop "{tokenizer.eos_token}"
PARAMETER temperature 1.0
PARAMETER top_p 0.9
PARAMETER top_k 50
PARAMETER num_ctx 2048
'''
    (partial / "Modelfile").write_text(modelfile, encoding="utf-8")
    # the sampling above is phogpt_chat.py's (VinAI's README): temperature 1.0, top_p 0.9, top_k 50;
    # a 2,048-token context keeps 4B q4_k_m near 3.5 GB of RAM (bench/phogpt_laptop.py)
    example = (head + "Xin chào" + tail).replace("\n", "\\n")
    source = f"`{model_name}`" + (f" with the adapter `{args.adapter}`" if args.adapter else "")
    readme = f'''# PhoGPT on your laptop ({name})

Exported by phogpt_export.py from {source}.

## Ollama

    ollama create phogpt -f Modelfile
    ollama run phogpt

## llama.cpp

    llama-cli -m {name} -c 2048 --no-mmap      # chat, with PhoGPT's template
    llama-completion -m {name} -c 2048 --no-mmap -no-cnv -e -p "{example}" \\
        -n 256 --temp 1.0 --top-p 0.9 --top-k 50 -r "{prompts.STOP_STRINGS[stop].strip()}"

`--no-mmap`: llama.cpp copies q4_K weights into a layout of its own on x86; with mmap the
file stays mapped beside that copy (4B q4_k_m: 3.9 GB of RAM instead of 2.5 GB).

## Python (pip install llama-cpp-python)

    from llama_cpp import Llama
    llm = Llama("{name}", n_ctx=2048, use_mmap=False, verbose=False)
    reply = llm.create_chat_completion([{{"role": "user", "content": "Xin chào"}}])
    print(reply["choices"][0]["message"]["content"])
'''
    (partial / "README.md").write_text(readme, encoding="utf-8")
    written += ["Modelfile", "README.md"]

# the new folder is complete: only now may an old --output go (needs --overwrite, checked above)
if output.exists():
    old = output.with_name(output.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    os.replace(output, old)
    os.replace(partial, output)
    shutil.rmtree(old)
else:
    os.replace(partial, output)

# ---- report ----
print(f"wrote {', '.join(written)} to {output}")
if args.gguf != "none":
    print(f"next: cd {output} && ollama create phogpt -f Modelfile && ollama run phogpt")
