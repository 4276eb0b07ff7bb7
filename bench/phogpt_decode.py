"""Chat decode speed: phogpt_model.py beside transformers' native MptForCausalLM, random weights.

Greedy, batch 1, 128 new tokens after a 64- and a 2,048-token history, bf16 and nf4; time to
first token. Needs a CUDA GPU; writes bench/results/phogpt_decode.json.

    python bench/phogpt_decode.py          # PhoGPT-4B shape (3.7B parameters), ~10 min on an H100
    python bench/phogpt_decode.py --smoke  # a tiny shape on the CPU: checks the code only
"""

import argparse
import datetime
import json
import os
import sys
import tempfile
import time

import torch
from transformers import StaticCache

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from phogpt_model import CACHE_NAME, PhoGPTConfig, PhoGPTForCausalLM  # noqa: E402
from tiny_phogpt import PHOGPT_4B_CHAT_CONFIG  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument(
    "--histories", default="64,2048", help="prompt lengths (tokens) before decoding"
)
parser.add_argument("--new-tokens", type=int, default=128, help="tokens generated per measurement")
parser.add_argument(
    "--impls",
    default="phogpt,phogpt-static,native",
    help="phogpt (DynamicCache), phogpt-static "
    "(StaticCache + torch.compile, the chat fast path), native (transformers MptForCausalLM)",
)
parser.add_argument("--no-nf4", action="store_true", help="skip the 4-bit nf4 measurements")
parser.add_argument(
    "--output",
    default=None,
    help="where the figures go (default bench/results/phogpt_decode.json, "
    "or phogpt_decode_smoke.json with --smoke)",
)
parser.add_argument(
    "--smoke", action="store_true", help="tiny shape on the CPU, to check the code paths"
)
args = parser.parse_args([] if "ipykernel" in sys.modules else None)
args.output = args.output or os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    "results",
    "phogpt_decode" + ("_smoke" if args.smoke else "") + ".json",
)

if not torch.cuda.is_available() and not args.smoke:
    sys.exit(
        "phogpt_decode.py measures GPU speed and needs CUDA; "
        "run it on a GPU machine (or --smoke for a CPU check)"
    )
device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
dtype = torch.bfloat16 if device == "cuda" else torch.float32
shape = (
    dict(d_model=192, n_heads=6, n_layers=2, vocab_size=512, max_seq_len=512) if args.smoke else {}
)
histories = [8, 32] if args.smoke else [int(h) for h in args.histories.split(",")]
new_tokens = 8 if args.smoke else args.new_tokens
config_dict = dict(PHOGPT_4B_CHAT_CONFIG, **shape)


def sync():
    if device == "cuda":
        torch.cuda.synchronize()


def native_model(folder=None, **kwargs):
    """transformers' own MPT class with the same weights (no biases: left out, as it does)."""
    from transformers import MptConfig, MptForCausalLM

    keys = ("d_model", "n_heads", "n_layers", "vocab_size", "max_seq_len", "expansion_ratio")
    config = MptConfig(
        **{k: config_dict[k] for k in keys},
        no_bias=True,
        # It rejects the real 0.0
        attn_config={**config_dict["attn_config"], "attn_pdrop": 0},
    )
    return MptForCausalLM.from_pretrained(folder, config=config, **kwargs)


def measure(model, history, static=False):
    """(time to first token in s, decode tokens/s): 1 token, then new_tokens, greedy, no EOS."""
    ids = torch.randint(4, config_dict["vocab_size"], (1, history), device=device)
    mask = torch.ones_like(ids)
    kwargs = dict(do_sample=False, use_cache=True, eos_token_id=None, pad_token_id=3)
    times = {1: [], new_tokens + 1: []}
    # The first pair warms up (and compiles); then the best of three
    for n in [1, new_tokens + 1] * 4:
        # One cache size for every call, so the compiled decode step is reused, not recompiled
        if static:
            kwargs[CACHE_NAME] = StaticCache(
                config=model.config, max_cache_len=history + new_tokens + 1
            )
        sync()
        start = time.perf_counter()
        out = model.generate(ids, attention_mask=mask, min_new_tokens=n, max_new_tokens=n, **kwargs)
        sync()
        times[n].append(time.perf_counter() - start)
        assert out.shape[1] == history + n
    first, full = min(times[1][1:]), min(times[new_tokens + 1][1:])
    return first, new_tokens / (full - first)


torch.manual_seed(0)
results = {
    "smoke_test": args.smoke,
    "device": torch.cuda.get_device_name()
    if device == "cuda"
    else "cpu (smoke test, not a benchmark)",
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "torch": torch.__version__,
    "shape": {k: config_dict[k] for k in ("d_model", "n_heads", "n_layers", "vocab_size")},
    "new_tokens": new_tokens,
    "runs": [],
}
with tempfile.TemporaryDirectory() as folder:
    # Random weights
    model = PhoGPTForCausalLM(PhoGPTConfig(**config_dict)).to(device=device, dtype=dtype)
    print(
        f"{sum(p.numel() for p in model.parameters()) / 1e9:.3f}B parameters on {results['device']}"
    )
    # The nf4 runs load it back through BitsAndBytesConfig, as users do
    model.save_pretrained(folder)
    del model
    variants = [("bf16" if dtype == torch.bfloat16 else "fp32", None)]
    if not args.no_nf4:
        from transformers import BitsAndBytesConfig

        variants.append(
            (
                "nf4",
                BitsAndBytesConfig(
                    load_in_4bit=True,
                    bnb_4bit_quant_type="nf4",
                    bnb_4bit_use_double_quant=True,
                    bnb_4bit_compute_dtype=dtype,
                ),
            )
        )
    for precision, quantization in variants:
        load = dict(dtype=dtype, quantization_config=quantization, device_map=device)
        for impl in args.impls.split(","):
            model = (
                native_model(folder, **load)
                if impl == "native"
                else PhoGPTForCausalLM.from_pretrained(folder, **load)
            )
            model.eval()
            for history in histories:
                try:
                    ttft, speed = measure(model, history, static=impl == "phogpt-static")
                    run = dict(
                        impl=impl,
                        precision=precision,
                        history=history,
                        ttft_ms=round(ttft * 1000, 1),
                        tokens_per_s=round(speed, 1),
                    )
                except torch.OutOfMemoryError:
                    run = dict(
                        impl=impl, precision=precision, history=history, error="out of memory"
                    )
                    torch.cuda.empty_cache()
                results["runs"].append(run)
                print(json.dumps(run))
            del model
            if device == "cuda":
                torch.cuda.empty_cache()

os.makedirs(os.path.dirname(args.output), exist_ok=True)
with open(args.output, "w") as f:
    json.dump(results, f, indent=2)
print(f"wrote {args.output}")
