"""Teach VinAI's PhoGPT your own questions and answers: QLoRA fine-tuning (SFT) on one Colab T4.

    python phogpt_qlora.py --data data/faq_vi.jsonl            # train; the adapter goes to --output
    python phogpt_qlora.py --data data/faq_vi.jsonl --dry-run  # check the data, see T4 estimates
    python phogpt_qlora.py --data data/faq_vi.jsonl --eval-data data/faq_vi_rephrased.jsonl
    python phogpt_chat.py --adapter phogpt-adapter             # then chat with what it learnt

No GPU? A tiny random PhoGPT memorises six answers in about a minute on a 2-core CPU
(it memorises; it does not understand):

    python tiny_phogpt.py
    python phogpt_qlora.py --model tiny-phogpt --data data/faq_tiny_vi.jsonl \\
        --output tiny-adapter --epochs 100 --lr 1e-2
    python phogpt_chat.py --model tiny-phogpt --adapter tiny-adapter --temperature 0 \\
        --prompt "Trung tâm có xuất hóa đơn không?"

Rows may be question/answer, prompt/response, instruction/input/output, messages or conversations,
in a .jsonl, .json or .csv file (UTF-8). --output receives the adapter (safetensors), the tokenizer,
checkpoints, loss_curve.png, training_summary.json and README.md, a model card.
"""
import argparse
import csv
import errno
import functools
import hashlib
import importlib.util
import itertools
import json
import logging
import math
import os
import shlex
import shutil
import signal
import statistics
import sys
import time
import warnings
import zipfile
from pathlib import Path

try:
    # The CPU's peak memory, for the summary (Unix only).
    import resource
except ImportError:
    resource = None

# Ctrl+C as it was before this script: put back on every way out (a notebook needs it).
sigint_before = signal.getsignal(signal.SIGINT)


def fail(message):
    """Bad input: one line to stderr, no traceback, exit 1."""
    signal.signal(signal.SIGINT, sigint_before)
    sys.exit(f"error: {message}")


def bad_flag(message):
    fail(f"{message}; fix: python phogpt_qlora.py --help lists every flag")


# ---- flags ----
class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help shows every default and keeps the command lines above as they are written."""


parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
parser.error = bad_flag
files = parser.add_argument_group("data and files")
files.add_argument("--model", default="vinai/PhoGPT-4B-Chat", help="hub id or local folder")
files.add_argument("--data", default="data/faq_vi.jsonl",
                   help="training rows: a .jsonl/.json/.csv file or a datasets hub name")
files.add_argument("--eval-data", default="none",
                   help="held-out rows, same formats: eval loss each epoch and a recall check")
files.add_argument("--output", default="phogpt-adapter",
                   help="folder for the adapter, checkpoints, loss curve, summary and model card")
files.add_argument("--overwrite", action="store_true",
                   help="replace the run in an --output that exists (once the new input is valid)")
files.add_argument("--resume", action="store_true",
                   help="continue from the last complete checkpoint in --output")
files.add_argument("--template", default="auto", choices=["auto", "chat", "instruct"],
                   help="prompt template; auto: instruct if the model name says so, else chat")
files.add_argument("--dry-run", action="store_true",
                   help="tokenizer only: show examples, lengths and T4 estimates")
files.add_argument("--report-to", default="none",
                   help="experiment tracking, comma-separated: tensorboard, wandb, trackio, ...")
lora = parser.add_argument_group("precision and LoRA (the seed recipe)")
lora.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                  help="where to train; auto: cuda, else mps, else cpu")
lora.add_argument("--load-in", default="auto", choices=["auto", "4bit", "8bit", "none"],
                  help="base weights; auto: 4bit on CUDA, none elsewhere")
lora.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                  help="compute dtype; auto: bf16 if the GPU has it, fp16 on a T4, fp32 on CPU")
lora.add_argument("--quant-type", default="nf4", choices=["nf4", "fp4"], help="4-bit format")
lora.add_argument("--double-quant", default=True, action=argparse.BooleanOptionalAction,
                  help="quantise the 4-bit scales too")
lora.add_argument("--lora-r", type=int, default=32, help="LoRA rank")
lora.add_argument("--lora-alpha", type=int, default=32,
                  help="LoRA scale numerator (scale = alpha / r)")
lora.add_argument("--lora-dropout", type=float, default=0.05, help="dropout on the LoRA input")
lora.add_argument("--lora-targets", default="attn.Wqkv,attn.out_proj,ffn.up_proj,ffn.down_proj",
                  help="comma-separated Linear layers of PhoGPT that get LoRA")
train = parser.add_argument_group("training")
train.add_argument("--epochs", type=float, default=30,
                   help="passes over the data (the seed used 30 to memorise a FAQ)")
train.add_argument("--max-steps", type=int, default=-1,
                   help="stop after this many optimizer steps (-1: use --epochs)")
train.add_argument("--batch-size", type=int, default=16,
                   help="examples per step per GPU (the seed used 1)")
train.add_argument("--grad-accum", type=int, default=1, help="steps to accumulate before an update")
train.add_argument("--lr", type=float, default=1e-4, help="peak learning rate")
train.add_argument("--lr-scheduler", default="cosine",
                   help="learning-rate schedule (transformers name)")
train.add_argument("--warmup-steps", type=int, default=0, help="linear warm-up steps")
train.add_argument("--max-length", type=int, default=1024,
                   help="longest example in tokens; longer ones are cut")
train.add_argument("--packing", action="store_true",
                   help="pack each batch into one row without padding (for short examples)")
train.add_argument("--gradient-checkpointing", default="auto", choices=["auto", "on", "off"],
                   help="auto: on only when the memory estimate needs it")
train.add_argument("--optim", default="auto",
                   help="optimizer (transformers name); auto: fused AdamW on CUDA, AdamW elsewhere")
train.add_argument("--save-steps", type=int, default=100,
                   help="checkpoint (adapter + optimizer) every N steps")
train.add_argument("--logging-steps", default="auto",
                   help="print the loss every N steps; auto: about 20 points per run")
train.add_argument("--recall-limit", type=int, default=0,
                   help="training answers to check after training (0: all, -1: none)")
train.add_argument("--seed", type=int, default=42, help="random seed")
args = parser.parse_args([] if "ipykernel" in sys.modules else None)

rank = int(os.environ.get("RANK", "0"))
world = int(os.environ.get("WORLD_SIZE", "1"))


def say(*text):
    """Print once, from the first process (torchrun starts one per GPU)."""
    if rank == 0:
        print(*text, flush=True)


def stopped_before_training(*_):
    say("stopped by Ctrl+C before training started: nothing was trained")
    sys.exit(130)


# Until training starts there is nothing to save: Ctrl+C says so instead of a traceback.
# (A notebook keeps its own Ctrl+C, the interrupt button.)
if "ipykernel" not in sys.modules:
    signal.signal(signal.SIGINT, stopped_before_training)

# bitsandbytes (imported by peft) hints at an optional CPU kernel package: nothing to act on.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
# peft 0.21 still asks the model for is_gradient_checkpointing, which transformers 5.24 renamed.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)

# Heavy imports come after the flags, so --help answers at once.
import torch

import plumbing

# bitsandbytes only for --load-in 4bit/8bit, before transformers and peft look for it.
plumbing.keep_hub_code_out(args.load_in, torch.cuda.is_available())
from peft import LoraConfig, get_peft_model
from transformers import DataCollatorWithFlattening, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_utils import SchedulerType
from transformers.training_args import OptimizerNames

import prompts
from phogpt_model import LOSS_CHUNK, PhoGPTConfig, load_phogpt, load_tokenizer, pick_dtype

# The T4 figures are a rough formula, not measurements: these are its assumptions.
T4_PRICE_PER_HOUR = 0.42
# 30% of a T4's fp16 tensor-core peak, and half of its memory bandwidth.
T4_FLOPS = 65e12 * 0.3
T4_BYTES_PER_S = 320e9 * 0.5
# The Linear layers of a PhoGPT block: the only places LoRA can go.
LORA_LAYERS = ("attn.Wqkv", "attn.out_proj", "ffn.up_proj", "ffn.down_proj")
# These schedules need settings this script does not pass.
SCHEDULERS = [s.value for s in SchedulerType if s.value not in (
    "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
    "warmup_stable_decay", "greedy")]
# What changes the trained weights: --resume refuses to mix runs that differ in these.
RUN_FILE = "run.json"
# Everything the Trainer writes into a checkpoint; trainer_state.json comes last.
CHECKPOINT_FILES = ("adapter_config.json", "adapter_model.safetensors", "optimizer.pt",
                    "scheduler.pt", "trainer_state.json")


# ---- helpers (used twice below, or by the tests) ----
def check_range(flag, value, low, high, hint):
    """One line when a numeric flag is outside [low, high] (NaN is outside every range)."""
    if not low <= value <= high:
        fail(f"{flag} must be between {low:,} and {high:,} (got {value}); fix: try {hint}")


def read_rows(source):
    """Yield (where, row) for each row of a JSONL/JSON/CSV file or a datasets hub dataset."""
    path = Path(source)
    if path.suffix == ".jsonl":
        lines = path.read_text(encoding="utf-8-sig").splitlines()
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
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
        # utf-8-sig: Excel starts its CSV files with a byte-order mark.
        with open(path, encoding="utf-8-sig", newline="") as file:
            reader = csv.DictReader(file)
            for row in reader:
                where = f"{source}:{reader.line_num}"
                # An unquoted comma in an answer makes an extra field: the answer would end there.
                if None in row:
                    fields = len(reader.fieldnames) + len(row[None])
                    fail(f"{where}: {fields} fields but the header has {len(reader.fieldnames)}; "
                         'fix: put text that contains commas in double quotes: "Chào bạn, ..."')
                yield where, row
    elif path.exists() or path.suffix:
        fail(f"{source}: can't read this file; fix: use .jsonl, .json or .csv")
    else:
        import datasets
        try:
            for number, row in enumerate(datasets.load_dataset(source, split="train"), 1):
                yield f"{source} row {number}", row
        except Exception as err:
            fail(f"can't load the data set {source!r} ({type(err).__name__}); "
                 "fix: check the file path or the hub name")


def text_field(row, field, where, fix):
    value = row.get(field)
    if not isinstance(value, str) or not value.strip():
        problem = "missing" if value is None else "empty or not text"
        fail(f"{where}: field '{field}' is {problem}; fix: {fix}")
    return prompts.nfc(value)


def row_to_messages(row, where):
    """A row of any supported shape -> [{'role', 'content'}, ...], or (prompt, answer)."""
    if not isinstance(row, dict):
        fail(f"{where}: expected an object, got {type(row).__name__}; "
             'fix: e.g. {"question": ..., "answer": ...}')
    roles = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant",
             "system": "system"}
    for field, role_key, text_key in (("messages", "role", "content"),
                                      ("conversations", "from", "value")):
        if field not in row:
            continue
        messages = []
        turns = row[field] if isinstance(row[field], list) else [row[field]]
        for i, turn in enumerate(turns):
            role = turn.get(role_key) if isinstance(turn, dict) else turn
            if role not in roles:
                fail(f"{where}: field '{field}[{i}].{role_key}' is {role!r}; "
                     f"fix: use one of {', '.join(roles)}")
            text = text_field(turn, text_key, where, f"give '{field}[{i}].{text_key}' some text")
            messages.append({"role": roles[role], "content": text})
        said = [m["role"] for m in messages if m["role"] != "system"]
        if not said or said != ["user", "assistant"] * (len(said) // 2):
            fail(f"{where}: field '{field}' has roles {said}; "
                 "fix: alternate user/assistant, user first, assistant last")
        return messages
    for ask, reply in (("prompt", "response"), ("instruction", "output"), ("question", "answer")):
        if ask not in row and reply not in row:
            continue
        question = text_field(row, ask, where, f"give every row a '{ask}'")
        answer = text_field(row, reply, where, f"give every row a non-empty '{reply}'")
        extra = row.get("input")
        if ask == "instruction" and extra is not None and not isinstance(extra, str):
            fail(f"{where}: field 'input' is {type(extra).__name__}, not text; "
                 'fix: write it as text, or leave it out')
        if ask == "instruction" and extra and extra.strip():
            question = question.strip() + "\n\n" + prompts.nfc(extra).strip()
        # VinAI's own fine-tuning rows carry the whole prompt: train the answer after it.
        if question.rstrip().endswith(prompts.PHOGPT_ASSISTANT.strip()):
            return question, answer
        return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    fail(f"{where}: no known fields (got {', '.join(row) or 'none'}); fix: use prompt/response, "
         "instruction/input/output, question/answer, messages or conversations")


def read_conversations(source):
    """Check every row of a data file; return its conversations (or ready-made prompt, answer)."""
    try:
        rows = list(read_rows(source))
    except FileNotFoundError:
        fail(f"{source}: file not found; fix: check the path "
             "(or give a datasets hub name without an extension)")
    except IsADirectoryError:
        fail(f"{source} is a folder; fix: give the data file inside it")
    except UnicodeDecodeError as err:
        head = Path(source).read_bytes()[:2]
        kind = "UTF-16 text" if head in (b"\xff\xfe", b"\xfe\xff") else "not UTF-8 text"
        fail(f"{source}: {kind} (byte {err.start}); fix: save the file as UTF-8")
    if not rows:
        fail(f"{source}: no rows; fix: add at least one question and answer")
    shapes = [row_to_messages(row, where) for where, row in rows]
    # Text that looks like the template, or a literal "</s>", would teach the model to forge turns.
    found = []
    for (where, _), shape in zip(rows, shapes):
        # A ready-made prompt has the template in it by design: only its answer is checked.
        texts = [shape[1]] if isinstance(shape, tuple) else [m["content"] for m in shape]
        markers = [marker for text in texts for marker in prompts.turn_markers(text)]
        if markers:
            found.append((where, markers[0]))
    if found:
        where, marker = found[0]
        fail(f"{where}: the text contains {marker!r} ({len(found)} of {len(rows)} rows do); "
             "fix: remove template markers (### Câu hỏi, ### Trả lời) and tokens like </s>")
    return shapes


def tokenize(segments, tokenizer, max_length):
    """(text, is_answer) pieces -> input_ids, labels (-100 outside answers), cut to max_length."""
    input_ids, labels = [], []
    eos = tokenizer.eos_token
    for text, is_answer in segments:
        # The answer's EOS goes in as its id, never as the text "</s>".
        has_eos = is_answer and text.endswith(eos)
        text = text[: -len(eos)] if has_eos else text
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += [tokenizer.eos_token_id] if has_eos else []
        input_ids += ids
        labels += ids if is_answer else [-100] * len(ids)
    kept = min(len(input_ids), max_length)
    example = {"input_ids": input_ids[:kept], "labels": labels[:kept], "attention_mask": [1] * kept}
    return example, len(input_ids) > kept


def tokenize_all(shapes, tokenizer, template, max_length):
    """Conversations -> examples with an answer left to learn, and how many were cut."""
    examples, truncated = [], 0
    eos = tokenizer.eos_token
    for shape in shapes:
        if isinstance(shape, tuple):
            # A ready-made prompt: the answer follows it as conversation_segments would put it.
            segments = [(shape[0], False), (" " + shape[1].strip() + eos, True)]
        else:
            segments = prompts.conversation_segments(shape, eos, template)
        example, cut = tokenize(segments, tokenizer, max_length)
        truncated += cut
        # A cut that leaves no answer token leaves nothing to learn.
        if any(label != -100 for label in example["labels"]):
            examples.append(example)
    return examples, truncated


def t4_estimate(config, lengths, batch_size, lora_r, epochs, packing, load_in, checkpointing):
    """Rough T4 figures from the model's shape: (peak GiB, hours). A formula, not measured."""
    d, layers, vocab, heads = config.d_model, config.n_layers, config.vocab_size, config.n_heads
    # The batch that needs the most memory.
    biggest = sorted(lengths)[-batch_size:]
    batch_tokens = sum(biggest) if packing else len(biggest) * biggest[-1]
    # Wqkv, out_proj, up_proj, down_proj.
    linear = layers * 12 * d * d
    weights = linear * {"4bit": 0.53, "8bit": 1.0, "none": 2.0}[load_in] + vocab * d * 2
    # fp32 LoRA weight, gradient and two Adam moments.
    lora_bytes = layers * 16 * lora_r * d * 16
    # fp16 activations (Korthikanti et al. 2022); fused attention keeps no scores.
    per_layer = batch_tokens * 34 * d
    if checkpointing:
        activations = batch_tokens * d * 2 * layers + per_layer
    else:
        activations = per_layer * layers
    # The ALiBi bias and masks, shared by the layers.
    square = batch_tokens**2 if packing else len(biggest) * biggest[-1] ** 2
    bias = 2 * heads * square
    # One chunk of the answer loss: logits in fp16 and fp32, and their gradients.
    loss = LOSS_CHUNK * 14
    # Forward, backward (frozen weights: no weight gradients), and the recompute.
    passes = 3 if checkpointing else 2
    steps = math.ceil(len(lengths) / batch_size) * epochs
    matmuls = sum(lengths) * epochs * 2 * passes * (linear + vocab * d) / T4_FLOPS
    # Every pass streams all the weights in 16 bits.
    streaming = steps * passes * linear * 2 / T4_BYTES_PER_S
    gib = (weights + lora_bytes + activations + bias + loss) / 2**30 + 0.5
    return gib, (matmuls + streaming) / 3600


def answer_recall(model, tokenizer, examples, limit):
    """Greedy-decode each trained answer from its prompt; count exact matches that stop at EOS."""
    # (prompt ids, answer ids ending in EOS): every answer of every conversation, unless cut.
    pairs = []
    for example in examples:
        ids, start = example["input_ids"], 0
        for is_answer, span in itertools.groupby(example["labels"], key=lambda x: x != -100):
            end = start + len(list(span))
            if is_answer and ids[end - 1] == tokenizer.eos_token_id:
                pairs.append((ids[:start], ids[start:end]))
            start = end
    pairs = pairs[:limit] if limit > 0 else pairs
    device, hits, misses = next(model.parameters()).device, 0, []
    model.eval()
    for i in range(0, len(pairs), 16):
        batch = pairs[i : i + 16]
        width = max(len(p) for p, _ in batch)
        # Left padding: every prompt ends where the answer starts.
        input_ids = [[tokenizer.pad_token_id] * (width - len(p)) + p for p, _ in batch]
        mask = [[0] * (width - len(p)) + [1] * len(p) for p, _ in batch]
        with torch.no_grad():
            out = model.generate(input_ids=torch.tensor(input_ids, device=device),
                                 attention_mask=torch.tensor(mask, device=device),
                                 do_sample=False, use_cache=True,
                                 max_new_tokens=max(len(a) for _, a in batch) + 8,
                                 eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id)
        for (prompt_ids, answer_ids), new in zip(batch, out[:, width:].tolist()):
            if new[: len(answer_ids)] == answer_ids:
                hits += 1
            else:
                question = tokenizer.decode(prompt_ids[-40:])
                misses.append((question, tokenizer.decode(new, skip_special_tokens=True)))
    return hits, len(pairs), misses


def pad_batch(batch, pad_id):
    """Right-pad a batch: padding gets label -100 and mask 0 (ALiBi needs no position ids)."""
    width = max(len(e["input_ids"]) for e in batch)
    padded = {}
    for key, value in (("input_ids", pad_id), ("labels", -100), ("attention_mask", 0)):
        padded[key] = torch.tensor([e[key] + [value] * (width - len(e[key])) for e in batch])
    return padded


def write_atomically(path, write):
    """write(temporary path), then rename: a kill or a full disk never leaves a half file."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def disk_full(err):
    """True for a write that failed for lack of space, however the library words it."""
    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    # safetensors and torch.save report it in their own words.
    text = str(err)
    return any(sign in text for sign in ("os error 28", "os error 27", "os error 122",
                                         "No space left", "failed writing", "unexpected pos"))


def safetensors_complete(path):
    """True if the file holds every byte its header promises (a cut file does not)."""
    try:
        with open(path, "rb") as file:
            size = int.from_bytes(file.read(8), "little")
            header = json.loads(file.read(size))
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
        return os.path.getsize(path) == 8 + size + max(ends, default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return False


def checkpoint_problem(folder):
    """Why a checkpoint folder can't be resumed from (a missing or cut file), or None."""
    for name in CHECKPOINT_FILES:
        path = folder / name
        if not path.is_file() or path.stat().st_size == 0:
            return f"{name} is missing"
        if name.endswith(".json"):
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError):
                return f"{name} is cut short"
        if name.endswith(".safetensors") and not safetensors_complete(path):
            return f"{name} is cut short"
    rng_files = list(folder.glob("rng_state*.pth"))
    if not rng_files:
        return "rng_state.pth is missing"
    # torch.save writes zip files whose directory comes last: a cut file has none.
    for path in [folder / "optimizer.pt", folder / "scheduler.pt", *rng_files]:
        if not zipfile.is_zipfile(path):
            return f"{path.name} is cut short"
    return None


def draw_curve(path, history, title, steps_per_epoch):
    """Plot training (and held-out) loss per step, epochs on top; write it atomically."""
    # No pyplot: it would change a notebook's plotting backend.
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return False
    train_points = [(log["step"], log["loss"]) for log in history if "loss" in log]
    eval_points = [(log["step"], log["eval_loss"]) for log in history if "eval_loss" in log]
    if not train_points:
        return False
    figure = Figure(figsize=(7, 4), layout="constrained")
    axes = figure.subplots()
    axes.plot(*zip(*train_points), marker=".", label="training loss")
    if eval_points:
        axes.plot(*zip(*eval_points), marker="o", label="held-out loss")
    axes.set(xlabel="step", ylabel="loss", title=title)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    top = axes.secondary_xaxis("top", functions=(lambda s: s / steps_per_epoch,
                                                  lambda e: e * steps_per_epoch))
    top.set_xlabel("epoch")
    axes.grid(alpha=0.3)
    axes.legend()
    write_atomically(path, lambda partial: figure.savefig(partial, dpi=100, format="png"))
    return True


class SaveOnCtrlC(TrainerCallback):
    """First Ctrl+C: finish the step, save a checkpoint, stop. A second one stops at once."""

    interrupted = False

    def __init__(self):
        self.previous = signal.signal(signal.SIGINT, self.interrupt)

    def interrupt(self, *_):
        SaveOnCtrlC.interrupted = True
        # torchrun forwards its own Ctrl+C too: under it, a second one must not abort the save.
        if not torch.distributed.is_initialized():
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def on_step_end(self, args, state, control, **kwargs):
        # Every process stops after the same step, or one of them waits for the others forever.
        if torch.distributed.is_initialized():
            flag = torch.tensor([float(self.interrupted)], device=args.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            SaveOnCtrlC.interrupted = bool(flag.item())
        if self.interrupted:
            control.should_save = control.should_training_stop = True


class ReadableProgress(ProgressCallback):
    """The Trainer's progress bar (with ETA), one readable line per log, the plot kept fresh."""

    def __init__(self, redraw, every_s=10):
        super().__init__()
        self.redraw, self.every_s = redraw, every_s
        self.clock, self.tokens, self.drawn = 0.0, 0, 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        self.clock, self.tokens = time.time(), state.num_input_tokens_seen

    def on_prediction_step(self, args, state, control, **kwargs):
        # A second bar flashing under the first at every epoch's evaluation helps no one.
        return

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.training_bar is None:
            return
        now, tokens = time.time(), state.num_input_tokens_seen
        where = f"step {state.global_step}/{state.max_steps} · epoch {state.epoch:.1f}"
        if "loss" in logs:
            speed = (tokens - self.tokens) / max(now - self.clock, 1e-6)
            self.training_bar.write(f"{where} · loss {logs['loss']:.3f} · {speed:,.0f} tok/s")
        elif "eval_loss" in logs:
            # Held-out loss comes every epoch; print it as often as the training loss.
            if state.global_step % state.logging_steps == 0:
                self.training_bar.write(f"{where} · held-out loss {logs['eval_loss']:.3f}")
        else:
            return
        # Time spent evaluating is not training speed.
        self.clock, self.tokens = now, tokens
        # Redrawing costs a fraction of a second: every few seconds is fresh enough.
        if now - self.drawn > self.every_s:
            self.redraw(state.log_history)
            self.drawn = now


# ---- settle defaults and check every input (before any work) ----
model_name = prompts.nfc(args.model)
data_name = prompts.nfc(args.data)
eval_name = None if args.eval_data == "none" else prompts.nfc(args.eval_data)
out_dir = Path(prompts.nfc(args.output))
template = args.template
if template == "auto":
    template = "instruct" if "instruct" in model_name.lower() else "chat"
if args.device == "cuda" and not torch.cuda.is_available():
    fail("--device cuda, but no CUDA GPU is visible; "
         "fix: on Colab pick Runtime > Change runtime type > T4 GPU, or --device cpu")
if args.device == "mps" and not torch.backends.mps.is_available():
    fail("--device mps, but this machine has no Apple GPU; fix: --device cpu")
device = args.device
if device == "auto":
    mps = torch.backends.mps.is_available()
    device = "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
cuda = device == "cuda"
load_in = args.load_in
if load_in == "auto":
    load_in = "4bit" if cuda else "none"
if load_in != "none" and not args.dry_run:
    if not cuda:
        fail(f"--load-in {load_in} needs a CUDA GPU and none is in use; "
             "fix: use a GPU runtime, or --load-in none")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        fail(f"--load-in {load_in} needs bitsandbytes; fix: pip install bitsandbytes "
             "(or --load-in none)")
gpu_name = torch.cuda.get_device_name() if cuda else device
if args.dtype == "bf16" and cuda and not torch.cuda.is_bf16_supported(including_emulation=False):
    fail(f"{gpu_name} has no bf16; fix: use --dtype fp16 (or leave --dtype auto)")
dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}.get(args.dtype)
dtype = dtype or pick_dtype(device)


# Zero or negative values would train nothing, or silently cut every example.
if not 0 < args.epochs <= 100_000:
    fail(f"--epochs must be > 0 and <= 100,000 (got {args.epochs}); fix: try 30")
if not 0 < args.lr <= 1:
    fail(f"--lr must be > 0 and <= 1 (got {args.lr}); fix: try 2e-4 (1e-2 for tiny-phogpt)")
if not 0 <= args.lora_dropout < 1:
    fail(f"--lora-dropout must be >= 0 and < 1 (got {args.lora_dropout}); fix: try 0.05")
if args.max_steps != -1:
    check_range("--max-steps", args.max_steps, 1, 10_000_000, "-1 (use --epochs)")
check_range("--batch-size", args.batch_size, 1, 4096, "16, or 1 on a small GPU")
check_range("--grad-accum", args.grad_accum, 1, 4096, "1")
check_range("--lora-r", args.lora_r, 1, 1024, "16 or 32")
check_range("--lora-alpha", args.lora_alpha, 1, 4096, "the same as --lora-r")
check_range("--warmup-steps", args.warmup_steps, 0, 10_000_000, "0")
check_range("--max-length", args.max_length, 16, 1_000_000, "1024")
check_range("--save-steps", args.save_steps, 1, 10_000_000, "100")
check_range("--recall-limit", args.recall_limit, -1, 10_000_000, "0 (all) or -1 (none)")
check_range("--seed", args.seed, 0, 2**32 - 1, "42")
logging_steps, tokens_before = 0, 0
if args.logging_steps != "auto":
    if not args.logging_steps.isdigit() or int(args.logging_steps) < 1:
        fail(f"--logging-steps must be auto or a whole number >= 1 (got {args.logging_steps}); "
             "fix: leave it at auto")
    logging_steps = int(args.logging_steps)
if args.lr_scheduler not in SCHEDULERS:
    fail(f"--lr-scheduler {args.lr_scheduler!r} is not one of {', '.join(SCHEDULERS)}; "
         "fix: try cosine")
targets = [name.strip() for name in args.lora_targets.split(",")]
for name in targets:
    # peft matches the end of a module's name: "Wqkv" and "attn.Wqkv" are the same layers.
    if not any(layer == name or layer.endswith("." + name) for layer in LORA_LAYERS):
        fail(f"--lora-targets: {name!r} is not a Linear layer of PhoGPT; "
             f"fix: choose among {','.join(LORA_LAYERS)}")
optim = args.optim
if optim == "auto":
    optim = "adamw_torch_fused" if cuda else "adamw_torch"
if optim not in [o.value for o in OptimizerNames]:
    fail(f"--optim {optim!r} is not a transformers optimizer; "
         "fix: try adamw_torch, adamw_torch_fused or paged_adamw_32bit")
report_to = [name.strip() for name in args.report_to.split(",")]
if report_to != ["none"]:
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK
    for name in report_to:
        if name not in INTEGRATION_TO_CALLBACK:
            fail(f"--report-to {name!r} is not a tracker transformers knows; "
                 f"fix: one of {', '.join(INTEGRATION_TO_CALLBACK)} (or none)")
        # Most trackers are a package of the same name; these two have their own.
        package = {"azure_ml": "azureml", "flyte": "flytekit"}.get(name, name)
        modules = ("tensorboard", "tensorboardX") if name == "tensorboard" else (package,)
        if not any(importlib.util.find_spec(module) for module in modules):
            fail(f"--report-to {name} needs the {package} package; "
                 f"fix: pip install {package}, or --report-to none")
if out_dir.exists() and not out_dir.is_dir():
    fail(f"--output {out_dir} is a file; fix: give a folder name, e.g. phogpt-adapter")
if args.resume and args.overwrite:
    fail("--resume continues the run in --output and --overwrite replaces it; fix: pick one")
if not args.dry_run and not args.resume and out_dir.is_dir() and any(out_dir.iterdir()):
    if not args.overwrite:
        fail(f"--output {out_dir} already exists; "
             "fix: pick another --output, add --overwrite, or --resume to continue")
if args.resume and not args.dry_run:
    if not out_dir.is_dir():
        fail(f"--resume: {out_dir} does not exist; fix: drop --resume to start afresh")
    checkpoints = [p for p in out_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    checkpoints.sort(key=lambda p: int(p.name.split("-")[-1]))
    # The newest first: a save cut short (a kill, a second Ctrl+C, a full disk) is skipped.
    last, skipped = None, []
    for folder in reversed(checkpoints):
        problem = checkpoint_problem(folder)
        if problem is None:
            last = folder
            break
        skipped.append(f"{folder.name} ({problem})")
    if last is None:
        found = f" (incomplete: {'; '.join(skipped)})" if skipped else ""
        fail(f"--resume: no complete checkpoint in {out_dir}{found}; "
             "fix: drop --resume and add --overwrite to start afresh")
# What the weights depend on; a resumed run must match the run it continues.
data_path = Path(data_name)
data_id = data_name
if data_path.is_file():
    data_id = hashlib.sha256(data_path.read_bytes()).hexdigest()[:16]
run = {"model": model_name, "data": data_name, "data_sha256": data_id, "template": template,
       "max_length": args.max_length, "lora_r": args.lora_r, "lora_alpha": args.lora_alpha,
       "lora_targets": targets}
if args.resume and not args.dry_run and (out_dir / RUN_FILE).is_file():
    try:
        before = json.loads((out_dir / RUN_FILE).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        before = {}
    for key, value in run.items():
        # The content decides, not the file name: a moved file is the same data.
        if key == "data" or before.get(key, value) == value:
            continue
        if key == "data_sha256":
            fail(f"--resume: {data_name} is not the data this run trained on "
                 f"({before.get('data')}, content changed or another file); "
                 "fix: resume with the same --data, or start afresh with --overwrite")
        fail(f"--resume: this run trained with {key} {before[key]}, not {value}; "
             "fix: resume with the same settings, or start afresh with --overwrite")

# ---- data: check every row (no model needed), then tokenize ----
# The tokenizer comes with the model download: read the data first, so a typo shows at once.
shapes = read_conversations(data_name)
eval_shapes = read_conversations(eval_name) if eval_name else []
try:
    tokenizer = load_tokenizer(model_name)
except (OSError, ValueError) as err:
    fail(err)
examples, truncated = tokenize_all(shapes, tokenizer, template, args.max_length)
eval_examples, _ = tokenize_all(eval_shapes, tokenizer, template, args.max_length)
if not examples:
    fail(f"--max-length {args.max_length} cuts every answer off; fix: raise --max-length")
lengths = [len(e["input_ids"]) for e in examples]
trained_tokens = sum(sum(label != -100 for label in e["labels"]) for e in examples)
dropped = len(shapes) - len(examples)
say(f"{len(examples)} examples from {data_name}, template '{template}': tokens min {min(lengths)}, "
    f"median {statistics.median(lengths):.0f}, mean {statistics.mean(lengths):.0f}, "
    f"max {max(lengths)}; {trained_tokens} trained (answer) tokens; "
    f"{truncated} truncated by --max-length {args.max_length}"
    + (f", {dropped} of them dropped (no answer left)" if dropped else ""))
if eval_name:
    say(f"{len(eval_examples)} held-out examples from {eval_name}")
# Optimizer steps, as the Trainer counts them (torchrun splits the rows between processes).
batches = math.ceil(math.ceil(len(examples) / world) / args.batch_size)
steps_per_epoch = max(1, math.ceil(batches / args.grad_accum))
total_steps = args.max_steps if args.max_steps > 0 else math.ceil(args.epochs * steps_per_epoch)
# About 20 points on every curve; every step when a run has fewer than 40.
logging_steps = logging_steps or max(1, total_steps // 20)
if args.resume and not args.dry_run:
    state_text = (last / "trainer_state.json").read_text(encoding="utf-8")
    done_steps = json.loads(state_text)["global_step"]
    tokens_before = json.loads(state_text)["num_input_tokens_seen"]
    if done_steps >= total_steps:
        fail(f"--resume: {last.name} already reached step {done_steps} of {total_steps}; "
             "fix: raise --epochs (or --max-steps) to train longer, or drop --resume")

if args.dry_run:
    say(f"dry run: {data_name} is valid ({len(shapes)} rows).")
    for example in examples[:2]:
        pairs = zip(example["input_ids"], example["labels"])
        spans = itertools.groupby(pairs, key=lambda pair: pair[1] != -100)
        texts = ((is_answer, tokenizer.decode([i for i, _ in span])) for is_answer, span in spans)
        marked = "".join(f"⟦{text}⟧" if is_answer else text for is_answer, text in texts)
        say("---- example (trained tokens in ⟦ ⟧) ----\n" + marked)
    try:
        config = PhoGPTConfig.from_pretrained(model_name)
    except (OSError, ValueError) as err:
        fail(err)
    t4_load = "4bit" if args.load_in == "auto" else load_in
    for checkpointing in (False, True):
        gib, hours = t4_estimate(config, lengths, args.batch_size, args.lora_r, args.epochs,
                                 args.packing, t4_load, checkpointing)
        say(f"T4 estimate ({model_name}, {t4_load}, batch {args.batch_size} x {max(lengths)} "
            f"tokens, checkpointing {'on' if checkpointing else 'off'}): peak ~{gib:.1f} GiB; "
            f"{args.epochs:g} epochs ~{hours * 60:.0f} min, ~${hours * T4_PRICE_PER_HOUR:.2f} "
            f"at ${T4_PRICE_PER_HOUR}/h (rough formula, not measured)")
    signal.signal(signal.SIGINT, sigint_before)
    # Nothing below runs in a dry run.
    sys.exit(0)

# ---- model: the base (4-bit on a GPU) + LoRA ----
torch.manual_seed(args.seed)
if device == "cpu":
    say("no GPU: training LoRA on the full-precision base on the CPU; slow beyond tiny models")
# One whole model per torchrun process, on its own GPU.
device_map = {"": int(os.environ.get("LOCAL_RANK", "0"))} if cuda else None
try:
    base, tokenizer = load_phogpt(model_name, load_in=load_in, dtype=dtype, device_map=device_map,
                                  quant_type=args.quant_type, double_quant=args.double_quant)
except (OSError, ValueError) as err:
    fail(err)
checkpointing = args.gradient_checkpointing == "on"
estimate = functools.partial(t4_estimate, base.config, lengths, args.batch_size, args.lora_r,
                             args.epochs, args.packing, load_in)
if args.gradient_checkpointing == "auto" and cuda:
    budget = torch.cuda.get_device_properties(0).total_memory / 2**30 * 0.9
    checkpointing = estimate(False)[0] > budget
    say(f"gradient checkpointing {'on' if checkpointing else 'off'} "
        f"(memory estimate vs {budget:.0f} GiB)")
    if estimate(True)[0] > budget:
        say(f"warning: batch {args.batch_size} x {max(lengths)} tokens may not fit in "
            f"{budget:.0f} GiB even with checkpointing; if it runs out of memory, "
            f"try --batch-size {max(1, args.batch_size // 4)}")
if checkpointing:
    base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
lora_config = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                         target_modules=targets, bias="none", task_type="CAUSAL_LM")
model = get_peft_model(base, lora_config)
trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
weights = {"4bit": f"4-bit {args.quant_type}", "8bit": "8-bit", "none": "unquantised"}[load_in]
say(f"{model_name}: {weights} weights, {str(dtype).split('.')[1]} compute on {gpu_name}; "
    f"LoRA r={args.lora_r}: {trainable:,} trainable parameters")

# ---- train ----
settings = TrainingArguments(
    output_dir=str(out_dir), seed=args.seed, per_device_train_batch_size=args.batch_size,
    per_device_eval_batch_size=args.batch_size, gradient_accumulation_steps=args.grad_accum,
    learning_rate=args.lr, lr_scheduler_type=args.lr_scheduler, warmup_steps=args.warmup_steps,
    num_train_epochs=args.epochs, max_steps=args.max_steps, optim=optim,
    logging_steps=logging_steps, save_steps=args.save_steps, save_total_limit=2,
    eval_strategy="epoch" if eval_examples else "no", prediction_loss_only=True,
    report_to=report_to, disable_tqdm=False, include_num_input_tokens_seen="non_padding",
    bf16=cuda and dtype == torch.bfloat16, fp16=cuda and dtype == torch.float16,
    use_cpu=device == "cpu", ddp_find_unused_parameters=False, remove_unused_columns=False,
    # Padded batches of similar lengths, or (--packing) one row whose positions restart.
    train_sampling_strategy="random" if args.packing else "group_by_length")
try:
    Trainer.get_optimizer_cls_and_kwargs(settings)
except (ImportError, ValueError, RuntimeError) as err:
    fail(f"--optim {optim} can't run here ({str(err).splitlines()[0][:120]}); "
         "fix: try adamw_torch")
collator = DataCollatorWithFlattening() if args.packing else functools.partial(
    pad_batch, pad_id=tokenizer.pad_token_id)
try:
    trainer = Trainer(model=model, args=settings, train_dataset=examples,
                      eval_dataset=eval_examples or None, data_collator=collator)
except (ImportError, RuntimeError, ValueError) as err:
    fail(f"--report-to {args.report_to}: {str(err).splitlines()[0][:160]}; "
         "fix: install the tracker, or --report-to none")
data_label = f"{Path(data_name).name} ({len(examples)} rows)"
title = f"{Path(model_name).name} on {data_label}"
redraw = functools.partial(draw_curve, out_dir / "loss_curve.png", title=title,
                           steps_per_epoch=steps_per_epoch)
progress = ReadableProgress(redraw)
trainer.remove_callback(ProgressCallback)
trainer.add_callback(progress)

if args.resume:
    for note in skipped:
        say(f"skipping {note}")
    say(f"resuming from {last} (adapter, optimizer, schedule and random state)")
# The new input is valid and the model is loaded: only now does an old run make way.
previous = out_dir / "previous-run"
if rank == 0 and args.overwrite and out_dir.is_dir():
    shutil.rmtree(previous, ignore_errors=True)
    old = list(out_dir.iterdir())
    if old:
        previous.mkdir()
        for entry in old:
            os.replace(entry, previous / entry.name)
if rank == 0:
    out_dir.mkdir(parents=True, exist_ok=True)
    run_text = json.dumps(run, indent=2, ensure_ascii=False)
    write_atomically(out_dir / RUN_FILE, lambda p: p.write_text(run_text, encoding="utf-8"))
if cuda:
    torch.cuda.reset_peak_memory_stats()
trainer.add_callback(SaveOnCtrlC())
started = time.time()
try:
    try:
        trainer.train(resume_from_checkpoint=str(last) if args.resume else None)
    finally:
        # A run that stops early leaves its bar open: close it, so what follows has its own line.
        if progress.training_bar is not None:
            progress.training_bar.close()
except torch.OutOfMemoryError:
    fail(f"out of GPU memory with --batch-size {args.batch_size} and --max-length "
         f"{args.max_length}; fix: halve --batch-size, lower --max-length, "
         "or add --gradient-checkpointing on")
except KeyboardInterrupt:
    say(f"stopped at once by a second Ctrl+C; the last complete checkpoint in {out_dir} "
        "is kept (rerun with --resume)")
    sys.exit(130)
except Exception as err:
    if not disk_full(err):
        raise
    fail(f"could not write a checkpoint in {out_dir} (the disk is full); "
         "fix: free some disk space, then rerun with --resume")
train_seconds = time.time() - started
# While saving, Ctrl+C waits: a half-saved adapter would look finished.
signal.signal(signal.SIGINT, signal.SIG_IGN)
# (A Ctrl+C after the last step stops after the save below instead.)
finished = trainer.state.global_step >= trainer.state.max_steps
if SaveOnCtrlC.interrupted and not finished:
    say(f"stopped by Ctrl+C at step {trainer.state.global_step}; "
        f"checkpoint saved in {out_dir}; rerun with --resume")
    signal.signal(signal.SIGINT, sigint_before)
    sys.exit(130)
# torchrun: only the first process saves and reports; no collective calls after this.
if torch.distributed.is_initialized():
    torch.distributed.destroy_process_group()
    if not trainer.is_world_process_zero():
        sys.stdout.flush()
        sys.stderr.flush()
        # A normal exit can abort in the process group's C++ teardown.
        os._exit(0)
model = trainer.model
# The adapter and tokenizer are written to a side folder first, then moved in file by file.
staging = out_dir / "adapter.partial"
try:
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    # peft's own README.md is an empty template; ours comes with the report.
    (staging / "README.md").unlink(missing_ok=True)
    for saved in sorted(staging.iterdir(), key=lambda p: p.name == "adapter_config.json"):
        os.replace(saved, out_dir / saved.name)
except Exception as err:
    if not disk_full(err):
        raise
    fail(f"could not save the adapter in {out_dir} (the disk is full); "
         "fix: free some disk space, then rerun with --resume")
finally:
    shutil.rmtree(staging, ignore_errors=True)
shutil.rmtree(previous, ignore_errors=True)


def stopped_after_saving(*_):
    say(f"stopped by Ctrl+C after training: the adapter in {out_dir} is complete; "
        "the checks and the report were skipped")
    sys.exit(130)


if SaveOnCtrlC.interrupted:
    stopped_after_saving()
if "ipykernel" not in sys.modules:
    signal.signal(signal.SIGINT, stopped_after_saving)

# ---- report: recall, loss curve, summary, model card ----
peak_bytes = 0
if cuda:
    peak_bytes = torch.cuda.max_memory_allocated()
elif resource is not None:
    peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
history = trainer.state.log_history
losses = [(log["step"], log["loss"]) for log in history if "loss" in log]
eval_losses = [(log["step"], log["eval_loss"]) for log in history if "eval_loss" in log]
tokens_seen = int(trainer.state.num_input_tokens_seen)
summary = {
    "model": model_name, "data": data_name, "rows": len(shapes), "examples": len(examples),
    "template": template, "device": gpu_name, "load_in": load_in,
    "dtype": str(dtype).split(".")[1], "steps": trainer.state.global_step, "epochs": args.epochs,
    "batch_size": args.batch_size, "logging_steps": logging_steps, "packing": args.packing,
    "gradient_checkpointing": checkpointing, "truncated": truncated,
    "lora": {"r": args.lora_r, "alpha": args.lora_alpha, "dropout": args.lora_dropout,
             "targets": targets},
    "final_loss": losses[-1][1] if losses else None, "train_seconds": round(train_seconds, 1),
    "tokens_seen": tokens_seen,
    "tokens_per_s": round((tokens_seen - tokens_before) / train_seconds, 1),
    "peak_memory_gib": round(peak_bytes / 2**30, 2),
    "peak_memory_kind": "CUDA allocated" if cuda else "process RSS",
    "losses": losses,
}
recall_text = []
if args.recall_limit >= 0:
    hits, total, misses = answer_recall(model, tokenizer, examples, args.recall_limit)
    summary["recall"] = {"exact": hits, "total": total}
    recall_text.append(f"{hits}/{total} trained")
    say(f"answered {hits}/{total} exactly (greedy, stopping at EOS)")
    for prompt, got in misses[:3]:
        say(f"  missed: ...{prompt!r} -> {got!r}")
if eval_name:
    hits, total, misses = answer_recall(model, tokenizer, eval_examples, 0)
    summary["eval"] = {"data": eval_name, "rows": len(eval_shapes), "losses": eval_losses,
                       "final_loss": eval_losses[-1][1] if eval_losses else None,
                       "recall": {"exact": hits, "total": total}}
    recall_text.append(f"{hits}/{total} held-out")
    say(f"answered {hits}/{total} held-out questions exactly ({eval_name})")
if "T4" in gpu_name:
    hours, basis = train_seconds / 3600, "measured on this T4"
else:
    hours = t4_estimate(base.config, lengths, args.batch_size, args.lora_r, args.epochs,
                        args.packing, "4bit", checkpointing)[1]
    basis = "rough formula, not measured"
summary.update(t4_hours=round(hours, 3), t4_cost_usd=round(hours * T4_PRICE_PER_HOUR, 2),
               t4_price_per_hour=T4_PRICE_PER_HOUR, t4_basis=basis,
               wall_seconds=round(time.time() - started, 1))
argv = [] if "ipykernel" in sys.modules else sys.argv[1:]
command = shlex.join(["python", "phogpt_qlora.py", *argv])
summary["command"] = command
final_title = title
if recall_text:
    final_title += "\nanswered exactly: " + ", ".join(recall_text)
written = []
try:
    if draw_curve(out_dir / "loss_curve.png", history, final_title, steps_per_epoch):
        written.append("loss_curve.png")
    else:
        (out_dir / "loss_curve.png").unlink(missing_ok=True)
    text = json.dumps(summary, indent=2, ensure_ascii=False)
    write_atomically(out_dir / "training_summary.json",
                     lambda p: p.write_text(text, encoding="utf-8"))
    written.append("training_summary.json")
    recall = summary.get("recall")
    held_out = summary.get("eval", {}).get("recall")
    final_loss = "—" if summary["final_loss"] is None else f"{summary['final_loss']:.3f}"
    card = "\n".join([
        f"# {out_dir.name}: adapter LoRA cho {model_name}",
        "",
        "Adapter LoRA học bằng `phogpt_qlora.py` (SFT) trên câu hỏi và câu trả lời của bạn.",
        "A LoRA adapter trained with `phogpt_qlora.py` (SFT) on your questions and answers.",
        "",
        "| | |",
        "|---|---|",
        f"| Mô hình gốc (base model) | `{model_name}` ({weights}) |",
        f"| Dữ liệu (data) | `{data_name}`: {len(shapes)} dòng (rows) |",
        "| Nhớ đúng câu đã học (training recall) | "
        + (f"{recall['exact']}/{recall['total']} |" if recall else "không kiểm tra |"),
        "| Câu hỏi chưa học (held-out recall) | "
        + (f"{held_out['exact']}/{held_out['total']} (`{eval_name}`) |" if held_out
           else "không có (none) |"),
        f"| Loss cuối (final loss) | {final_loss} |",
        f"| LoRA | r={args.lora_r}, alpha={args.lora_alpha}, {', '.join(targets)} |",
        f"| Huấn luyện (training) | {summary['steps']} bước (steps), {args.epochs:g} epoch, "
        f"{train_seconds:.0f} s, {gpu_name} |",
        "",
        "## Lệnh đã tạo adapter này (the command that made it)",
        "",
        "```",
        command,
        "```",
        "",
        "## Trò chuyện với nó (chat with it)",
        "",
        "```",
        f"python phogpt_chat.py --adapter {shlex.quote(str(out_dir))}",
        "```",
        "",
        "Đường cong loss (loss curve): `loss_curve.png`; số liệu (figures): "
        "`training_summary.json`.",
        "",
    ])
    write_atomically(out_dir / "README.md", lambda p: p.write_text(card, encoding="utf-8"))
    written.append("README.md")
except Exception as err:
    if not disk_full(err):
        raise
    fail(f"could not write the report in {out_dir} (the disk is full); the adapter is saved; "
         "fix: free some disk space")
signal.signal(signal.SIGINT, sigint_before)
say(f"{summary['tokens_per_s']:,.0f} tokens/s, peak {summary['peak_memory_gib']:.2f} GiB, "
    f"{train_seconds:.0f} s; adapter, {', '.join(written)} in {out_dir}")
