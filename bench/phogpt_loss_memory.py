"""Training-loss memory: phogpt_model.py's chunked answer loss against the usual full-logits loss.

One forward + backward of a small PhoGPT body with 7B5's 250,880-token vocabulary (where the
logits dominate), batch 4 x 1,024 tokens, the loss on the last half of each row (the answers).
Each variant runs in a fresh process; the figure is the rise of peak memory during the step
(CPU: process peak RSS; CUDA: peak allocated). Runs on the CPU or a GPU; writes
bench/results/phogpt_loss_memory_<device>.json.

    python bench/phogpt_loss_memory.py            # about a minute on a 2-core CPU
"""

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from phogpt_model import PhoGPTConfig, PhoGPTForCausalLM  # noqa: E402
from tiny_phogpt import PHOGPT_4B_CHAT_CONFIG  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument(
    "--vocab-size", type=int, default=250880, help="250880 = PhoGPT-7B5, 20480 = PhoGPT-4B"
)
parser.add_argument("--batch-size", type=int, default=4, help="rows per step")
parser.add_argument("--max-length", type=int, default=1024, help="tokens per row")
parser.add_argument(
    "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda"
)
# One measurement, in a child
parser.add_argument("--variant", choices=["full", "chunked"], help=argparse.SUPPRESS)
args = parser.parse_args()
if args.device == "cuda" and not torch.cuda.is_available():
    sys.exit(
        "error: --device cuda, but PyTorch sees no CUDA GPU; "
        "fix: run on a GPU machine or use --device cpu"
    )


def peak_bytes():
    if args.device == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# Child process: build, then measure one step
if args.variant:
    torch.manual_seed(0)
    config = PhoGPTConfig(
        **dict(
            PHOGPT_4B_CHAT_CONFIG,
            d_model=256,
            n_heads=4,
            n_layers=2,
            vocab_size=args.vocab_size,
            torch_dtype="float32",
        )
    )
    model = PhoGPTForCausalLM(config).to(args.device)
    ids = torch.randint(4, args.vocab_size, (args.batch_size, args.max_length), device=args.device)
    labels = ids.masked_fill(
        torch.arange(args.max_length, device=args.device) < args.max_length // 2, -100
    )
    # Warm-up: allocator, kernels, gradient buffers
    model(ids[:, :8], labels=labels[:, :8]).loss.backward()
    model.zero_grad(set_to_none=False)
    before, start = peak_bytes(), time.perf_counter()
    # train(): the chunked answer loss; eval(): full logits + transformers' loss (the usual way),
    # same value
    model.train(args.variant == "chunked")
    loss = model(ids, labels=labels).loss
    loss.backward()
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "variant": args.variant,
                "loss": round(loss.item(), 5),
                "step_s": round(seconds, 3),
                "peak_rise_gib": round((peak_bytes() - before) / 2**30, 3),
            }
        )
    )
    sys.exit(0)

runs = []
for variant in ("full", "chunked"):
    child = subprocess.run(
        [
            sys.executable,
            __file__,
            "--variant",
            variant,
            "--device",
            args.device,
            "--vocab-size",
            str(args.vocab_size),
            "--batch-size",
            str(args.batch_size),
            "--max-length",
            str(args.max_length),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    runs.append(json.loads(child.stdout.strip().splitlines()[-1]))
    print(runs[-1])
assert abs(runs[0]["loss"] - runs[1]["loss"]) < 1e-3, "the two losses differ"
full_logits_gib = args.batch_size * args.max_length * args.vocab_size * 4 / 2**30
device = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({os.cpu_count()} cores)"
results = {
    "device": device,
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "torch": torch.__version__,
    "vocab_size": args.vocab_size,
    "batch_size": args.batch_size,
    "max_length": args.max_length,
    "fp32_logits_gib": round(full_logits_gib, 2),
    "runs": runs,
    "memory": "peak allocated rise" if args.device == "cuda" else "process peak RSS rise",
}
path = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "results", f"phogpt_loss_memory_{args.device}.json"
)
os.makedirs(os.path.dirname(path), exist_ok=True)
with open(path, "w") as f:
    json.dump(results, f, indent=2)
full, chunked = runs
print(
    f"full logits (fp32) would be {full_logits_gib:.2f} GiB; "
    f"peak rise: full {full['peak_rise_gib']} GiB ({full['step_s']} s), "
    f"chunked {chunked['peak_rise_gib']} GiB ({chunked['step_s']} s); wrote {path}"
)
