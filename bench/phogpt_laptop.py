"""PhoGPT-4B on a laptop CPU: our PyTorch chat (bf16, fp32) against llama.cpp (f16, q8_0, q4_k_m).

At PhoGPT-4B's real shape (3.7B parameters: d_model 3072, 24 heads, 32 layers, vocab 20480) with
random weights: time to first token, decode tok/s and peak RAM after prompts of 64 and 2,048
tokens, and this machine's memory read bandwidth, measured in the same run. Each variant runs in
a process of its own, so its peak RAM is its own. Decoding one token reads every weight once, so
tok/s <= bandwidth / weight bytes: the table says how close each variant gets to that limit.
llama.cpp runs without mmap (llama-cli --no-mmap); "+kv8" keeps its KV cache in q8_0, and
"+mmap" (not run by default) maps the file as llama.cpp does by default.

    python bench/phogpt_laptop.py            # ~40 min on 2 cores; ~25 GB disk, ~23 GB RAM
    python bench/phogpt_laptop.py --smoke    # a tiny shape in a minute: checks the code path
    python bench/phogpt_laptop.py --work-dir W --variants llama-q4_k_m --threads 1   # reuses W

The GGUF files come from phogpt_export.py (f16), then llama.cpp's quantiser (q8_0, q4_k_m).
Needs llama-cpp-python and gguf. Writes bench/results/phogpt_laptop.json (_smoke.json).
"""
import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ["torch-bf16", "torch-fp32", "llama-f16", "llama-q8_0", "llama-q4_k_m",
            "llama-q4_k_m+kv8"]

# ---- flags ----
parser = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
parser.add_argument("--smoke", action="store_true", help="tiny shape: checks the code path only")
parser.add_argument("--prompt-tokens", default="64,2048", help="prompt lengths, comma-separated")
parser.add_argument("--new-tokens", type=int, default=32, help="tokens decoded after each prompt")
parser.add_argument("--variants", default=",".join(VARIANTS), help="which runs, comma-separated")
parser.add_argument("--output", default=os.path.join(ROOT, "bench", "results",
                                                     "phogpt_laptop.json"))
parser.add_argument("--work-dir", default="",
                    help="where the model files go, kept and reused by the next run "
                    "(default: a temp dir, removed)")
parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads")
# internal: the parent runs each variant as `--child VARIANT --files DIR` in a fresh process
parser.add_argument("--child", default="", help=argparse.SUPPRESS)
parser.add_argument("--files", default="", help=argparse.SUPPRESS)
args = parser.parse_args([] if "ipykernel" in sys.modules else None)
if args.smoke:
    args.prompt_tokens, args.new_tokens = "16,64", 8
    args.output = args.output.replace(".json", "_smoke.json")
prompt_lengths = [int(n) for n in args.prompt_tokens.split(",")]
threads = args.threads

import numpy as np  # noqa: E402

sys.path.insert(0, ROOT)


def ram_gb(pid="self", field="VmHWM"):
    """A memory line of /proc/PID/status in GB: VmHWM, the peak resident memory (unlike
    ru_maxrss, not inherited over exec), or RssAnon, the process's own memory without the file
    pages it maps. Not Linux: ru_maxrss, the peak of this process."""
    try:
        with open(f"/proc/{pid}/status") as f:
            line = next(line for line in f if line.startswith(field + ":"))
        return int(line.split()[1]) * 1024 / 1e9
    except (OSError, StopIteration):
        # bytes on macOS
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e9


def prompt_ids(length, vocab):
    """The same random prompt for every variant (ids of real tokens, no special ones)."""
    return np.random.default_rng(length).integers(4, vocab, size=length).tolist()


def read_bandwidth_gbs(gib):
    """Best of 5 sums over a gib-GiB tensor on every core: what decoding can stream at most."""
    import torch
    torch.set_num_threads(threads)
    x = torch.ones(gib * 2**30 // 4)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - start)
    gbs = x.numel() * 4 / best / 1e9
    del x
    return gbs


def torch_runs(folder, precision, vocab):
    """Our chat path: phogpt_model.py with a DynamicCache, prefill then one token a step."""
    import torch
    from transformers import DynamicCache

    from phogpt_model import CACHE_NAME, load_phogpt
    torch.set_num_threads(threads)
    torch.set_grad_enabled(False)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[precision]
    model, _ = load_phogpt(folder, dtype=dtype)
    model.eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    # warm-up: the first call sets up kernels; a student's first question pays it, not every one
    model(torch.tensor([prompt_ids(8, vocab)]), logits_to_keep=1)
    runs = []
    for length in prompt_lengths:
        ids = torch.tensor([prompt_ids(length, vocab)])
        cache = DynamicCache(config=model.config)
        start = time.perf_counter()
        out = model(ids, use_cache=True, logits_to_keep=1, **{CACHE_NAME: cache})
        token = out.logits[0, -1].argmax().view(1, 1)
        first_s = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(args.new_tokens):
            out = model(token, use_cache=True, **{CACHE_NAME: cache})
            token = out.logits[0, -1].argmax().view(1, 1)
        decode_s = time.perf_counter() - start
        runs.append(dict(prompt_tokens=length, ttft_s=round(first_s, 3),
                         tokens_per_s=round(args.new_tokens / decode_s, 3),
                         peak_ram_gb=round(ram_gb(), 2)))
    return weight_bytes, runs


def llama_runs(path, vocab, kv_q8, mmap):
    """llama.cpp through llama-cpp-python: its own generate loop, greedy (temperature 0)."""
    import logging

    import llama_cpp
    logging.getLogger("llama-cpp-python").setLevel(logging.CRITICAL)
    n_ctx = max(prompt_lengths) + args.new_tokens + 8
    # "+kv8": the KV cache in q8_0, half of f16's bytes (llama-cli -fa on -ctk q8_0 -ctv q8_0)
    kv_options = {}
    if kv_q8:
        kv_options = dict(flash_attn=True, type_k=llama_cpp.GGML_TYPE_Q8_0,
                   type_v=llama_cpp.GGML_TYPE_Q8_0)
    # no mmap (llama-cli --no-mmap) unless "+mmap": on x86 llama.cpp repacks q4_K weights into
    # a copy of its own, and with mmap the file's pages stay mapped beside it
    llm = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_threads=threads,
                          n_threads_batch=threads, use_mmap=mmap, verbose=False, **kv_options)
    # warm-up: the first eval plans the graph
    for _ in llm.generate(prompt_ids(8, vocab), temp=0.0, reset=True):
        break
    runs = []
    for length in prompt_lengths:
        start = time.perf_counter()
        times = []
        for _ in llm.generate(prompt_ids(length, vocab), temp=0.0, reset=True):
            times.append(time.perf_counter())
            if len(times) == args.new_tokens + 1:
                break
        decode_s = times[-1] - times[0]
        runs.append(dict(prompt_tokens=length, ttft_s=round(times[0] - start, 3),
                         tokens_per_s=round(args.new_tokens / decode_s, 3),
                         peak_ram_gb=round(ram_gb(), 2)))
    llm.close()
    return os.path.getsize(path), runs


# ---- child: one variant, its numbers as the last line (llama.cpp runs never import torch) ----
if args.child:
    vocab = len(json.load(open(os.path.join(args.files, "model", "tokenizer.json")))["model"][
        "vocab"])
    kind, precision = args.child.split("-", 1)
    if kind == "torch":
        weight_bytes, runs = torch_runs(os.path.join(args.files, "model"), precision, vocab)
    else:
        precision, _, option = precision.partition("+")
        path = os.path.join(args.files, f"phogpt-{precision}.gguf")
        weight_bytes, runs = llama_runs(path, vocab, kv_q8=option == "kv8", mmap=option == "mmap")
    print(json.dumps({"weight_bytes": weight_bytes, "runs": runs}))
    sys.exit(0)

import torch  # noqa: E402

import prompts  # noqa: E402
from phogpt_model import PhoGPTConfig, PhoGPTForCausalLM  # noqa: E402
from tiny_phogpt import PHOGPT_4B_CHAT_CONFIG, save_tiny_checkpoint  # noqa: E402

# ---- parent: the model files ----
shape = dict(d_model=3072, n_heads=24, n_layers=32, vocab_size=20480, max_seq_len=8192)
if args.smoke:
    shape = dict(d_model=256, n_heads=4, n_layers=2, vocab_size=2048, max_seq_len=512)
work = args.work_dir or tempfile.mkdtemp(prefix="phogpt_laptop_")
model_dir = os.path.join(work, "model")
results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "machine": f"{platform.processor() or platform.machine()}, {threads} cores",
           "smoke": args.smoke, "shape": shape, "new_tokens": args.new_tokens,
           "torch": torch.__version__, "threads": threads}
gib = 1 if args.smoke else 4
results["read_bandwidth_gbs"] = round(read_bandwidth_gbs(gib), 1)
print(f"read bandwidth: {results['read_bandwidth_gbs']} GB/s (sum over {gib} GiB, "
      f"{threads} threads)", flush=True)

# a --work-dir that holds the files of an earlier run (of this shape) reuses them
reuse = os.path.isfile(os.path.join(work, "phogpt-q4_k_m.gguf"))
if reuse:
    print(f"reusing the model files in {work}", flush=True)
else:
    start = time.perf_counter()
    # a tiny checkpoint's tokenizer (PhoGPT's special ids), random weights at the real shape
    texts = [prompts.PHOGPT_USER_FIRST + "Xin chào" + prompts.PHOGPT_ASSISTANT,
             "Hà Nội, Việt Nam"]
    save_tiny_checkpoint(model_dir, texts)
    config = dict(PHOGPT_4B_CHAT_CONFIG, **shape, torch_dtype="bfloat16")
    torch.manual_seed(0)
    model = PhoGPTForCausalLM._from_config(PhoGPTConfig(**config), dtype=torch.bfloat16)
    print(f"{sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters, random",
          flush=True)
    # save_pretrained may shard 7.4 GB: the tiny weights must not stay next to the shards
    os.remove(os.path.join(model_dir, "model.safetensors"))
    model.save_pretrained(model_dir)
    del model
    results["make_checkpoint_s"] = round(time.perf_counter() - start, 1)

    # the GGUF files: phogpt_export.py as a student runs it, then llama.cpp's quantiser
    start = time.perf_counter()
    export = [sys.executable, os.path.join(ROOT, "phogpt_export.py"), "--model", model_dir,
              "--gguf", "f16", "--output", os.path.join(work, "export"), "--overwrite"]
    process = subprocess.Popen(export, cwd=ROOT)
    export_peak, export_own = 0.0, 0.0
    while process.poll() is None:
        export_peak = max(export_peak, ram_gb(process.pid))
        export_own = max(export_own, ram_gb(process.pid, "RssAnon"))
        time.sleep(0.5)
    assert process.returncode == 0, "phogpt_export.py failed"
    shutil.move(os.path.join(work, "export", "phogpt-f16.gguf"),
                os.path.join(work, "phogpt-f16.gguf"))
    results["export_f16_s"] = round(time.perf_counter() - start, 1)
    # the peak counts the safetensors pages the loader maps; "own" is the process's memory
    results["export_peak_ram_gb"] = round(export_peak, 2)
    results["export_own_ram_gb"] = round(export_own, 2)
    import ctypes
    import logging

    import llama_cpp

    # the quantiser logs every tensor
    logging.getLogger("llama-cpp-python").setLevel(logging.CRITICAL)
    for name, ftype in [("q8_0", llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0),
                        ("q4_k_m", llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M)]:
        start = time.perf_counter()
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = ftype
        params.nthread = threads
        source = os.path.join(work, "phogpt-f16.gguf").encode()
        target = os.path.join(work, f"phogpt-{name}.gguf").encode()
        assert llama_cpp.llama_model_quantize(source, target, ctypes.byref(params)) == 0
        results[f"quantise_{name}_s"] = round(time.perf_counter() - start, 1)
print({k: v for k, v in results.items() if k.endswith(("_s", "_gb"))}, flush=True)

# ---- parent: each variant in its own process ----
results["variants"] = {}
for variant in args.variants.split(","):
    child = [sys.executable, os.path.abspath(__file__), "--child", variant, "--files", work,
             "--prompt-tokens", args.prompt_tokens, "--new-tokens", str(args.new_tokens),
             "--threads", str(threads)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(child, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        print(f"{variant} failed:\n{done.stderr[-2000:]}")
        continue
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    results["variants"][variant] = measured
    print(variant, json.dumps(measured["runs"]), flush=True)

# the bandwidth again at the end: a shared machine varies, and the limit takes the best reading
bandwidth = round(read_bandwidth_gbs(gib), 1)
print(f"read bandwidth at the end: {bandwidth} GB/s", flush=True)
results["read_bandwidth_end_gbs"] = bandwidth
bandwidth = max(bandwidth, results["read_bandwidth_gbs"])
for measured in results["variants"].values():
    limit = bandwidth * 1e9 / measured["weight_bytes"]
    for run in measured["runs"]:
        run["bandwidth_limit_tok_s"] = round(limit, 2)
        run["percent_of_limit"] = round(100 * run["tokens_per_s"] / limit, 1)
    measured["weight_gb"] = round(measured["weight_bytes"] / 1e9, 2)

# ---- report ----
print("\n| variant | weights GB | prompt | first token s | decode tok/s | % of bandwidth limit "
      "| peak RAM GB |")
print("|---|---|---|---|---|---|---|")
for variant, measured in results["variants"].items():
    for run in measured["runs"]:
        print(f"| {variant} | {measured['weight_gb']} | {run['prompt_tokens']} | {run['ttft_s']} "
              f"| {run['tokens_per_s']} | {run['percent_of_limit']} | {run['peak_ram_gb']} |")
os.makedirs(os.path.dirname(args.output), exist_ok=True)
with open(args.output + ".partial", "w", encoding="utf-8") as f:
    json.dump(results, f, indent=2, ensure_ascii=False)
os.replace(args.output + ".partial", args.output)
print(f"wrote {args.output}")
if not args.work_dir:
    shutil.rmtree(work)
