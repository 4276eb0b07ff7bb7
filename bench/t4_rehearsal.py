"""T4 rehearsal on the CPU: QLoRA steps of PhoGPT-4B's shape, memory by part and time per step.

    python bench/t4_rehearsal.py --smoke             # a tiny shape, seconds: checks the bench
    python bench/t4_rehearsal.py                     # PhoGPT-4B's shape (32 layers): very slow
    python bench/t4_rehearsal.py --layers 2          # 4B's width, 2 of its 32 blocks

Random weights, quantised to nf4 (double quantisation) in memory; bf16 compute (the bytes of
the T4's fp16: --compute fp16 is ~1,000x slower on a CPU); LoRA r=32 on Wqkv/out_proj/up_proj/
down_proj, AdamW, batch 1 at each --lengths, with activation checkpointing off and on: what
phogpt_qlora.py does on a T4. Every figure is MEASURED ON THIS CPU: memory by part (nf4 weights
and the 16-bit rest, LoRA + gradients + AdamW state, activations = the process's peak RSS during
a step above its RSS before it, glibc's free memory handed back first; and, exactly, the bytes
autograd saves for the backward pass) and seconds per step.
Writes bench/results/t4_rehearsal-smoke.json or t4_rehearsal-LAYERSlayers-COMPUTE.json.
"""
import argparse
import ctypes
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

parser = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--smoke", action="store_true", help="tiny shape (d 256, 2 layers), seconds")
parser.add_argument("--layers", type=int, default=32, help="blocks of PhoGPT-4B's width (32: all)")
parser.add_argument("--lengths", default="512,1024", help="tokens per example, comma-separated")
parser.add_argument("--steps", type=int, default=2, help="timed steps per setting (after one)")
parser.add_argument("--compute", default="bf16", choices=["bf16", "fp16"],
                    help="compute dtype; bf16 has fp16's bytes, and a CPU runs fp16 matmuls "
                         "~1,000x slower (0.6 vs 790 GFLOP/s measured here)")
parser.add_argument("--output", default="", help="JSON file (default under bench/results/)")
args = parser.parse_args()

import bitsandbytes as bnb  # noqa: E402  (asked for explicitly: 4-bit is the point here)
import torch  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402

from phogpt_model import PhoGPTConfig, PhoGPTForCausalLM  # noqa: E402

torch.manual_seed(0)
COMPUTE = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.compute]
GIB = 2**30
shape = dict(d_model=3072, n_heads=24, n_layers=args.layers, vocab_size=20480)
lengths = [int(n) for n in args.lengths.split(",")]
if args.smoke:
    shape = dict(d_model=256, n_heads=4, n_layers=2, vocab_size=2048)
    lengths = [64, 128]


def rss(field="VmRSS"):
    """This process's resident memory (or its peak, VmHWM) in bytes, from /proc."""
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", text)[1]) * 1024


def reset_peak():
    # glibc keeps freed memory for reuse: the last step's activations would hide inside the
    # RSS before this one. malloc_trim hands it back first, so the peak counts them anew.
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    # Linux: writing 5 to clear_refs resets VmHWM to the current RSS.
    Path("/proc/self/clear_refs").write_text("5")


def build_model():
    """PhoGPT of this shape, random, its block Linears as nf4 Linear4bit (16-bit compute)."""
    config = PhoGPTConfig(**shape, expansion_ratio=4, max_seq_len=8192, no_bias=False,
                          norm_type="low_precision_layernorm", use_cache=False)
    with torch.device("meta"):
        model = PhoGPTForCausalLM(config)
    model.to_empty(device="cpu")
    model.to(COMPUTE)
    for name, module in list(model.named_modules()):
        if isinstance(module, torch.nn.Linear) and name.startswith("transformer.blocks"):
            weight = torch.randn(module.out_features, module.in_features,
                                 dtype=COMPUTE) * 0.02
            layer = bnb.nn.Linear4bit(module.in_features, module.out_features, bias=True,
                                      compute_dtype=COMPUTE, quant_type="nf4",
                                      compress_statistics=True, device="meta")
            layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4",
                                             compress_statistics=True)._quantize("cpu")
            layer.bias = torch.nn.Parameter(torch.zeros(module.out_features,
                                                        dtype=COMPUTE),
                                            requires_grad=False)
            # Training on the CPU: the repacked inference layout has no backward.
            layer.support_avx512bf16_for_cpu = False
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, layer)
            del weight
    # Embedding (tied to lm_head) and norms: 16-bit, random.
    with torch.no_grad():
        model.transformer.wte.weight.normal_(0, 0.02)
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.fill_(1)
                module.bias.zero_()
    model.tie_weights()
    return model


def keep_count(saved):
    """A saved_tensors_hooks pack that notes each saved tensor's storage (parameters aside)."""
    weights = {p.data_ptr() for p in model.parameters()}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor
    return pack


def weight_bytes(model):
    """Bytes of every tensor the base holds: packed nf4, its scales, the 16-bit rest."""
    seen, total = set(), 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            total += tensor.numel() * tensor.element_size()
    for module in model.modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if state is not None:
            total += state.absmax.numel() * state.absmax.element_size()
            if state.state2 is not None:
                total += state.state2.absmax.numel() * state.state2.absmax.element_size()
    return total


print(f"shape {shape}; lengths {lengths}; {torch.get_num_threads()} threads", flush=True)
before = rss()
started = time.time()
model = build_model()
print(f"built and quantised in {time.time() - started:.0f} s", flush=True)
base_bytes = weight_bytes(model)
lora = LoraConfig(r=32, lora_alpha=32, lora_dropout=0.05, bias="none", task_type="CAUSAL_LM",
                  target_modules=["attn.Wqkv", "attn.out_proj", "ffn.up_proj", "ffn.down_proj"])
model = get_peft_model(model, lora)
model.train()
trainable = [p for p in model.parameters() if p.requires_grad]
optimizer = torch.optim.AdamW(trainable, lr=1e-4)
vocab = shape["vocab_size"]
rows = []
for length in lengths:
    for checkpointing in (False, True):
        if checkpointing:
            model.base_model.model.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.base_model.model.activation_checkpointing_disable()
        ids = torch.randint(4, min(vocab, 2000), (1, length))
        seconds, peaks, kept = [], [], []
        for step in range(args.steps + 1):
            optimizer.zero_grad(set_to_none=True)
            reset_peak()
            resting = rss()
            clock = time.perf_counter()
            saved = {}
            # What autograd keeps for the backward pass, by storage: the activations
            # themselves, whatever the allocator does with freed memory.
            with torch.autograd.graph.saved_tensors_hooks(keep_count(saved), lambda t: t):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            # The first step allocates AdamW's state: not timed, its peak kept apart.
            if step > 0:
                seconds.append(time.perf_counter() - clock)
                peaks.append(rss("VmHWM") - resting)
                kept.append(sum(saved.values()))
            print(f"{length} tokens, checkpointing {'on' if checkpointing else 'off'}: "
                  f"step {step} {time.perf_counter() - clock:.1f} s, loss {loss.item():.2f}",
                  flush=True)
        lora_bytes = sum(p.numel() * p.element_size() * 2 for p in trainable)
        lora_bytes += sum(t.numel() * t.element_size() for s in optimizer.state.values()
                          for t in s.values() if torch.is_tensor(t) and t.dim() > 0)
        activations = max(peaks)
        measured = (base_bytes + lora_bytes + activations) / GIB
        rows.append({
            "tokens": length, "checkpointing": checkpointing,
            "base_weights_gib": round(base_bytes / GIB, 3),
            "lora_grads_adamw_gib": round(lora_bytes / GIB, 3),
            "activations_gib": round(activations / GIB, 3),
            "saved_for_backward_gib": round(max(kept) / GIB, 3),
            "measured_total_gib": round(measured, 3),
            "seconds_per_step": round(sum(seconds) / len(seconds), 2),
        })
        print(json.dumps(rows[-1]), flush=True)

result = {
    "what": "QLoRA steps of PhoGPT-4B's shape (random weights): nf4 + double quantisation, "
            f"{args.compute} compute, LoRA r=32 on 4 Linears, AdamW, batch 1",
    "measured_on": "CPU (figures are CPU measurements, not a T4)", "shape": shape,
    "compute": args.compute, "threads": torch.get_num_threads(), "steps_timed": args.steps,
    "activations_basis": "peak RSS during a step minus RSS before it, after malloc_trim (process)",
    "rss_before_build_gib": round(before / GIB, 3), "rows": rows,
}
name = f"t4_rehearsal-{args.layers}layers-{args.compute}.json"
name = "t4_rehearsal-smoke.json" if args.smoke else name
out = Path(args.output or ROOT / "bench" / "results" / name)
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps(result, indent=1), encoding="utf-8")
print(f"wrote {out}")
