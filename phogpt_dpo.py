"""Preference tuning (DPO) of a PhoGPT adapter: answer like `chosen`, not like `rejected`.

Start from the adapter phogpt_qlora.py trained (SFT) and a file of preference pairs, one JSON
object per line: {"prompt": "a question", "chosen": "a good answer", "rejected": "a worse one"}.

    python phogpt_qlora.py --data data/faq_vi.jsonl --output phogpt-adapter    # SFT first
    python phogpt_dpo.py --adapter phogpt-adapter --data data/dpo_vi.jsonl --output phogpt-dpo
    python phogpt_chat.py --adapter phogpt-dpo                                   # chat with it

What DPO does (Rafailov et al., 2023): for each pair it raises log p(chosen) - log p(rejected)
of the model being trained, measured against a frozen reference model; --beta says how far the
model may move away from that reference (small: stay close).

The reference is your SFT adapter as it was before DPO: trl's DPOTrainer, given a model that
already carries an adapter, copies that adapter into a second, frozen one named "ref" on the
same base (the base is loaded once, not twice) and trains only the "default" copy. So the
reference is base + SFT adapter, not the bare base. Only the trained adapter is saved.

Each progress line shows the DPO loss (0.693 = ln 2 at the start, when the model is the
reference), the reward margin (beta x how much more log p(chosen) than log p(rejected) rose
since the reference) and the reward accuracy (the share of pairs where it rose). The last lines
compare log p(chosen) - log p(rejected) before and after.

Ctrl+C saves a checkpoint; the same command with --resume continues from it.
"""
import argparse
import csv
import hashlib
import json
import logging
import math
import os
import re
import shutil
import signal
import sys
import time
import warnings
from pathlib import Path

# ---- flags ----
parser = argparse.ArgumentParser(
    description="DPO: teach a PhoGPT adapter to prefer the chosen answers over the rejected ones.",
    formatter_class=argparse.ArgumentDefaultsHelpFormatter)
# files
parser.add_argument("--adapter", default="phogpt-adapter",
                    help="the SFT adapter to start from (the --output of phogpt_qlora.py)")
parser.add_argument("--model", default="auto",
                    help="hub id or folder of the base (auto: the one the adapter was trained on)")
parser.add_argument("--data", default="data/dpo_vi.jsonl",
                    help=".jsonl, .json or .csv rows with prompt, chosen and rejected")
parser.add_argument("--output", default="phogpt-dpo", help="folder for the new adapter")
parser.add_argument("--overwrite", action="store_true", help="reuse an --output that holds a run")
parser.add_argument("--resume", action="store_true",
                    help="continue from the last complete checkpoint in --output")
parser.add_argument("--template", default="auto", choices=["auto", "chat", "instruct"],
                    help="prompt template (auto: instruct if the model's name says so)")
# hardware
parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                    help="auto: cuda, else mps, else cpu")
parser.add_argument("--load-in", default="auto", choices=["auto", "4bit", "8bit", "none"],
                    help="base weights (auto: 4bit on CUDA, none elsewhere)")
parser.add_argument("--gradient-checkpointing", default="auto", choices=["auto", "on", "off"],
                    help="recompute activations to save memory (auto: on with CUDA)")
# training
parser.add_argument("--beta", type=float, default=0.1,
                    help="how far the model may move from the SFT adapter (0 < beta <= 10)")
parser.add_argument("--epochs", type=float, default=3, help="passes over the pairs (0 < e <= 1000)")
parser.add_argument("--max-steps", type=int, default=-1, help="stop after N steps (-1: --epochs)")
parser.add_argument("--lr", type=float, default=5e-5, help="peak learning rate (0 < lr <= 0.1)")
parser.add_argument("--batch-size", type=int, default=4, help="pairs per step (1..1024)")
parser.add_argument("--grad-accum", type=int, default=1, help="steps per update (1..1024)")
parser.add_argument("--max-length", type=int, default=1024,
                    help="prompt + answer in tokens (8..65536); longer answers are cut")
parser.add_argument("--save-steps", type=int, default=50, help="checkpoint every N steps (>= 1)")
parser.add_argument("--logging-steps", type=int, default=0,
                    help="a progress line every N steps (>= 0; 0: about 20 per run)")
parser.add_argument("--seed", type=int, default=42, help="random seed (0..2**32-1)")


def fail(message):
    sys.exit(f"error: {message}")


def flag_error(message):
    fail(f"{message}; fix: see python phogpt_dpo.py --help")


parser.error = flag_error
args = parser.parse_args([] if "ipykernel" in sys.modules else None)

# Heavy imports after the flags, so --help is instant.
# bitsandbytes (imported by peft and trl) logs a hint about an optional CPU kernel package.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
import torch  # noqa: E402

import plumbing  # noqa: E402

# bitsandbytes only for --load-in 4bit/8bit, before transformers, peft and trl look for it.
plumbing.keep_hub_code_out(args.load_in, torch.cuda.is_available())
import datasets  # noqa: E402
from peft import PeftModel  # noqa: E402
from transformers import ProgressCallback  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402

import prompts  # noqa: E402
from phogpt_model import load_phogpt, pick_dtype  # noqa: E402

# peft 0.21 and trl 1.16 read transformers 5.24's old name is_gradient_checkpointing: that
# notice is for their authors, not for you. Only this one is silenced.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")

# ---- helpers: each used below, each given what it needs ----


def read_rows(source):
    """Yield (where, row) for each row of a .jsonl, .json or .csv file."""
    path = Path(source)
    if path.suffix == ".jsonl":
        lines = path.read_text(encoding="utf-8-sig").splitlines()
        for number, line in enumerate(lines, 1):
            if line.strip():
                try:
                    yield f"{source}:{number}", json.loads(line)
                except json.JSONDecodeError as err:
                    fail(f"{source}:{number}: not valid JSON ({err.msg}); "
                         "fix: one JSON object per line")
    elif path.suffix == ".json":
        try:
            rows = json.loads(path.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as err:
            fail(f"{source}:{err.lineno}: not valid JSON ({err.msg}); fix: a list of objects")
        for number, row in enumerate(rows if isinstance(rows, list) else [rows], 1):
            yield f"{source} item {number}", row
    elif path.suffix == ".csv":
        # utf-8-sig: Excel starts its CSV files with a byte-order mark
        with open(path, encoding="utf-8-sig", newline="") as file:
            reader = csv.DictReader(file)
            for row in reader:
                if None in row:
                    fail(f"{source}:{reader.line_num}: more fields than the header "
                         "(an unquoted comma?); fix: put text with commas in double quotes")
                yield f"{source}:{reader.line_num}", row
    else:
        fail(f"{source}: can't read this kind of file; fix: use .jsonl, .json or .csv")


def is_complete(checkpoint):
    """A checkpoint is usable once the Trainer wrote its state file, which it writes last."""
    try:
        json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))["global_step"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    need = ("adapter_model.safetensors", "optimizer.pt", "scheduler.pt")
    return all((checkpoint / name).is_file() for name in need)


def mean_margin(model, rows, max_length):
    """Mean of log p(chosen) - log p(rejected) over rows (EOS included), and how many are > 0."""
    margins = []
    model.eval()
    for row in rows:
        logps = []
        for answer in (row["chosen_ids"], row["rejected_ids"]):
            start = len(row["prompt_ids"])
            ids = torch.tensor([(row["prompt_ids"] + answer)[:max_length]], device=model.device)
            with torch.no_grad():
                logits = model(input_ids=ids).logits[0, start - 1: -1].float()
            logps.append(logits.log_softmax(-1).gather(1, ids[0, start:, None]).sum().item())
        margins.append(logps[0] - logps[1])
    return sum(margins) / len(margins), sum(m > 0 for m in margins)


class Progress(ProgressCallback):
    """The Trainer's progress bar, one readable line per log, and Ctrl+C that saves."""

    def __init__(self):
        super().__init__()
        self.interrupted = False
        # Put back after training, so a notebook's own Ctrl+C works again.
        self.previous = signal.signal(signal.SIGINT, self.interrupt)

    def interrupt(self, *_):
        self.interrupted = True
        # A second Ctrl+C stops at once; the last complete checkpoint stays usable.
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        self.clock, self.tokens = time.time(), 0

    def on_step_end(self, args, state, control, **kwargs):
        super().on_step_end(args, state, control, **kwargs)
        if self.interrupted:
            control.should_save = control.should_training_stop = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if "loss" not in logs or self.training_bar is None:
            return
        now, tokens = time.time(), logs.get("num_tokens", 0)
        speed = (tokens - self.tokens) / max(now - self.clock, 1e-9)
        self.clock, self.tokens = now, tokens
        self.training_bar.write(
            f"step {state.global_step}/{state.max_steps} · epoch {logs['epoch']:.1f} · "
            f"loss {logs['loss']:.3f} · reward margin {logs['rewards/margins']:.3f} · "
            f"reward accuracy {logs['rewards/accuracies']:.0%} · {speed:,.0f} tok/s")


# ---- settle defaults and check every input (before any work) ----
if not 0 < args.beta <= 10:
    fail(f"--beta must be > 0 and <= 10 (got {args.beta:g}); fix: try 0.1")
if not 0 < args.epochs <= 1000:
    fail(f"--epochs must be > 0 and <= 1000 (got {args.epochs:g}); fix: try 3")
if args.max_steps != -1 and not 0 < args.max_steps <= 10**7:
    fail(f"--max-steps must be -1 or 1..10000000 (got {args.max_steps}); fix: -1 uses --epochs")
if not 0 < args.lr <= 0.1:
    fail(f"--lr must be > 0 and <= 0.1 (got {args.lr:g}); fix: try 5e-5")
if not 1 <= args.batch_size <= 1024:
    fail(f"--batch-size must be 1..1024 (got {args.batch_size}); fix: try 4")
if not 1 <= args.grad_accum <= 1024:
    fail(f"--grad-accum must be 1..1024 (got {args.grad_accum}); fix: try 1")
if not 8 <= args.max_length <= 65536:
    fail(f"--max-length must be 8..65536 (got {args.max_length}); fix: try 1024")
if args.save_steps < 1:
    fail(f"--save-steps must be >= 1 (got {args.save_steps}); fix: try 50")
if args.logging_steps < 0:
    fail(f"--logging-steps must be >= 0 (got {args.logging_steps}); fix: 0 picks it for you")
if not 0 <= args.seed < 2**32:
    fail(f"--seed must be 0..{2**32 - 1} (got {args.seed}); fix: try 42")
if args.resume and args.overwrite:
    fail("--resume continues a run and --overwrite starts afresh; fix: pick one")

adapter_config = Path(args.adapter, "adapter_config.json")
if not adapter_config.is_file():
    fail(f"--adapter {args.adapter}: no adapter_config.json there; "
         "fix: give the --output folder of phogpt_qlora.py (train one first)")
try:
    adapter_base = json.loads(adapter_config.read_text(encoding="utf-8"))["base_model_name_or_path"]
except (ValueError, KeyError, TypeError):
    adapter_base = None
if not isinstance(adapter_base, str):
    fail(f"{adapter_config} is damaged; fix: train the adapter again with phogpt_qlora.py")
model_name = adapter_base if args.model == "auto" else args.model
template = args.template
if template == "auto":
    template = "instruct" if "instruct" in model_name.lower() else "chat"

if args.device == "cuda" and not torch.cuda.is_available():
    fail("--device cuda, but no CUDA GPU is visible; fix: on Colab pick a T4 GPU runtime")
if args.device == "mps" and not torch.backends.mps.is_available():
    fail("--device mps, but this machine has no Apple GPU; fix: --device auto")
device = args.device
if device == "auto":
    device = "cuda" if torch.cuda.is_available() else "cpu"
    device = "mps" if device == "cpu" and torch.backends.mps.is_available() else device
load_in = args.load_in
if load_in == "auto":
    load_in = "4bit" if device == "cuda" else "none"
if load_in != "none" and device != "cuda":
    fail(f"--load-in {load_in} needs a CUDA GPU; fix: use a GPU runtime, or --load-in none")
if load_in != "none":
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        fail(f"--load-in {load_in} needs bitsandbytes; fix: pip install bitsandbytes")
checkpointing = args.gradient_checkpointing == "on"
checkpointing = checkpointing or (args.gradient_checkpointing == "auto" and device == "cuda")

out_dir = Path(args.output)
if out_dir.exists() and not out_dir.is_dir():
    fail(f"--output {out_dir} is a file; fix: pick a folder name")
if out_dir.resolve() == Path(args.adapter).resolve():
    fail("--output is the --adapter folder; fix: pick a new --output, e.g. phogpt-dpo")
if out_dir.is_dir() and any(out_dir.iterdir()) and not (args.overwrite or args.resume):
    fail(f"--output {out_dir} already exists; "
         "fix: pick another --output, add --overwrite, or --resume to continue")

last, skipped = None, []
if args.resume:
    found = [p for p in out_dir.glob("checkpoint-*") if p.name.split("-")[1].isdigit()]
    found.sort(key=lambda p: int(p.name.split("-")[1]), reverse=True)
    complete = [p for p in found if is_complete(p)]
    if not complete:
        fail(f"--resume: no complete checkpoint in {out_dir}; fix: drop --resume to start afresh")
    last = complete[0]
    skipped = found[: found.index(last)]

# ---- data: every row checked before the model loads, so a typo costs seconds ----
pairs = []
try:
    for where, row in read_rows(args.data):
        if not isinstance(row, dict):
            fail(f"{where}: expected an object; fix: {{\"prompt\", \"chosen\", \"rejected\"}}")
        text = {}
        for field in ("prompt", "chosen", "rejected"):
            value = row.get(field)
            if not isinstance(value, str) or not value.strip():
                problem = "missing" if value is None else "empty or not text"
                fail(f"{where}: field '{field}' is {problem}; fix: give every row a '{field}'")
            text[field] = prompts.nfc(value).strip()
        if text["chosen"] == text["rejected"]:
            fail(f"{where}: 'chosen' and 'rejected' are the same; fix: make them differ")
        # PhoGPT's EOS or a template marker inside an answer would train a fake end or turn.
        for field in ("chosen", "rejected"):
            for marker in ("</s>", "### Câu hỏi", "### Trả lời"):
                if marker in text[field]:
                    fail(f"{where}: '{field}' contains {marker!r}; fix: remove it")
        prompt = text["prompt"]
        # A ready-made PhoGPT prompt (VinAI's own format) is kept as it is.
        if not prompt.endswith(prompts.PHOGPT_ASSISTANT.strip()):
            question = [{"role": "user", "content": prompt}]
            prompt = prompts.generation_prompt(question, "</s>", template)
        # The answer follows the prompt after one space, as in SFT; trl appends EOS.
        pairs.append({"prompt": prompt, "chosen": " " + text["chosen"],
                      "rejected": " " + text["rejected"]})
except FileNotFoundError:
    fail(f"{args.data}: file not found; fix: check the path")
except UnicodeDecodeError as err:
    fail(f"{args.data}: not UTF-8 text (byte {err.start}); fix: save the file as UTF-8")
if not pairs:
    fail(f"{args.data}: no rows; fix: add at least one prompt/chosen/rejected row")

# What makes a resumed run the same run: refuse to mix two.
settings = {"model": model_name, "adapter": str(Path(args.adapter).resolve()),
            "data": hashlib.sha256(json.dumps(pairs).encode()).hexdigest(),
            "beta": args.beta, "lr": args.lr, "epochs": args.epochs, "max_steps": args.max_steps,
            "batch_size": args.batch_size, "grad_accum": args.grad_accum,
            "max_length": args.max_length, "seed": args.seed}
settings_file = out_dir / "dpo_run.json"
if args.resume and settings_file.is_file():
    try:
        before = json.loads(settings_file.read_text(encoding="utf-8"))
    except ValueError:
        before = {}
    differ = [key for key in settings if key in before and before[key] != settings[key]]
    if differ:
        fail(f"--resume: this run differs from the one in {out_dir} ({', '.join(differ)}); "
             "fix: rerun with the same flags, or --overwrite to start afresh")
print(f"{len(pairs)} preference pairs from {args.data}, template '{template}'")

# ---- model: the base, once, with the SFT adapter on it ----
torch.manual_seed(args.seed)
dtype = pick_dtype(device)
try:
    # One whole model per GPU; on CPU and MPS the Trainer moves it.
    device_map = {"": 0} if device == "cuda" else None
    base, tokenizer = load_phogpt(model_name, load_in=load_in, dtype=dtype, device_map=device_map)
except KeyboardInterrupt:
    fail("stopped by Ctrl+C while loading the model; nothing was trained; fix: run it again")
except (OSError, ValueError) as err:
    fail(err)
try:
    model = PeftModel.from_pretrained(base, args.adapter, is_trainable=True)
except Exception as err:
    # A shape mismatch is many lines from torch; its first line says it all.
    mismatch = re.search(r"size mismatch for (\S+): copying a param with shape (.+?) from "
                         r"checkpoint, the shape in current model is (.+?)\.?$", str(err), re.M)
    reason = (str(err).strip().splitlines() or [type(err).__name__])[-1].strip()[:160]
    if mismatch:
        reason = f"{mismatch[1]}: {mismatch[2]} in the adapter, {mismatch[3]} in the model"
    fail(f"--adapter {args.adapter} does not load on {model_name} ({reason}); fix: pass the "
         f"--model it was trained on ({adapter_base}), or train it again if it is damaged")
trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
print(f"{model_name} ({load_in}, {str(dtype).split('.')[1]} on {device}) + {args.adapter}: "
      f"{trainable:,} trainable parameters; reference: a frozen copy of the adapter")

# ---- train ----
# About 20 progress lines per run, or one per step in short runs.
steps_per_epoch = math.ceil(math.ceil(len(pairs) / args.batch_size) / args.grad_accum)
total_steps = args.max_steps if args.max_steps > 0 else math.ceil(args.epochs * steps_per_epoch)
logging_steps = args.logging_steps or max(1, total_steps // 20)
config = DPOConfig(
    output_dir=str(out_dir), beta=args.beta, max_length=args.max_length,
    per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=args.grad_accum,
    learning_rate=args.lr, num_train_epochs=args.epochs, max_steps=args.max_steps,
    logging_steps=logging_steps, save_steps=args.save_steps, save_total_limit=2,
    seed=args.seed, report_to="none", use_cpu=device == "cpu", disable_tqdm=False,
    bf16=device == "cuda" and dtype == torch.bfloat16,
    fp16=device == "cuda" and dtype == torch.float16,
    # The new names: trl's default (gradient_checkpointing=True) prints a deprecation notice.
    activation_checkpointing=checkpointing,
    activation_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None)
# PhoGPT's config names no BOS/EOS ids; set them, or the Trainer says it "aligned" them.
model.config.bos_token_id = tokenizer.bos_token_id
model.config.eos_token_id = tokenizer.eos_token_id
model.generation_config.bos_token_id = tokenizer.bos_token_id
# trl's data preparation bars (adding EOS, tokenizing) say nothing a student needs.
datasets.disable_progress_bars()
trainer = DPOTrainer(model=model, args=config, processing_class=tokenizer,
                     train_dataset=datasets.Dataset.from_list(pairs))
kept = len(trainer.train_dataset)
if kept == 0:
    fail(f"--max-length {args.max_length} leaves no room for any answer; fix: raise it")
if kept < len(pairs):
    print(f"{len(pairs) - kept} pairs left out: their prompt alone fills --max-length")


# Our progress lines replace the Trainer's raw dicts (its bar stays).
trainer.remove_callback(ProgressCallback)
# Nothing is deleted before here: the flags, data, model and adapter are all fine.
out_dir.mkdir(parents=True, exist_ok=True)
# Without adapter_config.json the folder does not look like a finished adapter mid-run.
(out_dir / "adapter_config.json").unlink(missing_ok=True)
shutil.rmtree(out_dir / "adapter.partial", ignore_errors=True)
if not args.resume:
    for old in out_dir.glob("checkpoint-*"):
        shutil.rmtree(old)
# A half-written checkpoint goes too: the Trainer's clean-up could keep it over a good one.
for broken in skipped:
    shutil.rmtree(broken)
settings_file.with_suffix(".partial").write_text(json.dumps(settings, indent=1), encoding="utf-8")
os.replace(settings_file.with_suffix(".partial"), settings_file)
if last:
    print(f"resuming from {last}" + "".join(f" (removed {p.name}: incomplete)" for p in skipped))
progress = Progress()
trainer.add_callback(progress)
started = time.time()
try:
    trainer.train(resume_from_checkpoint=str(last) if last else None)
except KeyboardInterrupt:
    fail("stopped by a second Ctrl+C; fix: --resume continues from the last complete checkpoint")
except OSError as err:
    fail(f"writing a checkpoint in {out_dir} failed ({err}); "
         "fix: free some disk space, then the same command with --resume")
finally:
    signal.signal(signal.SIGINT, progress.previous)
train_seconds = time.time() - started
if progress.interrupted:
    print(f"stopped by Ctrl+C at step {trainer.state.global_step}; checkpoint saved in {out_dir}; "
          "run the same command with --resume to continue")
    sys.exit(130)

# ---- report: the margin before (the frozen "ref" copy) and after (the trained adapter) ----
# The first 64 pairs, as trl tokenized them: enough to see the change, not a second epoch.
rows = trainer.train_dataset.select(range(min(64, kept)))
model = trainer.model
# A Ctrl+C here skips the check, not the save: the training is done.
try:
    model.set_adapter("ref")
    margin_before, ahead_before = mean_margin(model, rows, args.max_length)
    model.set_adapter("default")
    margin_after, ahead_after = mean_margin(model, rows, args.max_length)
except KeyboardInterrupt:
    print("Ctrl+C: margin check skipped; saving the trained adapter")
    model.set_adapter("default")
    margin_before = margin_after = float("nan")
    ahead_before = ahead_after = "?"
print(f"log p(chosen) - log p(rejected), mean over {len(rows)} pairs: {margin_before:.2f} "
      f"with the SFT adapter -> {margin_after:.2f} after DPO "
      f"({margin_after - margin_before:+.2f}); chosen ahead in "
      f"{ahead_before}/{len(rows)} -> {ahead_after}/{len(rows)} pairs")

# ---- save: into adapter.partial, then moved in with adapter_config.json last ----
logs = [log for log in trainer.state.log_history if "loss" in log]
summary = {**settings, "data": args.data, "data_sha256": settings["data"], "pairs": kept,
           "template": template,
           "device": device, "load_in": load_in, "steps": trainer.state.global_step,
           "train_seconds": round(train_seconds, 1),
           "margin_before": round(margin_before, 4), "margin_after": round(margin_after, 4),
           "chosen_ahead_before": ahead_before, "chosen_ahead_after": ahead_after,
           "margin_pairs": len(rows),
           "log": [{key: log[key] for key in ("step", "epoch", "loss", "rewards/margins",
                                              "rewards/accuracies")} for log in logs]}
card = (f"# PhoGPT adapter, DPO\n\nBase: `{model_name}`. Started from the SFT adapter "
        f"`{args.adapter}`; {kept} preference pairs from `{args.data}`, beta {args.beta:g}, "
        f"{trainer.state.global_step} steps.\n\nMean log p(chosen) - log p(rejected): "
        f"{margin_before:.2f} before, {margin_after:.2f} after.\n\n"
        f"Chat with it: `python phogpt_chat.py --adapter {out_dir}`\n")
partial = out_dir / "adapter.partial"
# While saving, Ctrl+C waits: a half-saved adapter would look finished.
signal.signal(signal.SIGINT, signal.SIG_IGN)
try:
    # Only the trained adapter: not trl's frozen "ref" copy.
    model.save_pretrained(partial, selected_adapters=["default"])
    tokenizer.save_pretrained(partial)
    summary_text = json.dumps(summary, indent=1, ensure_ascii=False)
    (partial / "training_summary.json").write_text(summary_text, encoding="utf-8")
    (partial / "README.md").write_text(card, encoding="utf-8")
except OSError as err:
    signal.signal(signal.SIGINT, progress.previous)
    fail(f"saving the adapter in {partial} failed ({err}); "
         "fix: free some disk space, then the same command with --resume")
# phogpt_chat.py looks for adapter_config.json: it arrives last, once everything else is in.
for name in sorted(os.listdir(partial), key=lambda name: name == "adapter_config.json"):
    os.replace(partial / name, out_dir / name)
partial.rmdir()
signal.signal(signal.SIGINT, progress.previous)
print(f"{trainer.state.global_step} steps in {train_seconds:.0f} s; adapter, README.md and "
      f"training_summary.json in {out_dir}; chat: python phogpt_chat.py --adapter {out_dir}")
