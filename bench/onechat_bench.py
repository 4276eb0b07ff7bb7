"""Wall time of onechat_tiny.py as a student runs it: whole process, imports included, on the CPU.

    python bench/onechat_bench.py     # 5 runs of the default command

(How many parameters are enough, the old --sweep: bench/onechat_sweep.py.)

Prints the medians and writes bench/results/onechat_bench.json. The goal: the default command
prints its exact answer within 5 s on a 2-core CPU.
"""

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument(
    "--runs", type=int, default=5, help="runs of the default command (median reported)"
)
parser.add_argument(
    "--output",
    default=os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "results", "onechat_bench.json"
    ),
)
args = parser.parse_args([] if "ipykernel" in sys.modules else None)
if args.runs < 3:
    sys.exit("error: use at least 3 runs, so the median means something")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONIOENCODING": "utf-8"}


def timed(command):
    """(wall seconds, CPU seconds, stdout) of one whole process; fails loudly if it failed."""
    cpu_start, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    done = subprocess.run(
        command, capture_output=True, text=True, encoding="utf-8", cwd=ROOT, env=ENV
    )
    seconds, cpu_end = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(
            f"error: {' '.join(command)} exited {done.returncode}: {done.stderr.strip()[-300:]}"
        )
    return (
        seconds,
        cpu_end.ru_utime + cpu_end.ru_stime - cpu_start.ru_utime - cpu_start.ru_stime,
        done.stdout,
    )


def cpu_name():
    try:
        with open("/proc/cpuinfo") as file:
            return next(
                line.split(":", 1)[1].strip() for line in file if line.startswith("model name")
            )
    except (OSError, StopIteration):
        return platform.processor()


# Other work on the machine inflates wall times: recorded with them
load_before = list(os.getloadavg())
script = [sys.executable, os.path.join(ROOT, "onechat_tiny.py")]
# Warm the file cache once, like any second run
timed([sys.executable, "-c", "import torch, transformers"])
results = {}
for name, command, runs in [
    ("default", script, args.runs),
    (
        "import_only",
        [
            sys.executable,
            "-c",
            "import torch; from transformers import "
            "GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast",
        ],
        args.runs,
    ),
]:
    seconds, cpu_seconds, outputs = zip(*(timed(command) for _ in range(runs)))
    results[name] = {
        "command": " ".join(["python"] + command[1:]).replace(ROOT + os.sep, ""),
        "median_s": round(statistics.median(seconds), 3),
        "min_s": round(min(seconds), 3),
        "runs_s": [round(s, 3) for s in seconds],
        "median_cpu_s": round(statistics.median(cpu_seconds), 3),
    }
    print(
        f"{name:12s} median {statistics.median(seconds):6.2f} s wall (min {min(seconds):.2f}), "
        f"{statistics.median(cpu_seconds):5.2f} s CPU  "
        f"runs {', '.join(f'{s:.2f}' for s in seconds)}"
    )
    if name == "default":
        exact = re.search(r"Exact answer after (\d+) epochs, ([\d.]+) s of training", outputs[0])
        if not exact or "Answer: Công ty BICweb kính chào quý khách!" not in outputs[0]:
            sys.exit("error: the default command did not print the exact answer")
        results[name].update(
            epochs_to_exact=int(exact.group(1)),
            training_s=[float(re.search(r"([\d.]+) s of training", o).group(1)) for o in outputs],
        )

# Versions for the record, imported after the timed runs.
import torch  # noqa: E402
import transformers  # noqa: E402

results["machine"] = {
    "cpu": cpu_name(),
    "cpu_count": os.cpu_count(),
    "python": platform.python_version(),
    "torch": torch.__version__,
    "transformers": transformers.__version__,
    "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "load_average_before_after": [load_before, list(os.getloadavg())],
}
results["goal"] = {"default_under_s": 5.0, "met": results["default"]["median_s"] < 5.0}
os.makedirs(os.path.dirname(args.output), exist_ok=True)
with open(args.output, "w", encoding="utf-8") as file:
    json.dump(results, file, ensure_ascii=False, indent=1)
print(
    f"default command: {results['default']['median_s']} s median (goal < 5 s: "
    f"{'met' if results['goal']['met'] else 'NOT met'}); written to {args.output}"
)
