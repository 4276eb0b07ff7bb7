"""Teach VinAI's PhoGPT your own questions and answers: QLoRA (SFT) on one Colab T4.

    python phogpt_qlora.py --data data/faq_vi.jsonl            # train into --output
    python phogpt_qlora.py --data data/faq_vi.jsonl --dry-run  # check the data first
    python phogpt_chat.py --adapter phogpt-adapter             # chat with what it learnt

No GPU? README.md: a tiny PhoGPT (tiny_phogpt.py) memorises six answers in a minute.
"""
import argparse
import functools
import hashlib
import itertools
import json
import math
import os
import shlex
import statistics
import sys
import warnings
from pathlib import Path

import plumbing
from plumbing import between, fail, say

# ---- flags: the knobs, each with its default ----
# --help: the defaults, and the commands as written.
class Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass

parser = argparse.ArgumentParser(description=__doc__, formatter_class=Help)
add = parser.add_argument
# Data and files.
add("--model", default="vinai/PhoGPT-4B-Chat", help="hub id or folder")
add("--data", default="data/faq_vi.jsonl", help=".jsonl/.json/.csv, or a hub data set")
add("--eval-data", default="none", help="held-out rows: loss, recall")
add("--output", default="phogpt-adapter", help="folder for the adapter and report")
add("--overwrite", action="store_true", help="replace the run in --output")
add("--resume", action="store_true", help="continue the run in --output")
add("--template", default="auto", choices=["auto", "chat", "instruct"], help="auto: by name")
add("--dry-run", action="store_true", help="check the data, show examples")
add("--report-to", default="none", help="tensorboard, wandb, ... (comma-separated)")
# Precision and LoRA: the seed recipe.
add("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="cuda > mps > cpu")
add("--load-in", default="auto", choices=["auto", "4bit", "8bit", "none"], help="4bit on CUDA")
add("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"], help="bf16 > fp16 > fp32")
add("--quant-type", default="nf4", choices=["nf4", "fp4"], help="4-bit format")
add("--double-quant", default=True, action=argparse.BooleanOptionalAction, help="quantise scales")
add("--lora-r", type=between(1, 1024, int), default=32, help="LoRA rank")
add("--lora-alpha", type=between(1, 4096, int), default=32, help="scale = alpha / r")
add("--lora-dropout", type=between(0, 0.99), default=0.05, help="on the LoRA input")
add("--lora-targets", default="attn.Wqkv,attn.out_proj,ffn.up_proj,ffn.down_proj",
    help="Linear layers that get LoRA")
# Training.
add("--epochs", type=between(0.01, 100_000), default=30, help="passes over the data")
add("--max-steps", type=between(0, 10**7, int), default=0, help="0: use --epochs")
add("--batch-size", type=between(1, 4096, int), default=16, help="examples per step")
add("--grad-accum", type=between(1, 4096, int), default=1, help="steps per update")
add("--lr", type=between(1e-8, 1), default=1e-4, help="peak learning rate")
add("--lr-scheduler", default="cosine", help="a transformers schedule")
add("--warmup-steps", type=between(0, 10**7, int), default=0, help="linear warm-up")
add("--max-length", type=between(16, 10**6, int), default=1024, help="tokens per row")
add("--packing", action="store_true", help="one row per batch, no padding")
add("--gradient-checkpointing", default="auto", choices=["auto", "on", "off"], help="on with CUDA")
add("--optim", default="auto", help="auto: fused AdamW on CUDA, else AdamW")
add("--save-steps", type=between(1, 10**12, int), default=100, help="checkpoint every N")
add("--logging-steps", type=between(0, 10**12, int), default=0, help="0: 20 in all")
add("--recall-limit", type=between(-1, 10**12, int), default=0, help="0: all, -1: none")
add("--seed", type=between(0, 2**32 - 1, int), default=42, help="random seed")
args = plumbing.parse_flags(parser)

# Nothing to save before training: Ctrl+C says so.
plumbing.on_ctrl_c("stopped by Ctrl+C before training started: nothing was trained")
# peft 0.21 asks for a name transformers changed.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing")
# Heavy imports after the flags: --help is instant.
import torch
# bitsandbytes only for --load-in 4bit/8bit.
plumbing.keep_hub_code_out(args.load_in, torch.cuda.is_available())
from peft import LoraConfig, get_peft_model
from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening
from transformers import ProgressCallback, Trainer, TrainingArguments
from transformers.integrations import get_reporting_integration_callbacks

import prompts
from phogpt_model import load_phogpt, load_tokenizer, pick_dtype

# ---- settle every default, check every input ----
# Paths as typed, never normalised: a file is opened by its name on disk.
model_name, data_name, out_dir = args.model, args.data, Path(args.output)
eval_name = None if args.eval_data == "none" else args.eval_data
template = prompts.pick_template(args.template, model_name)
device = plumbing.pick_device(args.device)
cuda = device == "cuda"
load_in = plumbing.pick_load_in(args.load_in, device)
gpu_name = torch.cuda.get_device_name() if cuda else device
dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
dtype = dtypes.get(args.dtype) or pick_dtype(device)
# A T4 has no bf16 of its own: emulated, it crawls.
if dtype == torch.bfloat16 and cuda and pick_dtype(device) != dtype:
    fail(f"{gpu_name} has no bf16; fix: --dtype fp16 (or auto)")
checkpointing = {"on": True, "off": False}.get(args.gradient_checkpointing, cuda)
# A PhoGPT block's Linear layers: where LoRA can go.
LORA_LAYERS = ("attn.Wqkv", "attn.out_proj", "ffn.up_proj", "ffn.down_proj")
targets = [name.strip() for name in args.lora_targets.split(",")]
for name in targets:
    # peft matches the end: "Wqkv" is "attn.Wqkv".
    if not any(f".{layer}".endswith(f".{name}") for layer in LORA_LAYERS):
        fail(f"--lora-targets: {name!r} is not a LoRA layer; fix: use {','.join(LORA_LAYERS)}")
# Locked at once: a second run into it stops here.
if not args.dry_run:
    plumbing.claim_output(out_dir, args.overwrite, args.resume, protect={
        "--model": model_name, "--data": data_name, "--eval-data": eval_name})
last, cut = plumbing.last_checkpoint(out_dir) if args.resume else (None, [])
if args.resume and last is None:
    fail(f"--resume: no complete checkpoint in {out_dir} ({'; '.join(cut) or 'none'}); "
         "fix: drop --resume and add --overwrite to start afresh")

# ---- data: every row checked, then tokenized ----
# The names other data sets give the speakers.
ROLES = {"user": "user", "human": "user", "gpt": "assistant",
         "assistant": "assistant", "system": "system"}
# (field, role key, text key): ours, ShareGPT's.
TURNS = (("messages", "role", "content"), ("conversations", "from", "value"))
# (question, answer) fields in known data sets.
PAIRS = (("prompt", "response"), ("instruction", "output"), ("question", "answer"))

# A row -> messages, or (ready-made prompt, answer).
def row_to_messages(row, where):
    if not isinstance(row, dict):
        fail(f'{where}: expected an object; fix: e.g. {{"question": "...", "answer": "..."}}')
    for field, role_key, text_key in [t for t in TURNS if t[0] in row]:
        messages = []
        turns = row[field] if isinstance(row[field], list) else [row[field]]
        for i, turn in enumerate(turns):
            role = turn.get(role_key) if isinstance(turn, dict) else turn
            if role not in ROLES:
                fail(f"{where}: '{field}[{i}].{role_key}' is {role!r}; fix: use {', '.join(ROLES)}")
            fix = f"give '{field}[{i}].{text_key}' some text"
            text = plumbing.text_field(turn, text_key, where, fix)
            messages.append({"role": ROLES[role], "content": text})
        # The template folds a system text into the first question.
        said = [m["role"] for m in messages if m["role"] != "system"]
        if not said or said != ["user", "assistant"] * (len(said) // 2):
            fail(f"{where}: '{field}' has roles {said}; fix: user, assistant, user, assistant...")
        return messages
    for ask, reply in [p for p in PAIRS if p[0] in row or p[1] in row]:
        question = plumbing.text_field(row, ask, where, f"give every row a '{ask}'")
        answer = plumbing.text_field(row, reply, where, f"give every row a '{reply}'")
        # Alpaca's optional 'input': below the task.
        extra = row.get("input") if ask == "instruction" else None
        if extra is not None and not isinstance(extra, str):
            fail(f"{where}: field 'input' is {type(extra).__name__}; fix: make it text or drop it")
        if extra and extra.strip():
            question = question.strip() + "\n\n" + prompts.nfc(extra).strip()
        # VinAI's own rows carry the whole prompt.
        if question.rstrip().endswith(prompts.PHOGPT_ASSISTANT.strip()):
            return question, answer
        return [{"role": "user", "content": question},
                {"role": "assistant", "content": answer}]
    fail(f"{where}: no known fields (got {', '.join(row) or 'none'}); fix: use question/answer, "
         "prompt/response, instruction/input/output, messages or conversations")

# Every row checked: no run on half the data.
def read_conversations(source):
    rows = list(plumbing.read_rows(source))
    if not rows:
        fail(f"{source}: no rows; fix: add at least one question and answer")
    shapes = [row_to_messages(row, where) for where, row in rows]
    # Markers or "</s>" would teach forged turns.
    found = []
    for (where, _), shape in zip(rows, shapes):
        # Ready-made prompts have them, answers not.
        texts = [shape[1]] if isinstance(shape, tuple) else [m["content"] for m in shape]
        marks = [mark for text in texts for mark in prompts.turn_markers(text)]
        found += [(where, mark) for mark in marks[:1]]
    if found:
        where, marker = found[0]
        fail(f"{where}: the text contains {marker!r} ({len(found)} of {len(rows)} "
             "rows do); fix: remove markers like ### Câu hỏi, ### Trả lời and </s>")
    return shapes

# Data first: a typo shows before a long download.
shapes = read_conversations(data_name)
eval_shapes = read_conversations(eval_name) if eval_name else []
# Held out means: rows the model never trained on.
seen = {json.dumps(shape) for shape in shapes}
both = sum(json.dumps(shape) in seen for shape in eval_shapes)
if eval_name and both == len(eval_shapes):
    fail(f"--eval-data {eval_name}: a held-out score on the training data; fix: use other rows")
if both:
    print(f"lưu ý: {both}/{len(eval_shapes)} dòng của --eval-data cũng có trong --data",
          file=sys.stderr)
try:
    tokenizer = load_tokenizer(model_name)
except (OSError, ValueError) as err:
    fail(err)
EOS, eos = tokenizer.eos_token_id, tokenizer.eos_token

# Labels: the answers' ids; -100 is not trained.
def tokenize_all(shapes, source):
    examples, truncated, longest = [], 0, 0
    for shape in shapes:
        if isinstance(shape, tuple):
            # Ready-made: a space first, as in chat.
            segments = [(shape[0], False), (" " + shape[1].strip() + eos, True)]
        else:
            segments = prompts.conversation_segments(shape, eos, template)
        input_ids, labels = [], []
        for text, is_answer in segments:
            # An answer's </s>: the EOS id, always.
            has_eos = is_answer and text.endswith(eos)
            text = text.removesuffix(eos) if has_eos else text
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            ids += [EOS] if has_eos else []
            input_ids += ids
            labels += ids if is_answer else [-100] * len(ids)
        longest = max(longest, len(input_ids))
        truncated += len(input_ids) > args.max_length
        labels = labels[:args.max_length]
        # No answer token left: nothing to learn.
        if any(label != -100 for label in labels):
            examples.append({"input_ids": input_ids[:args.max_length], "labels": labels})
    # No </s> to learn: the model would never stop.
    if not any(EOS in example["labels"] for example in examples):
        fail(f"{source}: --max-length {args.max_length} cuts the end (</s>) off "
             f"every answer; fix: --max-length {longest} keeps them whole")
    return examples, truncated, longest

examples, truncated, longest = tokenize_all(shapes, data_name)
eval_examples = tokenize_all(eval_shapes, eval_name)[0] if eval_name else []
lengths = [len(e["input_ids"]) for e in examples]
answer_tokens = sum(len(e["labels"]) - e["labels"].count(-100) for e in examples)
# A few cut answers: a notice (they lose </s>).
cut_note = f"{truncated} truncated by --max-length {args.max_length}"
cut_note += f" ({longest} keeps all)" if truncated else ""
# A row cut before its first answer is dropped.
say(f"{len(examples)}/{len(shapes)} examples from {data_name}, template '{template}': tokens "
    f"min {min(lengths)}, median {statistics.median(lengths):.0f}, "
    f"max {max(lengths)}; {answer_tokens} trained (answer) tokens; {cut_note}")
if eval_name:
    say(f"{len(eval_examples)} held-out examples from {eval_name}")
# Optimizer steps as the Trainer counts them.
world = int(os.environ.get("WORLD_SIZE", "1"))
batches = math.ceil(math.ceil(len(examples) / world) / args.batch_size)
steps_per_epoch = max(1, math.ceil(batches / args.grad_accum))
total_steps = args.max_steps or math.ceil(args.epochs * steps_per_epoch)
# --resume must match what the weights depend on.
data_id = hashlib.sha256(json.dumps(shapes).encode()).hexdigest()
run = {"model": model_name, "data": data_name, "data_sha256": data_id, "template": template,
       "max_length": args.max_length, "lora_r": args.lora_r, "lora_alpha": args.lora_alpha,
       "lora_targets": targets}
done_steps = plumbing.same_run(out_dir, last, run, total_steps)

# TrainingArguments judges these flags.
optim = args.optim
if optim == "auto":
    optim = "adamw_torch_fused" if cuda else "adamw_torch"
try:
    settings = TrainingArguments(
        output_dir=str(out_dir), seed=args.seed, optim=optim,
        learning_rate=args.lr, lr_scheduler_type=args.lr_scheduler,
        warmup_steps=args.warmup_steps, num_train_epochs=args.epochs,
        max_steps=args.max_steps or -1, gradient_accumulation_steps=args.grad_accum,
        # Eval too: its default, 8, may not fit.
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=args.batch_size,
        # About 20 points on every curve.
        logging_steps=args.logging_steps or max(1, total_steps // 20),
        save_steps=args.save_steps, save_total_limit=2,
        eval_strategy="epoch" if eval_examples else "no",
        # Loss only: all logits would fill memory.
        prediction_loss_only=True, disable_tqdm=False, report_to=args.report_to.split(","),
        include_num_input_tokens_seen="non_padding", use_cpu=device == "cpu",
        bf16=cuda and dtype == torch.bfloat16, fp16=cuda and dtype == torch.float16,
        # Recompute in backward: slower, smaller.
        activation_checkpointing=checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        # Every LoRA weight gets a gradient: torchrun's DDP need not search each step.
        ddp_find_unused_parameters=False,
        # Batches of like lengths pad little.
        train_sampling_strategy="random" if args.packing else "group_by_length")
    # Trackers check that their package is there.
    [tracker() for tracker in get_reporting_integration_callbacks(settings.report_to)]
    Trainer.get_optimizer_cls_and_kwargs(settings)
except (ValueError, RuntimeError, ImportError) as err:
    reason = str(err).splitlines()[0][:200]
    fail(f"--optim, --lr-scheduler or --report-to: {reason}; fix: see --help")

# An example's runs of trained and untrained ids.
def spans(example):
    pairs = zip(example["input_ids"], example["labels"])
    for trained, span in itertools.groupby(pairs, key=lambda pair: pair[1] != -100):
        yield trained, [i for i, _ in span]

if args.dry_run:
    say(f"dry run: {data_name} is valid ({len(shapes)} rows).")
    for example in examples[:2]:
        texts = [(trained, tokenizer.decode(ids)) for trained, ids in spans(example)]
        marked = "".join(f"⟦{text}⟧" if trained else text for trained, text in texts)
        say("---- example (trained tokens in ⟦ ⟧) ----\n" + marked)
    plumbing.on_ctrl_c(None)
    sys.exit(0)

# ---- model: the base (4-bit on a GPU) + LoRA ----
torch.manual_seed(args.seed)
if device == "cpu" and load_in == "none":
    say("no GPU: LoRA on the full-precision base, on the CPU; slow beyond tiny models")
# One whole model per torchrun process (GPU).
device_map = {"": int(os.environ.get("LOCAL_RANK", "0"))} if cuda else None
try:
    base, tokenizer = load_phogpt(model_name, load_in=load_in, dtype=dtype, device_map=device_map,
                                  quant_type=args.quant_type, double_quant=args.double_quant)
except (OSError, ValueError) as err:
    fail(err)
model = get_peft_model(base, LoraConfig(
    r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
    target_modules=targets, task_type="CAUSAL_LM"))
trainable, _ = model.get_nb_trainable_parameters()
weights = {"4bit": f"4-bit {args.quant_type}", "8bit": "8-bit"}.get(load_in, "unquantised")
dtype_name = str(dtype).removeprefix("torch.")
say(f"{model_name}: {weights} weights, {dtype_name} compute on {gpu_name}; LoRA r={args.lora_r}: "
    f"{trainable:,} trainable; gradient checkpointing {'on' if checkpointing else 'off'}")

# ---- train ----
title = f"{Path(model_name).name} on {Path(data_name).name} ({len(examples)} rows)"

# loss_curve.png: training and held-out loss.
def draw_curve(history):
    # Not pyplot: it changes a notebook's backend.
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return False
    # No line yet: an empty plot, and a warning.
    if not any("loss" in log for log in history):
        return False
    figure = Figure(figsize=(7, 4), layout="constrained")
    axes = figure.subplots()
    for key, label in (("loss", "training"), ("eval_loss", "held-out")):
        points = [(log["step"], log[key]) for log in history if key in log]
        axes.plot(*zip(*points), marker=".", label=f"{label} loss")
    axes.set(xlabel="step", ylabel="loss", title=title)
    axes.legend()
    save = functools.partial(figure.savefig, dpi=100, format="png")
    plumbing.atomic_write(out_dir / "loss_curve.png", save)
    return True

# One line per log: the loss, or the held-out loss.
def describe(logs):
    if "loss" in logs:
        return f"loss {logs['loss']:.3f}"
    if "eval_loss" in logs:
        return f"held-out loss {logs['eval_loss']:.3f}"

# --packing: one row per batch, positions restart.
collate = DataCollatorWithFlattening() if args.packing else DataCollatorForSeq2Seq(tokenizer)
trainer = Trainer(model=model, args=settings, train_dataset=examples,
                  eval_dataset=eval_examples or None, data_collator=collate)
# Our one line per log replaces the Trainer's dicts.
trainer.remove_callback(ProgressCallback)
trainer.add_callback(plumbing.progress_lines(describe, draw_curve))
for note in cut:
    say(f"skipping {note}")
if last:
    say(f"resuming from {last} (adapter, optimizer, schedule and random state)")
# The peak of training, not of loading.
if cuda:
    torch.cuda.reset_peak_memory_stats()
state_before = plumbing.read_json(last / "trainer_state.json") if last else {}
tokens_before = state_before.get("num_input_tokens_seen", 0)
plumbing.train(trainer, out_dir, run, last, done_steps >= total_steps)

# ---- save: the adapter, moved in whole ----
model = trainer.model
plumbing.save_adapter(model, tokenizer, out_dir)
plumbing.on_ctrl_c(f"stopped by Ctrl+C: the adapter in {out_dir} is saved, the report is not")

# ---- report: recall, curve, summary, card ----
# Greedy answers, exact to EOS: what chat says.
def answer_recall(examples, limit):
    pairs = []
    for example in examples:
        prompt = []
        for trained, ids in spans(example):
            if trained and ids[-1] == EOS:
                pairs.append((prompt, ids))
            prompt = prompt + ids
    pairs = pairs[:limit] if limit > 0 else pairs
    misses = []
    # LoRA's dropout is off, as in chat.
    model.eval()
    for i in range(0, len(pairs), 16):
        batch = pairs[i : i + 16]
        # Left padding: answers start in one column.
        inputs = tokenizer.pad({"input_ids": [p for p, _ in batch]},
                               padding_side="left", return_tensors="pt")
        width = inputs["input_ids"].shape[1]
        # load_phogpt set EOS, pad and the cache.
        out = model.generate(
            **inputs.to(model.device), do_sample=False,
            max_new_tokens=max(len(a) for _, a in batch) + 8,
            output_logits=True, return_dict_in_generate=True)
        # NaN/inf logits (fp16): empty answers.
        if not all(torch.isfinite(step).all() for step in out.logits):
            say("recall: NaN/inf logits (fp16 overflow?), empty answers; fix: --dtype fp32 or bf16")
            return 0, len(pairs), []
        for (prompt, answer), new in zip(batch, out.sequences[:, width:].tolist()):
            if new[: len(answer)] != answer:
                got = tokenizer.decode(new, skip_special_tokens=True)
                misses.append((tokenizer.decode(prompt[-40:]), got))
    return len(pairs) - len(misses), len(pairs), misses

history = trainer.state.log_history
# The Trainer's clock (0: nothing left to do).
train_seconds = history[-1].get("train_runtime", 0) if history else 0
losses = [(log["step"], log["loss"]) for log in history if "loss" in log]
tokens_seen = int(trainer.state.num_input_tokens_seen)
tokens_per_s = (tokens_seen - tokens_before) / max(train_seconds, 1e-6)
# Peak memory: the GPU's, or the process's (Unix).
peak, peak_kind = 0, "CUDA allocated" if cuda else "process RSS"
if cuda:
    peak = torch.cuda.max_memory_allocated() / 2**30
elif sys.platform != "win32":
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
# In a notebook the defaults are the flags.
argv = [] if plumbing.NOTEBOOK else sys.argv[1:]
command = shlex.join(["python", "phogpt_qlora.py", *argv])
summary = {
    **vars(args), **run, "device": gpu_name, "load_in": load_in,
    "dtype": dtype_name, "gradient_checkpointing": checkpointing,
    "rows": len(shapes), "examples": len(examples), "truncated": truncated,
    "steps": trainer.state.global_step, "train_seconds": round(train_seconds, 1),
    "final_loss": losses[-1][1] if losses else None, "losses": losses,
    "tokens_seen": tokens_seen, "tokens_per_s": round(tokens_per_s, 1),
    "peak_memory_gib": round(peak, 2), "peak_memory_kind": peak_kind,
    "command": command}
answered = []
if args.recall_limit >= 0:
    hits, total, misses = answer_recall(examples, args.recall_limit)
    summary["recall"] = {"exact": hits, "total": total}
    answered.append(f"{hits}/{total} trained")
    say(f"answered {hits}/{total} exactly (greedy, stopping at EOS)")
    for prompt, got in misses[:3]:
        say(f"  missed: ...{prompt!r} -> {got!r}")
if eval_name:
    hits, total, _ = answer_recall(eval_examples, 0)
    eval_losses = [(log["step"], log["eval_loss"]) for log in history if "eval_loss" in log]
    summary["eval"] = {"data": eval_name, "rows": len(eval_shapes), "losses": eval_losses,
                       "recall": {"exact": hits, "total": total}}
    answered.append(f"{hits}/{total} held-out")
    say(f"answered {hits}/{total} held-out questions exactly ({eval_name})")
answered = ", ".join(answered) or "—"
title += f"\nanswered exactly: {answered}"
CARD = """# {name}: adapter LoRA cho `{model}`

`phogpt_qlora.py` (SFT), `{data}`: {rows} dòng, {steps} bước, loss cuối {loss:.3f},
LoRA r={lora_r} trên trọng số gốc {weights}; trả lời đúng từng chữ: {answered}.

    {command}
    python phogpt_chat.py --adapter {output}
"""
card = CARD.format_map({**summary, "name": out_dir.name, "weights": weights, "answered": answered,
                        "loss": summary["final_loss"] or 0, "output": shlex.quote(str(out_dir))})
try:
    written = ["loss_curve.png"] if draw_curve(history) else []
    summary_text = json.dumps(summary, indent=2, ensure_ascii=False)
    plumbing.atomic_write(out_dir / "training_summary.json", summary_text)
    plumbing.atomic_write(out_dir / "README.md", card)
except Exception as err:
    if not plumbing.disk_full(err):
        raise
    fail(f"could not write the report in {out_dir} (disk full; adapter saved); fix: free space")
plumbing.on_ctrl_c(None)
say(f"{tokens_per_s:,.0f} tokens/s, peak {peak:.2f} GiB, {train_seconds:.0f} s; "
    f"adapter, {', '.join(written)}, training_summary.json, README.md in {out_dir}")
# Done: the folder is free (a notebook reruns cells).
plumbing.release_outputs()
