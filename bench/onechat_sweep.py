"""How many parameters are enough to memorise one Vietnamese sentence? (was onechat_tiny.py --sweep)

    python bench/onechat_sweep.py                        # scratch 1x8, 1x16, 2x64, 4x256
    python bench/onechat_sweep.py --models 2x64,gpt2     # sizes and hub models, mixed

Runs onechat_tiny.py once per size or model, as a student would (a process each, same seed),
and writes a Markdown table and the raw figures to bench/results/onechat_sweep.{md,json}.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--models", default="1x8,1x16,2x64,4x256",
                    help="scratch sizes (LAYERSxWIDTH) or model ids, comma-separated")
parser.add_argument("--data", default="none", help="passed to onechat_tiny.py --data")
parser.add_argument("--output", default=os.path.join(ROOT, "bench", "results", "onechat_sweep"),
                    help="writes OUTPUT.md and OUTPUT.json")
args = parser.parse_args()
models = [item.strip() for item in args.models.split(",") if item.strip()]
if not models:
    sys.exit("error: --models is empty; fix: e.g. --models 1x16,2x64")

rows = []
for item in models:
    # A size trains a scratch model; anything else is a model id or folder.
    flags = ["--size", item] if item[0].isdigit() else ["--model", item]
    command = [sys.executable, os.path.join(ROOT, "onechat_tiny.py"), *flags, "--data", args.data]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, encoding="utf-8", cwd=ROOT)
    seconds = time.perf_counter() - start
    # 0: memorised, 2: trained but not memorised; anything else is an error worth seeing.
    if done.returncode not in (0, 2):
        sys.exit(f"error: {item}: {done.stderr.strip()[-300:]}")
    out = done.stdout
    model = re.search(r"^Model .*?: ([\d,]+) parameters, .*?lr ([\d.e-]+)", out, re.M)
    exact = re.search(r"^Exact answer after (\d+) epochs, ([\d.]+) s of training", out, re.M)
    losses = re.findall(r"^\(\d+\.\d+s\) Epoch (\d+), Loss ([\d.]+)$", out, re.M)
    answer = re.search(r"^Answer: (.*)$", out, re.M)
    rows.append({
        "model": f"scratch {item}" if item[0].isdigit() else item,
        "parameters": int(model.group(1).replace(",", "")),
        "lr": float(model.group(2)),
        "epochs_to_exact": int(exact.group(1)) if exact else None,
        "training_s": float(exact.group(2)) if exact else None,
        "epochs_run": int(losses[-1][0]),
        "final_loss": float(losses[-1][1]),
        "process_s": round(seconds, 3),
        "answer": answer.group(1) if answer else "",
    })
    print(f"{rows[-1]['model']}: {'exact' if exact else 'NOT memorised'} after "
          f"{rows[-1]['epochs_run']} epochs, {seconds:.1f} s", flush=True)

table = ["| model | parameters | lr | epochs to exact | training s | final loss | answer |",
         "|---|---:|---:|---:|---:|---:|---|"]
for row in rows:
    epochs = row["epochs_to_exact"] or f"not in {row['epochs_run']}"
    training = row["training_s"] if row["training_s"] is not None else "-"
    table.append(f"| {row['model']} | {row['parameters']:,} | {row['lr']:g} | {epochs} | "
                 f"{training} | {row['final_loss']:.6f} | {row['answer'].replace('|', '/')} |")
print("\n".join(table))

os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
with open(args.output + ".md", "w", encoding="utf-8") as file:
    file.write("\n".join(table) + "\n")
with open(args.output + ".json", "w", encoding="utf-8") as file:
    json.dump({"date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "cpu_count": os.cpu_count(), "rows": rows}, file, ensure_ascii=False, indent=1)
print(f"written to {args.output}.md and {args.output}.json")
