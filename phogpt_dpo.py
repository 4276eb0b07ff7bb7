"""Preference tuning (DPO) of a PhoGPT adapter: answer like `chosen`, not like `rejected`.

Start from the adapter phogpt_qlora.py trained (SFT) and a file of preference pairs, one JSON
object per line: {"prompt": "a question", "chosen": "a good answer", "rejected": "a worse one"}.

    python phogpt_qlora.py --data data/faq_vi.jsonl --output phogpt-adapter    # SFT first
    python phogpt_dpo.py --adapter phogpt-adapter --data data/dpo_vi.jsonl --output phogpt-dpo
    python phogpt_chat.py --adapter phogpt-dpo                                   # chat with it

What DPO does (Rafailov et al., 2023): for each pair it raises log p(chosen) - log p(rejected)
of the model being trained, measured against a frozen reference model; --beta says how far the
model may move away from that reference (small: stay close). The reference is your SFT adapter
as it was before DPO: trl copies it into a frozen adapter named "ref" on the same base.

Each progress line shows the DPO loss (0.693 = ln 2 at the start), the reward margin and the
reward accuracy (the share of pairs where chosen rose more than rejected). Ctrl+C saves a
checkpoint; the same command with --resume continues from it.
"""
import argparse
import hashlib
import json
import math
import re
import signal
import sys
import time
import warnings
from pathlib import Path

import plumbing
from plumbing import between, fail, say

# ---- flags: the knobs, each with its default ----
parser = argparse.ArgumentParser(
    description="DPO: teach a PhoGPT adapter to prefer the chosen answers over the rejected ones.",
    formatter_class=argparse.ArgumentDefaultsHelpFormatter)
parser.add_argument("--adapter", default="phogpt-adapter",
                    help="the SFT adapter to start from (the --output of phogpt_qlora.py)")
parser.add_argument("--model", default="auto",
                    help="hub id or folder of the base (auto: the one the adapter was trained on)")
parser.add_argument("--data", default="data/dpo_vi.jsonl",
                    help=".jsonl, .json or .csv rows with prompt, chosen and rejected")
parser.add_argument("--output", default="phogpt-dpo", help="folder for the new adapter")
parser.add_argument("--overwrite", action="store_true", help="replace the run in --output")
parser.add_argument("--resume", action="store_true",
                    help="continue from the last complete checkpoint in --output")
parser.add_argument("--template", default="auto", choices=["auto", "chat", "instruct"],
                    help="prompt template (auto: instruct if the model's name says so)")
parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                    help="auto: cuda, else mps, else cpu")
parser.add_argument("--load-in", default="auto", choices=["auto", "4bit", "8bit", "none"],
                    help="base weights (auto: 4bit on CUDA, none elsewhere)")
parser.add_argument("--gradient-checkpointing", default="auto", choices=["auto", "on", "off"],
                    help="recompute activations to save memory (auto: on with CUDA)")
parser.add_argument("--beta", type=between(1e-4, 10), default=0.1,
                    help="how far the model may move from the SFT adapter")
parser.add_argument("--epochs", type=between(0.01, 1000), default=3, help="passes over the pairs")
parser.add_argument("--max-steps", type=between(0, 10**7, int), default=0,
                    help="stop after N steps (0: use --epochs)")
parser.add_argument("--lr", type=between(1e-8, 0.1), default=5e-5, help="peak learning rate")
parser.add_argument("--batch-size", type=between(1, 1024, int), default=4, help="pairs per step")
parser.add_argument("--grad-accum", type=between(1, 1024, int), default=1,
                    help="steps per update")
parser.add_argument("--max-length", type=between(8, 65536, int), default=1024,
                    help="prompt + answer in tokens; longer answers are cut")
parser.add_argument("--save-steps", type=between(1, 10**12, int), default=50,
                    help="checkpoint every N steps")
parser.add_argument("--logging-steps", type=between(0, 10**12, int), default=0,
                    help="a progress line every N steps (0: about 20 per run)")
parser.add_argument("--seed", type=between(0, 2**32 - 1, int), default=42, help="random seed")
args = plumbing.parse_flags(parser)

# peft 0.21 and trl 1.16 read transformers' old name is_gradient_checkpointing: that notice is
# for their authors, not for you.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing")
# Heavy imports after the flags, so --help is instant.
import torch
# bitsandbytes only for --load-in 4bit/8bit, before transformers, peft and trl look for it.
plumbing.keep_hub_code_out(args.load_in, torch.cuda.is_available())
import datasets
from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file
from transformers import ProgressCallback, TrainerState
from trl import DPOConfig, DPOTrainer

import prompts
from phogpt_model import load_phogpt, pick_dtype

# ---- settle every default and check every input, before any work ----
adapter_config = plumbing.read_json(Path(args.adapter, "adapter_config.json"))
if not Path(args.adapter, "adapter_config.json").is_file():
    fail(f"--adapter {args.adapter}: no adapter_config.json there; "
         "fix: give the --output folder of phogpt_qlora.py (train one first)")
adapter_base = (adapter_config or {}).get("base_model_name_or_path")
if not isinstance(adapter_base, str):
    fail(f"{Path(args.adapter, 'adapter_config.json')} is damaged; "
         "fix: train the adapter again with phogpt_qlora.py")
model_name = adapter_base if args.model == "auto" else args.model
template = args.template
if template == "auto":
    template = "instruct" if "instruct" in model_name.lower() else "chat"
device = plumbing.pick_device(args.device)
load_in = plumbing.pick_load_in(args.load_in, device)
checkpointing = args.gradient_checkpointing == "on" or (
    args.gradient_checkpointing == "auto" and device == "cuda")
# The folder is locked for this run at once: a second run into it stops here.
out_dir = plumbing.claim_output(args.output, args.overwrite, args.resume, protect={
    "--adapter": args.adapter, "--model": model_name, "--data": args.data})
last, cut = plumbing.last_checkpoint(out_dir) if args.resume else (None, [])
if args.resume and last is None:
    fail(f"--resume: no complete checkpoint in {out_dir}; fix: drop --resume, add --overwrite")

# ---- data: every row checked before the model loads, so a typo costs seconds ----
pairs = []
for where, row in plumbing.read_rows(args.data):
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
        for marker in prompts.turn_markers(text[field])[:1]:
            fail(f"{where}: '{field}' contains {marker!r}; fix: remove it")
    prompt = text["prompt"]
    # A ready-made PhoGPT prompt (VinAI's own format) is kept as it is.
    if not prompt.endswith(prompts.PHOGPT_ASSISTANT.strip()):
        question = [{"role": "user", "content": prompt}]
        prompt = prompts.generation_prompt(question, "</s>", template)
    # The answer follows the prompt after one space, as in SFT; trl appends EOS.
    pairs.append({"prompt": prompt, "chosen": " " + text["chosen"],
                  "rejected": " " + text["rejected"]})
if not pairs:
    fail(f"{args.data}: no rows; fix: add at least one prompt/chosen/rejected row")

# What makes a resumed run the same run: refuse to mix two.
settings = {"model": model_name, "adapter": str(Path(args.adapter).resolve()),
            "data": hashlib.sha256(json.dumps(pairs).encode()).hexdigest(),
            "beta": args.beta, "lr": args.lr, "epochs": args.epochs, "max_steps": args.max_steps,
            "batch_size": args.batch_size, "grad_accum": args.grad_accum,
            "max_length": args.max_length, "seed": args.seed}
before = (plumbing.read_json(out_dir / "dpo_run.json") or {}) if last else {}
differ = [key for key in settings if key in before and before[key] != settings[key]]
if differ:
    fail(f"--resume: this run differs from the one in {out_dir} ({', '.join(differ)}); "
         "fix: rerun with the same flags, or --overwrite to start afresh")
steps_per_epoch = math.ceil(math.ceil(len(pairs) / args.batch_size) / args.grad_accum)
total_steps = args.max_steps or math.ceil(args.epochs * steps_per_epoch)
done_steps = plumbing.read_json(last / "trainer_state.json")["global_step"] if last else 0
if done_steps >= total_steps and (out_dir / "adapter_config.json").exists():
    fail(f"--resume: {last.name} already reached step {done_steps} of {total_steps}; "
         "fix: raise --epochs to train longer, or drop --resume")
say(f"{len(pairs)} preference pairs from {args.data}, template '{template}'")

# ---- model: the base, once, with the SFT adapter on it ----
plumbing.on_ctrl_c("stopped by Ctrl+C while loading the model: nothing was trained")
torch.manual_seed(args.seed)
dtype = pick_dtype(device)
try:
    # One whole model per GPU; on CPU and MPS the Trainer moves it.
    device_map = {"": 0} if device == "cuda" else None
    base, tokenizer = load_phogpt(model_name, load_in=load_in, dtype=dtype, device_map=device_map)
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
say(f"{model_name} ({load_in}, {str(dtype).split('.')[1]} on {device}) + {args.adapter}: "
    f"{trainable:,} trainable parameters; reference: a frozen copy of the adapter")

# ---- train ----
config = DPOConfig(
    output_dir=str(out_dir), beta=args.beta, max_length=args.max_length,
    per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=args.grad_accum,
    learning_rate=args.lr, num_train_epochs=args.epochs, max_steps=args.max_steps or -1,
    # About 20 progress lines per run, or one per step in short runs.
    logging_steps=args.logging_steps or max(1, total_steps // 20),
    save_steps=args.save_steps, save_total_limit=2,
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
# trl writes its own model card into --output at every checkpoint; ours comes with the save.
trainer.create_model_card = lambda *args, **kwargs: None
kept = len(trainer.train_dataset)
if kept == 0:
    fail(f"--max-length {args.max_length} leaves no room for any answer; fix: raise it")
if kept < len(pairs):
    say(f"{len(pairs) - kept} pairs left out: their prompt alone fills --max-length")


# One readable line per log: the DPO loss and how the rewards of chosen and rejected moved.
def describe(logs):
    if "loss" in logs:
        return (f"loss {logs['loss']:.3f} · reward margin {logs['rewards/margins']:.3f} · "
                f"reward accuracy {logs['rewards/accuracies']:.0%}")


trainer.remove_callback(ProgressCallback)
trainer.add_callback(plumbing.progress_lines(describe))
# The flags, data, model and adapter are all fine: only now does an old run make way.
plumbing.make_way(out_dir)
plumbing.atomic_write(out_dir / "dpo_run.json", json.dumps(settings, indent=1))
if last:
    say(f"resuming from {last}" + "".join(f" (set aside {note})" for note in cut))
stop = plumbing.ctrl_c_saves()
trainer.add_callback(stop)
started = time.time()
try:
    if done_steps < total_steps:
        trainer.train(resume_from_checkpoint=str(last) if last else None)
    else:
        # Trained to the end, but the final save failed: the last checkpoint only needs saving.
        weights = load_file(last / "adapter_model.safetensors")
        set_peft_model_state_dict(model, weights, adapter_name="default")
        trainer.state = TrainerState.load_from_json(str(last / "trainer_state.json"))
except KeyboardInterrupt:
    fail("stopped by a second Ctrl+C; fix: --resume continues from the last complete checkpoint")
except Exception as err:
    if not plumbing.disk_full(err):
        raise
    again = "--resume" if plumbing.last_checkpoint(out_dir)[0] else "--overwrite"
    fail(f"writing a checkpoint in {out_dir} failed (the disk is full); "
         f"fix: free some disk space, then the same command with {again}")
train_seconds = time.time() - started
if stop.interrupted and trainer.state.global_step < trainer.state.max_steps:
    say(f"stopped by Ctrl+C at step {trainer.state.global_step}; checkpoint saved in {out_dir}; "
        "run the same command with --resume to continue")
    plumbing.on_ctrl_c(None)
    sys.exit(130)
plumbing.on_ctrl_c(None)


# ---- report: the margin before (the frozen "ref" copy) and after (the trained adapter) ----
# Mean of log p(chosen) - log p(rejected) over rows (EOS included), and how many are > 0.
def mean_margin(rows):
    margins = []
    model.eval()
    for row in rows:
        logps = []
        for answer in (row["chosen_ids"], row["rejected_ids"]):
            start = len(row["prompt_ids"])
            ids = torch.tensor([(row["prompt_ids"] + answer)[:args.max_length]],
                               device=model.device)
            with torch.no_grad():
                logits = model(input_ids=ids).logits[0, start - 1: -1].float()
            logps.append(logits.log_softmax(-1).gather(1, ids[0, start:, None]).sum().item())
        margins.append(logps[0] - logps[1])
    return sum(margins) / len(margins), sum(m > 0 for m in margins)


# The first 64 pairs, as trl tokenized them: enough to see the change, not a second epoch.
rows = trainer.train_dataset.select(range(min(64, kept)))
model = trainer.model
# A Ctrl+C here skips the check, not the save: the training is done.
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
say(f"log p(chosen) - log p(rejected), mean over {len(rows)} pairs: {margin_before:.2f} "
    f"with the SFT adapter -> {margin_after:.2f} after DPO "
    f"({margin_after - margin_before:+.2f}); chosen ahead in "
    f"{ahead_before}/{len(rows)} -> {ahead_after}/{len(rows)} pairs")

# ---- save: under a name of this run, then moved in with adapter_config.json last ----
logs = [log for log in trainer.state.log_history if "loss" in log]
keys = ("step", "epoch", "loss", "rewards/margins", "rewards/accuracies")
summary = {**settings, "data": args.data, "data_sha256": settings["data"], "pairs": kept,
           "template": template, "device": device, "load_in": load_in,
           "steps": trainer.state.global_step, "train_seconds": round(train_seconds, 1),
           "margin_before": round(margin_before, 4), "margin_after": round(margin_after, 4),
           "chosen_ahead_before": ahead_before, "chosen_ahead_after": ahead_after,
           "margin_pairs": len(rows), "log": [{k: log[k] for k in keys} for log in logs]}
# The model card: short, what it is and how to use it.
CARD = """# PhoGPT adapter, DPO

Base `{model}`, from the SFT adapter `{adapter}`: {pairs} preference pairs from `{data}`,
beta {beta:g}, {steps} steps. Mean log p(chosen) - log p(rejected): {before:.2f} before,
{after:.2f} after.

Chat with it: `python phogpt_chat.py --adapter {output}`
"""
card = CARD.format(model=model_name, adapter=args.adapter, pairs=kept, data=args.data,
                   beta=args.beta, steps=trainer.state.global_step, before=margin_before,
                   after=margin_after, output=out_dir)
staging = plumbing.temp_name(out_dir / "adapter")
# While saving, Ctrl+C waits: a half-saved adapter would look finished.
plumbing.on_ctrl_c(signal.SIG_IGN)
try:
    # Only the trained adapter: not trl's frozen "ref" copy.
    model.save_pretrained(staging, selected_adapters=["default"])
    tokenizer.save_pretrained(staging)
    summary_text = json.dumps(summary, indent=1, ensure_ascii=False)
    (staging / "training_summary.json").write_text(summary_text, encoding="utf-8")
    (staging / "README.md").write_text(card, encoding="utf-8")
    plumbing.move_in(staging, out_dir)
except Exception as err:
    if not plumbing.disk_full(err):
        raise
    # The last checkpoint holds the finished training: --resume only saves it.
    fail(f"saving the adapter in {out_dir} failed (the disk is full); "
         "fix: free some disk space, then the same command with --resume (it only saves)")
plumbing.on_ctrl_c(None)
say(f"{trainer.state.global_step} steps in {train_seconds:.0f} s; adapter, README.md and "
    f"training_summary.json in {out_dir}; chat: python phogpt_chat.py --adapter {out_dir}")
# This run is done: the folder is free for the next one (a notebook reruns cells).
plumbing.release_outputs()
