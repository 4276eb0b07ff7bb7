"""QLoRA training memory: phogpt_model.py beside transformers' MptForCausalLM, random weights.

The seed recipe (nf4 + double quant, LoRA r=32 on attn.Wqkv, attn.out_proj, ffn.up_proj,
ffn.down_proj, paged AdamW 32-bit, batch 1) at 2,048 tokens without checkpointing and 8,192 tokens
with it (PhoGPT-4B shape), and 2,048 tokens with it (PhoGPT-7B5 shape). Peak GPU memory of one
training step. Needs a CUDA GPU; writes bench/results/phogpt_train_memory.json.

    # ~10 min on an H100 (writes 7 and 15 GB of random weights)
    python bench/phogpt_train_memory.py
    # a tiny shape on the CPU: checks the code paths, measures nothing
    python bench/phogpt_train_memory.py --smoke
"""

import argparse
import datetime
import gc
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from phogpt_model import PhoGPTConfig, PhoGPTForCausalLM  # noqa: E402
from tiny_phogpt import PHOGPT_4B_CHAT_CONFIG  # noqa: E402

SHAPES = {
    "4b": {},
    "7b5": dict(d_model=4096, n_heads=32, max_seq_len=2048, vocab_size=250880),
    "tiny": dict(d_model=192, n_heads=6, n_layers=2, vocab_size=512, max_seq_len=512),
}
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument(
    "--cases",
    default="4b:2048:nogc,4b:8192:gc,7b5:2048:gc",
    help="shape:tokens:gc|nogc, comma-separated",
)
parser.add_argument(
    "--impls", default="phogpt,native", help="phogpt and/or native (transformers MptForCausalLM)"
)
parser.add_argument(
    "--dtype", default="float16", help="compute dtype (float16 as on a T4, or bfloat16)"
)
parser.add_argument(
    "--output",
    default=None,
    help="where the figures go (default bench/results/phogpt_train_memory.json, "
    "or phogpt_train_memory_smoke.json with --smoke)",
)
parser.add_argument(
    "--smoke", action="store_true", help="tiny shape on the CPU, to check the code paths"
)
args = parser.parse_args([] if "ipykernel" in sys.modules else None)
args.output = args.output or os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    "results",
    "phogpt_train_memory" + ("_smoke" if args.smoke else "") + ".json",
)

if not torch.cuda.is_available() and not args.smoke:
    sys.exit(
        "phogpt_train_memory.py measures GPU memory and needs CUDA; "
        "run it on a GPU machine (or --smoke for a CPU check)"
    )
device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
dtype = getattr(torch, args.dtype) if device == "cuda" else torch.float32
cases = ["tiny:64:nogc", "tiny:128:gc"] if args.smoke else args.cases.split(",")

from bitsandbytes.optim import PagedAdamW32bit  # noqa: E402  (after the CUDA check: the import is slow)
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training  # noqa: E402
from transformers import BitsAndBytesConfig, MptConfig, MptForCausalLM  # noqa: E402


def load(impl, folder, config_dict):
    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
    )
    kwargs = dict(dtype=dtype, quantization_config=quantization, device_map=device)
    if impl == "phogpt":
        return PhoGPTForCausalLM.from_pretrained(folder, **kwargs)
    keys = ("d_model", "n_heads", "n_layers", "vocab_size", "max_seq_len", "expansion_ratio")
    config = MptConfig(
        **{k: config_dict[k] for k in keys},
        no_bias=True,
        # It rejects the real 0.0
        attn_config={**config_dict["attn_config"], "attn_pdrop": 0},
    )
    # Drops PhoGPT's biases, as users get
    return MptForCausalLM.from_pretrained(folder, config=config, **kwargs)


def train_step_memory(impl, folder, config_dict, tokens, checkpointing):
    """Peak GiB (allocated, reserved) and seconds of the second of two QLoRA training steps."""
    model = load(impl, folder, config_dict)
    model = prepare_model_for_kbit_training(
        model,
        use_gradient_checkpointing=checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )
    model = get_peft_model(
        model,
        LoraConfig(
            r=32,
            lora_alpha=32,
            lora_dropout=0.05,
            task_type="CAUSAL_LM",
            target_modules=["attn.Wqkv", "attn.out_proj", "ffn.up_proj", "ffn.down_proj"],
        ),
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = (
        PagedAdamW32bit(trainable, lr=1e-4)
        if device == "cuda"
        else torch.optim.AdamW(trainable, lr=1e-4)
    )
    ids = torch.randint(4, config_dict["vocab_size"], (1, tokens), device=device)
    model.train()
    for step in range(2):
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        with torch.autocast(device, dtype=dtype, enabled=device == "cuda"):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if device != "cuda":
        return None, None, seconds
    return (
        torch.cuda.max_memory_allocated() / 2**30,
        torch.cuda.max_memory_reserved() / 2**30,
        seconds,
    )


results = {
    "smoke_test": args.smoke,
    "device": torch.cuda.get_device_name()
    if device == "cuda"
    else "cpu (smoke test, not a benchmark)",
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "torch": torch.__version__,
    "recipe": f"nf4 double quant, compute {dtype}, LoRA r=32 on 4 targets, paged AdamW 32-bit, "
    "batch 1",
    "runs": [],
}
written = {}
with tempfile.TemporaryDirectory() as workdir:
    for case in cases:
        shape, tokens, checkpointing = case.split(":")
        config_dict = dict(PHOGPT_4B_CHAT_CONFIG, **SHAPES[shape])
        # Random weights on disk once per shape, loaded through BitsAndBytesConfig
        if shape not in written:
            folder = written[shape] = os.path.join(workdir, shape)
            torch.manual_seed(0)
            with torch.device(device):
                PhoGPTForCausalLM(PhoGPTConfig(**config_dict)).to(torch.float16).save_pretrained(
                    folder
                )
            if device == "cuda":
                torch.cuda.empty_cache()
        for impl in args.impls.split(","):
            run = dict(
                impl=impl, shape=shape, tokens=int(tokens), checkpointing=checkpointing == "gc"
            )
            try:
                allocated, reserved, seconds = train_step_memory(
                    impl, written[shape], config_dict, int(tokens), run["checkpointing"]
                )
                run.update(
                    peak_allocated_gib=allocated and round(allocated, 2),
                    peak_reserved_gib=reserved and round(reserved, 2),
                    step_s=round(seconds, 3),
                )
            except torch.OutOfMemoryError:
                run["error"] = "out of memory"
            results["runs"].append(run)
            print(json.dumps(run))
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()

os.makedirs(os.path.dirname(args.output), exist_ok=True)
with open(args.output, "w") as f:
    json.dump(results, f, indent=2)
print(f"wrote {args.output}")
