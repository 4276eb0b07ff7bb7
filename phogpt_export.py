"""Take your PhoGPT chatbot home: merge the LoRA adapter, write a GGUF for llama.cpp.

    python phogpt_export.py --adapter phogpt-adapter              # GGUF q4_k_m + Modelfile
    python phogpt_export.py --adapter phogpt-adapter --gguf none  # merged safetensors
    ollama create phogpt -f phogpt-export/Modelfile && ollama run phogpt

Needs pip install llama-cpp-python gguf (llama.cpp quantises and checks).
"""
import argparse
import contextlib
import io
import json
import logging
import os
import warnings
from pathlib import Path

import plumbing
import prompts
from plumbing import fail

# ---- flags ----
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
parser.add_argument("--model", default="auto", help="base: hub id or folder; "
                    "auto: the --adapter's base, else vinai/PhoGPT-4B-Chat")
parser.add_argument("--adapter", default="none",
                    help="LoRA folder (phogpt_qlora.py's --output); none: the base alone")
parser.add_argument("--output", default="phogpt-export", help="folder to write")
parser.add_argument("--gguf", default="q4_k_m",
                    choices=["none", "f32", "f16", "q8_0", "q4_k_m"],
                    help="GGUF weights: q4_k_m (~2.3 GB for 4B), q8_0 (~3.9 GB)")
parser.add_argument("--merge", action="store_true",
                    help="also save the merged model as safetensors")
parser.add_argument("--template", default="auto", choices=["auto", "chat", "instruct"],
                    help="the Modelfile's prompts; auto: instruct if the name says so")
parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                    help="where to merge (auto: cuda if there is one)")
parser.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                    help="weights while merging; auto: the stored dtype")
parser.add_argument("--overwrite", action="store_true",
                    help="replace an --output that an earlier export made")
args = plumbing.parse_flags(parser)

# ---- check every input, before any work ----
adapter = "" if args.adapter == "none" else args.adapter
adapter_config = {}
if adapter:
    adapter_config = plumbing.read_json(Path(adapter, "adapter_config.json"))
    if not isinstance(adapter_config, dict):
        fail(f"--adapter {adapter}: no adapter_config.json there (or a damaged one); "
             "fix: give the --output folder of phogpt_qlora.py")
model_name = args.model
if model_name == "auto":
    base = adapter_config.get("base_model_name_or_path")
    model_name = base or "vinai/PhoGPT-4B-Chat"
save_merged = args.merge or args.gguf == "none"
if save_merged and not adapter:
    what = "--merge needs an adapter to merge" if args.merge else \
        "--gguf none without --adapter leaves nothing to export"
    fail(f"{what}; fix: add --adapter DIR, or drop --merge / pick --gguf q4_k_m")
# A 4/8-bit base has rounded weights: merged or exported, the model is lost.
base_config = plumbing.read_json(Path(model_name, "config.json")) or {}
if "quantization_config" in base_config:
    fail(f"--model {model_name} holds quantised (bitsandbytes) weights; merging "
         "and export need full-precision weights; fix: pass the original base")
template = args.template
if template == "auto":
    template = "instruct" if "instruct" in model_name.lower() else "chat"
llama_cpp = None
if args.gguf != "none":
    try:
        import gguf
    except ImportError:
        fail(f"--gguf {args.gguf} needs gguf; fix: pip install gguf llama-cpp-python")
    # f16/f32 need only gguf; llama.cpp quantises, and checks the tokens.
    with contextlib.suppress(ImportError):
        import llama_cpp
    if llama_cpp is None and args.gguf in ("q8_0", "q4_k_m"):
        fail(f"--gguf {args.gguf} is made by llama.cpp's quantiser; "
             "fix: pip install llama-cpp-python (or pick --gguf f16)")
# Ours and locked for this run; never a folder holding the model or adapter.
protect = {"--model": model_name, "--adapter": adapter}
output = plumbing.claim_output(args.output, args.overwrite, protect=protect)

# torch after the flags: --help and flag errors stay instant.
import numpy as np  # noqa: E402
import torch  # noqa: E402

# Merging needs full weights: no bitsandbytes, no kernels from the hub.
plumbing.keep_hub_code_out()
from transformers.utils import logging as transformers_logging  # noqa: E402

from phogpt_model import load_phogpt  # noqa: E402

# Our lines say what happens: no "Loading weights" bar,
transformers_logging.disable_progress_bar()
# no deprecation notices (for us, not students),
warnings.filterwarnings("ignore", category=FutureWarning)
# no hint at an optional CPU kernel from bitsandbytes.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

device = plumbing.pick_device(args.device)
# Merge in the dtype the result is stored in, so the LoRA update is
# rounded once: q8_0 and q4_k_m start from f16; safetensors are bf16,
# PhoGPT's own (a GPU without bf16, like a T4: fp16).
dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
         "auto": torch.float32 if args.gguf == "f32" else torch.float16}[args.dtype]
no_bf16 = device == "cuda" and not torch.cuda.is_bf16_supported(False)
if args.dtype == "auto" and args.gguf == "none" and not no_bf16:
    dtype = torch.bfloat16
dtype_name = str(dtype).removeprefix("torch.")

# ---- the model (and adapter) ----
print(f"loading {model_name} ({dtype_name}) on {device}", flush=True)
try:
    where = device if device != "cpu" else None
    model, tokenizer = load_phogpt(model_name, dtype=dtype, device_map=where)
except (OSError, ValueError) as err:
    fail(err)
model.eval()
question = [{"role": "user", "content": "Xin chào, bạn là ai?"}]
probe_text = prompts.generation_prompt(question, tokenizer.eos_token, template)
probe = tokenizer(probe_text, add_special_tokens=False, return_tensors="pt")
probe = probe.input_ids.to(model.device)


def llama_cpp_pre_tokenizer(tokenizer_json):
    """llama.cpp's name for this tokenizer.json's pre-tokenizer, or None."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    if tokenizer_json.get("normalizer"):
        return None
    # Plain ByteLevel: GPT-2's regex split, then bytes to characters.
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return None if pre.get("add_prefix_space") else "gpt-2"
    # Bloom's (PhoGPT's): its own regex split, then ByteLevel, no regex.
    steps = pre.get("pretokenizers", [{}])
    split, byte_level = steps[0], steps[-1]
    bloom_split = " ?[^(\\s|[.,!?…。，、।۔،])]+"
    is_bloom = (len(steps) == 2 and split.get("type") == "Split"
                and split.get("pattern", {}).get("Regex") == bloom_split
                and byte_level.get("type") == "ByteLevel"
                and not byte_level.get("use_regex", True)
                and not byte_level.get("add_prefix_space"))
    return "bloom" if is_bloom else None


# llama.cpp must run this model as it is, or the GGUF answers otherwise.
if args.gguf != "none":
    tokenizer_json = json.loads(tokenizer.backend_tokenizer.to_str())
    pre_tokenizer = llama_cpp_pre_tokenizer(tokenizer_json)
    if pre_tokenizer is None:
        shown = json.dumps(tokenizer_json.get("pre_tokenizer"))[:80]
        fail(f"llama.cpp has no pre-tokenizer that splits text like this "
             f"tokenizer.json ({shown}); fix: use --gguf none and phogpt_chat.py")
    config = model.config
    if len(tokenizer) > config.vocab_size:
        fail(f"the tokenizer has {len(tokenizer)} tokens, the model "
             f"{config.vocab_size}; fix: pass the tokenizer files of this model")
    # llama.cpp's MPT has no logit scale, and scales by 1/sqrt(head size).
    softmax_scale = config.attn_config.get("softmax_scale")
    usual = (config.d_model // config.n_heads) ** -0.5
    if config.logit_scale is not None or softmax_scale not in (None, usual):
        fail("llama.cpp's MPT has no logit_scale or softmax_scale; "
             "fix: use --gguf none and phogpt_chat.py")

# ---- merge: adapter-on-base -> one set of weights, checked on a question ----
if adapter:
    from peft import PeftModel

    try:
        model = PeftModel.from_pretrained(model, adapter).eval()
    except (RuntimeError, ValueError, OSError) as err:
        # A size mismatch: a LoRA trained on a base of another shape.
        fail(f"--adapter {adapter} does not fit {model_name} "
             f"({str(err).splitlines()[0][:120]}); fix: pass the base it was trained on")
    with torch.no_grad():
        expected = model(probe).logits.float()
        model = model.merge_and_unload()
        got = model(probe).logits.float()
    error = (got - expected).abs().max().item()
    scale = expected.abs().max().item()
    print(f"merged logits vs adapter-on-base: max difference {error:.2e} "
          f"(logit scale {scale:.1f})")
    # Merging rounds W + BA once: bf16 keeps ~3 digits, so allow 2%.
    if error > 0.02 * scale + 1e-3:
        fail(f"the merged model disagrees with adapter-on-base ({error:.2e}); "
             "fix: merge with --dtype fp32")

# ---- write: the input is good, so an earlier export (--overwrite) steps
# aside; ours goes to a staging folder, moved in when complete ----
plumbing.make_way(output)
staging = plumbing.temp_name(output / "export")
staging.mkdir()
written = []
if save_merged:
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    written.append(f"the merged model ({dtype_name}, safetensors)")


def gguf_vocabulary(tokenizer, vocab_size):
    """(tokens, types, merges) as llama.cpp's converter writes a GPT-2 BPE."""
    by_id = {i: token for token, i in tokenizer.get_vocab().items()}
    special = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    kinds = {**dict.fromkeys(tokenizer.get_added_vocab(), gguf.TokenType.USER_DEFINED),
             **dict.fromkeys(special, gguf.TokenType.CONTROL)}
    # PhoGPT pads its embeddings past the vocabulary: slots no text reaches.
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(vocab_size)]
    types = [kinds.get(t, gguf.TokenType.NORMAL) if i in by_id else gguf.TokenType.UNUSED
             for i, t in enumerate(tokens)]
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    # Newer tokenizers store a merge as a pair, older as "a b": GGUF wants "a b".
    return tokens, types, [m if isinstance(m, str) else " ".join(m) for m in merges]


def write_gguf(model, tokenizer, path, f32, chat_template):
    """Model + tokenizer as one GGUF, a tensor at a time (RAM: one tensor more)."""
    config, attn = model.config, model.config.attn_config
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
    file_type = gguf.LlamaFileType
    writer.add_file_type(file_type.ALL_F32 if f32 else file_type.MOSTLY_F16)
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
    # PhoGPT's prompts start with the question, not <s>.
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    if chat_template:
        writer.add_chat_template(chat_template)
    # llama.cpp's names: transformer.blocks.3.attn.Wqkv -> blk.3.attn_qkv.
    # No lm_head: it is wte, and llama.cpp reuses token_embd.
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.MPT, config.n_layers)
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    for name, tensor in state.items():
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            fail(f"no llama.cpp name for {name}; fix: this model is not a PhoGPT (MPT)")
        # As llama.cpp's converter: norms and biases stay f32.
        np_type = np.dtype(np.float32 if f32 or tensor.dim() != 2 else np.float16)
        nbytes = tensor.numel() * np_type.itemsize
        writer.add_tensor_info(gguf_name, list(tensor.shape), np_type, nbytes)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in state.values():
        f16 = not f32 and tensor.dim() == 2
        array = tensor.detach().float().cpu().numpy()
        writer.write_tensor_data(array.astype(np.float16 if f16 else np.float32))
    writer.close()


def quantize(source, target, gguf_type):
    """llama.cpp's quantiser on an f16/f32 GGUF: "" or what failed."""
    import ctypes

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = {"q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
                    "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M}[gguf_type]
    params.nthread = os.cpu_count() or 1
    # llama.cpp logs a line per tensor: kept for an error message only.
    with contextlib.redirect_stderr(io.StringIO()) as log:
        code = llama_cpp.llama_model_quantize(str(source).encode(),
                                              str(target).encode(), ctypes.byref(params))
    lines = log.getvalue().strip().splitlines() or [f"code {code}"]
    return "" if code == 0 else lines[-1][:120]


def llama_cpp_token_ids(path, text):
    """How llama.cpp splits text with the GGUF's vocabulary (None: unreadable)."""
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            vocab = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        except ValueError:
            return None
    ids = vocab.tokenize(text.encode("utf-8"), add_bos=False, special=True)
    vocab.close()
    return ids


if args.gguf != "none":
    gguf_path = staging / f"phogpt-{args.gguf}.gguf"
    f32 = args.gguf == "f32" or dtype == torch.float32
    float_path = gguf_path
    # q8_0 and q4_k_m: llama.cpp quantises an f16 (or f32) file.
    if args.gguf in ("q8_0", "q4_k_m"):
        float_path = staging / f"phogpt-{'f32' if f32 else 'f16'}.gguf.tmp"
    print(f"writing {float_path.name}", flush=True)
    # Our chat template (prompts.py): llama.cpp's chat prompts as ours does.
    chat_template = tokenizer.chat_template
    if template == "chat":
        chat_template = prompts.PHOGPT_CHAT_TEMPLATE_JINJA
    write_gguf(model, tokenizer, float_path, f32, chat_template)
    if float_path != gguf_path:
        print(f"quantising to {gguf_path.name} with llama.cpp", flush=True)
        problem = quantize(float_path, gguf_path, args.gguf)
        float_path.unlink()
        if problem:
            fail(f"llama.cpp could not quantise to {args.gguf} ({problem}); "
                 "fix: try --gguf f16")
    size = gguf_path.stat().st_size
    size = f"{size / 1e9:.2f} GB" if size > 1e8 else f"{size / 1e6:.1f} MB"
    written.append(f"{gguf_path.name} ({size})")

    # ---- check: llama.cpp splits Vietnamese into our tokenizer's ids ----
    sample = probe_text + " Tôi là PhoGPT, trợ lý ảo tiếng Việt (số 12, năm 2024)."
    sample += tokenizer.eos_token
    if llama_cpp is None:
        print("note: pip install llama-cpp-python to check the GGUF's tokenizer here")
    else:
        expected_ids = tokenizer(sample, add_special_tokens=False).input_ids
        got_ids = llama_cpp_token_ids(gguf_path, sample)
        if got_ids is None:
            fail("llama.cpp cannot read the GGUF just written; "
                 "fix: update llama-cpp-python")
        if got_ids != expected_ids:
            fail(f"llama.cpp splits text differently ({got_ids[:12]} vs "
                 f"{expected_ids[:12]}); fix: use --gguf none and phogpt_chat.py")
        print(f"llama.cpp tokenizes a Vietnamese sample as PhoGPT does "
              f"({len(got_ids)} ids)")

    # ---- Ollama's Modelfile and a README (prompts from prompts.py) ----
    head, tail = prompts.PHOGPT_USER_FIRST, prompts.PHOGPT_ASSISTANT
    later = prompts.PHOGPT_USER_NEXT
    if template == "instruct":
        head, tail = prompts.INSTRUCT_USER, prompts.INSTRUCT_ASSISTANT
        later = prompts.INSTRUCT_TURN_SEPARATOR + prompts.INSTRUCT_USER
    stop = prompts.STOP_STRINGS[template]
    # A Go template over the whole chat, so that later turns see earlier ones
    # as prompts.generation_prompt writes them ({{ .Prompt }} loses the
    # separators and EOS between turns). System text: before the question.
    system = "{{ if $.System }}{{ $.System }}\n\n{{ end }}"
    question = ("{{ if $first }}" + head + system + "{{ else }}" + later
                + "{{ end }}{{ .Content }}")
    answer = tail + " {{ .Content }}" + tokenizer.eos_token
    ollama_template = ("{{ $first := true }}{{ range .Messages }}"
                       + '{{ if eq .Role "user" }}' + question + "{{ $first = false }}"
                       + '{{ else if eq .Role "assistant" }}' + answer
                       + "{{ end }}{{ end }}" + tail)
    name = gguf_path.name
    # Sampling as phogpt_chat.py (VinAI's); 2,048 tokens of context keep 4B
    # q4_k_m near 3.5 GB of RAM (bench/phogpt_laptop.py). Triple quotes keep
    # newlines: the stop string starts with a real one.
    modelfile = f'''# ollama create phogpt -f Modelfile && ollama run phogpt
FROM ./{name}
TEMPLATE """{ollama_template}"""
PARAMETER stop """{stop}"""
PARAMETER stop "{tokenizer.eos_token}"
PARAMETER temperature 1.0
PARAMETER top_p 0.9
PARAMETER top_k 50
PARAMETER num_ctx 2048
'''
    (staging / "Modelfile").write_text(modelfile, encoding="utf-8")
    example = (head + "Xin chào" + tail).replace("\n", "\\n")
    source = f"`{model_name}`" + (f" with the adapter `{adapter}`" if adapter else "")
    # --no-mmap: llama.cpp copies q4_K weights into its own layout on x86;
    # mapped, the file stays beside that copy (4B: 3.9 GB, not 2.5 GB).
    readme = f'''# PhoGPT on your laptop ({name}), from {source}

    ollama create phogpt -f Modelfile && ollama run phogpt
    llama-cli -m {name} -c 2048 --no-mmap      # chat, with PhoGPT's template
    llama-completion -m {name} -c 2048 --no-mmap -no-cnv -e -p "{example}" \\
        -n 256 --temp 1.0 --top-p 0.9 --top-k 50 -r "{stop.strip()}"

In Python (pip install llama-cpp-python):

    from llama_cpp import Llama
    llm = Llama("{name}", n_ctx=2048, use_mmap=False, verbose=False)
    reply = llm.create_chat_completion([{{"role": "user", "content": "Xin chào"}}])
    print(reply["choices"][0]["message"]["content"])
'''
    (staging / "README.md").write_text(readme, encoding="utf-8")
    written += ["Modelfile", "README.md"]

# ---- complete: moved in, and only now does the earlier export go ----
plumbing.move_in(staging, output, last="Modelfile" if args.gguf != "none" else "config.json")
plumbing.release_outputs()
print(f"wrote {', '.join(written)} to {output}")
if args.gguf != "none":
    print(f"next: cd {output} && ollama create phogpt -f Modelfile && ollama run phogpt")
