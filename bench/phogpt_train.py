"""Benchmark: phogpt_qlora.py's defaults vs the seed recipe, on one GPU, PhoGPT-shaped weights.

    python bench/phogpt_train.py            # GPU only: ~1,000 FAQ-like items of ~128 tokens
    python bench/phogpt_train.py --smoke    # CPU: tiny shapes, a few items, checks the code path

Runs the real script (subprocess) on a PhoGPT-4B-shaped checkpoint of random weights:
  defaults: 4-bit nf4, batch 16 (length-grouped), fused AdamW, checkpointing only if memory needs it
  seed:     4-bit nf4, batch 1, paged AdamW 32-bit, gradient checkpointing, fp16, no packing
and reports tokens/s, peak GPU memory and the mean loss of the last epoch; then the 7B5 shape's
peak memory at --max-length 1024. Prints the figures and writes bench/results/phogpt_train.json.
"""
import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

parser = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--items", type=int, default=1000, help="FAQ-like items")
parser.add_argument("--item-tokens", type=int, default=128, help="about this many tokens per item")
parser.add_argument("--epochs", type=float, default=3, help="epochs for each recipe")
parser.add_argument("--smoke", action="store_true",
                    help="CPU, tiny shapes: check the code path, write *_smoke.json")
parser.add_argument("--skip-7b5", action="store_true", help="skip the 7B5-shape memory run")
args = parser.parse_args([] if "ipykernel" in sys.modules else None)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# torch after the flags, so --help answers at once.
import torch  # noqa: E402

from tiny_phogpt import save_tiny_checkpoint  # noqa: E402

if not args.smoke and not torch.cuda.is_available():
    sys.exit("error: this benchmark needs a CUDA GPU (none is visible); "
             "fix: run it on a GPU, or use --smoke on a CPU")

# Published shapes (shared/phogpt_configs); --smoke uses tiny ones.
SHAPES = {
    "4B": dict(d_model=3072, n_heads=24, n_layers=32, vocab_size=20480, max_seq_len=8192),
    "7B5": dict(d_model=4096, n_heads=32, n_layers=32, vocab_size=250880, max_seq_len=2048),
}
if args.smoke:
    SHAPES = {"4B": dict(d_model=64, n_heads=4, n_layers=2, vocab_size=None, max_seq_len=512),
              "7B5": dict(d_model=64, n_heads=4, n_layers=2, vocab_size=4096, max_seq_len=2048)}
    args.items, args.item_tokens, args.epochs = 24, 32, 1
WORDS = ("cửa hàng mở cửa giờ sáng tối địa chỉ phố Hà Nội giao hàng miễn phí nội thành đổi trả "
         "hoá đơn quầy ngày điện thoại thẻ tiền mặt học phí lớp học đăng ký sinh viên trường "
         "thư viện").split()


def faq_items(n, tokens, seed):
    """n question/answer rows of roughly `tokens` tokens, Vietnamese words in random order."""
    generator = torch.Generator().manual_seed(seed)

    def pick(k):
        picks = torch.randint(len(WORDS), (k,), generator=generator).tolist()
        return " ".join(WORDS[i] for i in picks)

    return [{"question": pick(tokens // 8) + "?", "answer": pick(tokens // 3) + "."}
            for _ in range(n)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")


def train(name, model, data, output, *flags):
    """Run phogpt_qlora.py; return its training_summary.json plus the last epoch's mean loss."""
    command = [sys.executable, str(ROOT / "phogpt_qlora.py"), "--model", model, "--data", data,
               "--output", output, "--overwrite", "--epochs", str(args.epochs),
               "--save-steps", "1000000", "--recall-limit", "-1", "--logging-steps", "1",
               *flags, *(["--device", "cpu"] if args.smoke else [])]
    print(f"\n== {name}: {' '.join(command[2:])}", flush=True)
    started = time.time()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stdout[-3000:], done.stderr[-3000:])
        last_line = (done.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": last_line, "command": " ".join(command[2:])}
    summary = json.loads(Path(output, "training_summary.json").read_text())
    losses = [loss for _, loss in summary.pop("losses")]
    steps_per_epoch = max(1, round(len(losses) / args.epochs))
    last_epoch = losses[-steps_per_epoch:]
    summary["last_epoch_loss"] = sum(last_epoch) / len(last_epoch)
    summary["process_seconds"] = round(time.time() - started, 1)
    items_seen = min(summary["steps"] * summary["batch_size"], summary["rows"] * args.epochs)
    summary["mean_tokens_per_item"] = round(summary["tokens_seen"] / items_seen, 1)
    keys = ("tokens_per_s", "peak_memory_gib", "last_epoch_loss", "steps",
            "gradient_checkpointing")
    print({k: summary[k] for k in keys})
    return summary


on_gpu = torch.cuda.is_available() and not args.smoke
results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "smoke": args.smoke,
           "device": torch.cuda.get_device_name() if on_gpu else "cpu",
           "torch": torch.__version__, "items": args.items, "item_tokens": args.item_tokens,
           "epochs": args.epochs}
with tempfile.TemporaryDirectory() as tmp:
    data = Path(tmp, "faq.jsonl")
    rows = faq_items(args.items, args.item_tokens, seed=0)
    write_jsonl(data, rows)
    texts = [r["question"] + " " + r["answer"] for r in rows[:200]]
    print(f"writing a random-weight PhoGPT-4B-shaped checkpoint to {tmp} ...", flush=True)
    model_4b = save_tiny_checkpoint(str(Path(tmp, "phogpt-4b")), texts, **SHAPES["4B"])
    results["defaults"] = train("phogpt_qlora.py defaults", model_4b, str(data),
                                str(Path(tmp, "defaults")))
    results["seed_recipe"] = train("seed recipe", model_4b, str(data), str(Path(tmp, "seed")),
                                   "--batch-size", "1", "--optim", "paged_adamw_32bit",
                                   "--gradient-checkpointing", "on",
                                   "--dtype", "fp16" if not args.smoke else "auto")
    defaults, seed = results["defaults"], results["seed_recipe"]
    if "tokens_per_s" in defaults and "tokens_per_s" in seed:
        results["speedup"] = round(defaults["tokens_per_s"] / seed["tokens_per_s"], 2)
    if not args.skip_7b5:
        # Disk: the 7B5 checkpoint is ~30 GB in fp32.
        shutil.rmtree(model_4b)
        # Longer than 1024 tokens: cut at --max-length 1024.
        long_rows = faq_items(64, 1024 * 11 // 10, seed=1)
        long_data = Path(tmp, "long.jsonl")
        write_jsonl(long_data, long_rows)
        print("writing a random-weight PhoGPT-7B5-shaped checkpoint ...", flush=True)
        model_7b5 = save_tiny_checkpoint(str(Path(tmp, "phogpt-7b5")), texts, **SHAPES["7B5"])
        for batch in ("1", "2"):
            results[f"7b5_max_length_1024_batch_{batch}"] = train(
                f"7B5 shape, 1024 tokens, batch {batch}", model_7b5, str(long_data),
                str(Path(tmp, f"7b5-{batch}")), "--max-length", "1024", "--batch-size", batch,
                "--max-steps", "8", "--template", "instruct")

name = "phogpt_train_smoke.json" if args.smoke else "phogpt_train.json"
out = ROOT / "bench" / "results" / name
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps(results, indent=2, ensure_ascii=False))
print(f"\nspeed-up {results.get('speedup')}x; results in {out}")
