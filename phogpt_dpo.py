"""Preference tuning (DPO) of a PhoGPT adapter: answer like `chosen`, not `rejected`.

From the adapter phogpt_qlora.py trained (SFT) and rows of preference pairs:
{"prompt": "a question", "chosen": "a good answer", "rejected": "a worse one"}.

    python phogpt_qlora.py --data data/faq_vi.jsonl --output phogpt-adapter
    python phogpt_dpo.py --adapter phogpt-adapter --output phogpt-dpo
    python phogpt_chat.py --adapter phogpt-dpo

DPO (Rafailov et al., 2023) raises log p(chosen) - log p(rejected) against a frozen copy of
your SFT adapter (trl's "ref"). Each line: loss (ln 2 = 0.693 at first), reward margin, accuracy.
"""
import argparse
import hashlib
import json
import math
import re
import signal
import warnings
from pathlib import Path

import plumbing
from plumbing import between, fail, say

# ---- flags: the knobs, each with its default ----
parser = argparse.ArgumentParser(
    description="DPO: teach a PhoGPT adapter to prefer the chosen answers.",
    formatter_class=argparse.ArgumentDefaultsHelpFormatter)
add = parser.add_argument
add("--adapter", default="phogpt-adapter", help="the SFT adapter to start from")
add("--model", default="auto", help="the base; auto: the adapter's")
add("--data", default="data/dpo_vi.jsonl", help="prompt, chosen, rejected rows")
add("--output", default="phogpt-dpo", help="folder for the new adapter")
add("--overwrite", action="store_true", help="replace the run in --output")
add("--resume", action="store_true", help="continue the run in --output")
add("--template", default="auto", choices=["auto", "chat", "instruct"], help="auto: by name")
add("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="cuda > mps > cpu")
add("--load-in", default="auto", choices=["auto", "4bit", "8bit", "none"], help="4bit on CUDA")
add("--gradient-checkpointing", default="auto", choices=["auto", "on", "off"], help="on with CUDA")
add("--beta", type=between(1e-4, 10), default=0.1,
    help="how far from the SFT adapter it may go")
add("--epochs", type=between(0.01, 1000), default=3, help="passes over the pairs")
add("--max-steps", type=between(0, 10**7, int), default=0, help="0: use --epochs")
add("--lr", type=between(1e-8, 0.1), default=5e-5, help="peak learning rate")
add("--batch-size", type=between(1, 1024, int), default=4, help="pairs per step")
add("--grad-accum", type=between(1, 1024, int), default=1, help="steps per update")
add("--max-length", type=between(8, 65536, int), default=1024, help="prompt + answer, tokens")
add("--save-steps", type=between(1, 10**12, int), default=50, help="checkpoint every N")
add("--logging-steps", type=between(0, 10**12, int), default=0, help="0: 20 in all")
add("--seed", type=between(0, 2**32 - 1, int), default=42, help="random seed")
args = plumbing.parse_flags(parser)

# peft and trl ask for a name transformers changed.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing")
# Heavy imports after the flags: --help is instant.
import torch
# bitsandbytes only for --load-in 4bit/8bit.
plumbing.keep_hub_code_out(args.load_in, torch.cuda.is_available())
import datasets
from peft import PeftModel
from transformers import ProgressCallback
from trl import DPOConfig, DPOTrainer

import prompts
from phogpt_model import load_phogpt, load_tokenizer, pick_dtype

# ---- settle every default, check every input ----
config_file = Path(args.adapter, "adapter_config.json")
if not config_file.is_file():
    fail(f"--adapter {args.adapter}: no adapter_config.json; fix: give phogpt_qlora.py's --output")
adapter_base = (plumbing.read_json(config_file) or {}).get("base_model_name_or_path")
if not isinstance(adapter_base, str):
    fail(f"{config_file} is damaged; fix: train it again with phogpt_qlora.py")
model_name = adapter_base if args.model == "auto" else args.model
template = prompts.pick_template(args.template, model_name)
device = plumbing.pick_device(args.device)
load_in = plumbing.pick_load_in(args.load_in, device)
checkpointing = {"on": True, "off": False}.get(args.gradient_checkpointing, device == "cuda")
# Locked at once: a second run into it stops here.
out_dir = plumbing.claim_output(args.output, args.overwrite, args.resume, protect={
    "--adapter": args.adapter, "--model": model_name, "--data": args.data})
last, cut = plumbing.last_checkpoint(out_dir) if args.resume else (None, [])
if args.resume and last is None:
    fail(f"--resume: no complete checkpoint in {out_dir}; fix: drop --resume, add --overwrite")

# ---- data: every row, before the model loads ----
pairs = []
for where, row in plumbing.read_rows(args.data):
    if not isinstance(row, dict):
        fail(f'{where}: expected an object; fix: {{"prompt", "chosen", "rejected"}}')
    text = {field: plumbing.text_field(row, field, where, f"give every row a '{field}'").strip()
            for field in ("prompt", "chosen", "rejected")}
    if text["chosen"] == text["rejected"]:
        fail(f"{where}: 'chosen' and 'rejected' are the same; fix: make them differ")
    # An EOS or a marker trains a fake end or turn.
    for field in ("chosen", "rejected"):
        for marker in prompts.turn_markers(text[field])[:1]:
            fail(f"{where}: '{field}' contains {marker!r}; fix: remove it")
    prompt = text["prompt"]
    # A ready-made prompt (VinAI's format) stays.
    if not prompt.endswith(prompts.PHOGPT_ASSISTANT.strip()):
        question = [{"role": "user", "content": prompt}]
        prompt = prompts.generation_prompt(question, "</s>", template)
    # ' answer' as in SFT; trl adds the EOS.
    pairs.append({"prompt": prompt, "chosen": " " + text["chosen"],
                  "rejected": " " + text["rejected"]})
if not pairs:
    fail(f"{args.data}: no rows; fix: add at least one prompt/chosen/rejected row")
try:
    tokenizer = load_tokenizer(model_name)
except (OSError, ValueError) as err:
    fail(err)
# Tokens of prompt + answer + EOS, the longer answer.
lengths = [max(len(tokenizer(pair["prompt"] + pair[answer] + "</s>").input_ids)
               for answer in ("chosen", "rejected")) for pair in pairs]
cut_short = sum(length > args.max_length for length in lengths)
# All cut: no </s> learnt, the model never stops.
if cut_short == len(pairs):
    fail(f"--max-length {args.max_length} cuts the end (</s>) off every answer; "
         f"fix: --max-length {max(lengths)} keeps them whole")
if cut_short:
    say(f"{cut_short} pairs cut by --max-length {args.max_length} ({max(lengths)} keeps all)")

# What makes a resumed run the same run.
data_id = hashlib.sha256(json.dumps(pairs).encode()).hexdigest()
run = {"model": model_name, "adapter": str(Path(args.adapter).resolve()), "data": args.data,
       "data_sha256": data_id, "beta": args.beta, "lr": args.lr, "epochs": args.epochs,
       "max_steps": args.max_steps, "batch_size": args.batch_size,
       "grad_accum": args.grad_accum, "max_length": args.max_length, "seed": args.seed}
# Optimizer steps, as the Trainer counts them.
steps_per_epoch = math.ceil(math.ceil(len(pairs) / args.batch_size) / args.grad_accum)
total_steps = args.max_steps or math.ceil(args.epochs * steps_per_epoch)
done_steps = plumbing.same_run(out_dir, last, run, total_steps)
say(f"{len(pairs)} preference pairs from {args.data}, template '{template}'")

# ---- model: the base with the SFT adapter ----
plumbing.on_ctrl_c("stopped by Ctrl+C while loading the model: nothing was trained")
torch.manual_seed(args.seed)
dtype = pick_dtype(device)
# On CPU and MPS the Trainer moves the model.
device_map = {"": 0} if device == "cuda" else None
try:
    base, tokenizer = load_phogpt(model_name, load_in=load_in, dtype=dtype, device_map=device_map)
except (OSError, ValueError) as err:
    fail(err)
try:
    model = PeftModel.from_pretrained(base, args.adapter, is_trainable=True)
except Exception as err:
    # A shape mismatch is many lines: one says it.
    mismatch = re.search(r"size mismatch for (\S+): copying a param with shape (.+?) "
                         r"from checkpoint, the shape in current model is (.+?)\.?$",
                         str(err), re.M)
    reason = (str(err).strip().splitlines() or [type(err).__name__])[-1][:160]
    if mismatch:
        reason = f"{mismatch[1]}: {mismatch[2]} in the adapter, {mismatch[3]} in the model"
    fail(f"--adapter {args.adapter} does not load on {model_name} ({reason}); fix: pass "
         f"the --model it was trained on ({adapter_base}), or train it again if damaged")
trainable, _ = model.get_nb_trainable_parameters()
say(f"{model_name} ({load_in}, {str(dtype).removeprefix('torch.')} on {device}) + {args.adapter}: "
    f"{trainable:,} trainable parameters; reference: a frozen copy of the adapter")

# ---- train ----
config = DPOConfig(
    output_dir=str(out_dir), beta=args.beta, max_length=args.max_length, seed=args.seed,
    per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=args.grad_accum,
    learning_rate=args.lr, num_train_epochs=args.epochs, max_steps=args.max_steps or -1,
    # About 20 lines per run; every step if short.
    logging_steps=args.logging_steps or max(1, total_steps // 20),
    save_steps=args.save_steps, save_total_limit=2, report_to="none", disable_tqdm=False,
    use_cpu=device == "cpu", bf16=device == "cuda" and dtype == torch.bfloat16,
    fp16=device == "cuda" and dtype == torch.float16,
    # Recompute in backward: slower, smaller.
    activation_checkpointing=checkpointing,
    activation_checkpointing_kwargs={"use_reentrant": False})
# No BOS/EOS in PhoGPT's config: Trainer warns.
model.config.bos_token_id = tokenizer.bos_token_id
model.config.eos_token_id = tokenizer.eos_token_id
model.generation_config.bos_token_id = tokenizer.bos_token_id
# trl's data bars say nothing a student needs.
datasets.disable_progress_bars()
trainer = DPOTrainer(model=model, args=config, processing_class=tokenizer,
                     train_dataset=datasets.Dataset.from_list(pairs))
# Not trl's card at each checkpoint: ours at the end.
trainer.create_model_card = lambda *args, **kwargs: None
# trl drops pairs whose prompt fills --max-length.
kept = len(trainer.train_dataset)

# One line per log: loss, how the rewards moved.
def describe(logs):
    if "loss" in logs:
        return (f"loss {logs['loss']:.3f} · reward margin {logs['rewards/margins']:.3f}"
                f" · reward accuracy {logs['rewards/accuracies']:.0%}")

trainer.remove_callback(ProgressCallback)
trainer.add_callback(plumbing.progress_lines(describe))
if last:
    say(f"resuming from {last}" + "".join(f" (set aside {note})" for note in cut))
plumbing.train(trainer, out_dir, run, last, done_steps >= total_steps)
# The Trainer's clock (0: nothing left to do).
history = trainer.state.log_history
train_seconds = history[-1].get("train_runtime", 0) if history else 0

# ---- report and save: margin, adapter, card ----
# Mean log p(chosen) - log p(rejected), EOS included,
# and in how many rows it is > 0.
def mean_margin(rows):
    margins = []
    model.eval()
    for row in rows:
        logps = []
        start = len(row["prompt_ids"])
        for answer in (row["chosen_ids"], row["rejected_ids"]):
            ids = (row["prompt_ids"] + answer)[:args.max_length]
            ids = torch.tensor([ids], device=model.device)
            with torch.no_grad():
                logits = model(input_ids=ids).logits[0, start - 1: -1]
            logp = logits.float().log_softmax(-1).gather(1, ids[0, start:, None])
            logps.append(logp.sum().item())
        margins.append(logps[0] - logps[1])
    return sum(margins) / len(margins), sum(m > 0 for m in margins)

# 64 pairs as trl tokenized them: enough to see it.
rows = trainer.train_dataset.select(range(min(64, kept)))
model = trainer.model
# Ctrl+C here skips the check, not the save.
plumbing.on_ctrl_c(None)
try:
    model.set_adapter("ref")
    margin_before, ahead_before = mean_margin(rows)
    model.set_adapter("default")
    margin_after, ahead_after = mean_margin(rows)
except KeyboardInterrupt:
    say("Ctrl+C: margin check skipped; saving the trained adapter")
    model.set_adapter("default")
    margin_before = margin_after = float("nan")
    ahead_before = ahead_after = "?"
gain = margin_after - margin_before
say(f"log p(chosen) - log p(rejected), mean over {len(rows)} pairs: {margin_before:.2f} with "
    f"the SFT adapter -> {margin_after:.2f} after DPO ({gain:+.2f}); chosen ahead in "
    f"{ahead_before}/{len(rows)} -> {ahead_after}/{len(rows)} pairs")
keys = ("step", "epoch", "loss", "rewards/margins", "rewards/accuracies")
logs = [{k: log[k] for k in keys} for log in history if "loss" in log]
summary = {**run, "pairs": kept, "template": template, "device": device, "load_in": load_in,
           "steps": trainer.state.global_step, "train_seconds": round(train_seconds, 1),
           "margin_pairs": len(rows), "margin_before": round(margin_before, 4),
           "margin_after": round(margin_after, 4), "chosen_ahead_before": ahead_before,
           "chosen_ahead_after": ahead_after, "log": logs}
CARD = """# PhoGPT adapter, DPO

Base `{model}`, from the SFT adapter `{adapter}`: {pairs} preference pairs
from `{data}`, beta {beta:g}, {steps} steps. Mean log p(chosen) - log p(rejected):
{margin_before:.2f} before, {margin_after:.2f} after.
Chat: `python phogpt_chat.py --adapter {output}`
"""
files = {"README.md": CARD.format(**summary, output=out_dir),
         "training_summary.json": json.dumps(summary, indent=1, ensure_ascii=False)}
# While saving, Ctrl+C waits: a half-saved adapter would look finished.
plumbing.on_ctrl_c(signal.SIG_IGN)
# Only the trained adapter, not trl's "ref" copy.
plumbing.save_adapter(model, tokenizer, out_dir, files, selected_adapters=["default"])
plumbing.on_ctrl_c(None)
say(f"{trainer.state.global_step} steps in {train_seconds:.0f} s; adapter, README.md and "
    f"training_summary.json in {out_dir}; chat: python phogpt_chat.py --adapter {out_dir}")
# Done: the folder is free (a notebook reruns cells).
plumbing.release_outputs()
