"""onechat_tiny.py: a super tiny Vietnamese ChatGPT, trained on one sentence in a few seconds.

With no flags it works offline: it trains a byte-level BPE tokenizer and a tiny GPT-2 from zero
on 'Question: Xin chào Answer: Công ty BICweb kính chào quý khách!', stops as soon as greedy
decoding gives the exact answer, ended by the EOS token it learned, and prints it.

    python onechat_tiny.py                    # the offline demo
    python onechat_tiny.py --output my-bot    # ... and save it (safetensors)
    python onechat_tiny.py --load my-bot --chat
    python onechat_tiny.py --model gpt2       # fine-tune a pretrained model (needs the hub once)
    python onechat_tiny.py --sweep            # how many parameters are enough? (Markdown table)

Exit codes: 0 = every answer memorised, 1 = bad input (one line on stderr), 2 = trained but not
memorised. Ctrl+C stops training after the current step; what was trained is then answered with
and saved (--output), or the script says plainly that nothing was.
"""
import argparse
import json
import os
import shutil
import signal
import sys
import time

import prompts

# ---- flags ----

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
parser.add_argument("--sentence",
                    default="Question: Xin chào Answer: Công ty BICweb kính chào quý khách!",
                    help="the one sentence to memorise: 'Question: ... Answer: ...'")
parser.add_argument("--data", default="none",
                    help="instead of --sentence: a file of 'Question: ... Answer: ...' lines, "
                    "or JSONL with question/answer (UTF-8 or UTF-16)")
parser.add_argument("--model", default="scratch",
                    help="scratch = a tiny GPT-2 from zero; or a small causal LM id or folder")
parser.add_argument("--size", default="2x64", help="scratch model size, LAYERSxWIDTH")
parser.add_argument("--lr", default="auto",
                    help="learning rate in (0, 1]; auto = per model family (FAMILY_DEFAULTS)")
parser.add_argument("--epochs", default="auto",
                    help="most epochs (it stops once every answer is exact); auto = per family")
parser.add_argument("--loss", choices=["answer", "full"], default="answer",
                    help="answer: on the answer + EOS; full: the whole sentence + EOS (the seed)")
parser.add_argument("--batch-size", type=int, default=16, help="pairs per optimizer step")
parser.add_argument("--max-length", type=int, default=128,
                    help="most tokens in question + answer; caps generation")
parser.add_argument("--seed", type=int, default=1234,
                    help="random seed: same seed, same output on the same CPU")
parser.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto",
                    help="where to run")
parser.add_argument("--output", default="none",
                    help="folder to save the model, tokenizer and onechat_run.json")
parser.add_argument("--overwrite", action="store_true", help="replace an --output that has files")
parser.add_argument("--load", default="none",
                    help="a folder saved by --output: answer with it, no training")
parser.add_argument("--prompt", default="",
                    help="answer this one question ('Question: ...' or the question)")
parser.add_argument("--chat", action="store_true",
                    help="ask questions in a loop; an empty line, Ctrl+D or Ctrl+C exits")
parser.add_argument("--sweep", nargs="?", const="1x8,1x16,2x64,4x256", default="none",
                    help="train each size or model listed (comma-separated); print a table")


def fail(message):
    # Give a notebook its own Ctrl+C handler back (this script sets one while it trains).
    if previous_sigint is not None:
        signal.signal(signal.SIGINT, previous_sigint)
    sys.exit(f"error: {message}")


# argparse's own errors (unknown flag, bad choice) get the same one line and exit 1.
parser.error = fail
previous_sigint = signal.getsignal(signal.SIGINT)
args = parser.parse_args([] if "ipykernel" in sys.modules else None)

# ---- Ctrl+C: finish the current step, then answer and save what was trained ----

interrupted = []


def stop_after_this_step(signum, frame):
    if not interrupted:
        print("\nCtrl+C: stopping after this step.", flush=True)
    interrupted.append(time.time())


signal.signal(signal.SIGINT, stop_after_this_step)

# (lr, most epochs) per family, after the seed's table: gpt2 lr 1e-3 was exact at epoch 9,
# TinyStories-33M lr 5e-4 at epoch 29; TinyStories-1M/3M/8M failed at 1e-3, and a later
# recipe made 1M work at 0.05.
FAMILY_DEFAULTS = {
    "scratch": (1e-2, 300),
    "gpt2": (1e-3, 50),
    "tinystories-33m": (5e-4, 100),
    "tinystories": (5e-2, 200),
    "other": (5e-4, 100),
}


# ---- helpers for the checks ----

def parse_size(size):
    """'2x64' -> (2, 64); one line if it is not LAYERSxWIDTH in range."""
    layers, _, width = size.lower().partition("x")
    good = layers.isdigit() and width.isdigit()
    if not good or not 1 <= int(layers) <= 48 or not 8 <= int(width) <= 4096 or int(width) % 8:
        fail(f"--size {size!r}: write LAYERSxWIDTH, layers 1..48, width 8..4096 and a multiple "
             "of 8; fix: e.g. 2x64")
    return int(layers), int(width)


def read_text(path):
    """A text file as str: UTF-8 (with or without BOM), or UTF-16 as Windows Notepad saves it."""
    with open(path, "rb") as file:
        raw = file.read()
    encoding = "utf-16" if raw.startswith((b"\xff\xfe", b"\xfe\xff")) else "utf-8-sig"
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as error:
        line = raw[:error.start].count(b"\n") + 1
        fail(f"{path} line {line}: not UTF-8 text; fix: save the file as UTF-8")


def read_pairs(data, sentence):
    """[(question, answer)] from --data (text or JSONL lines) or the one --sentence, all NFC."""
    if data is None:
        try:
            return [prompts.onechat_split(sentence)]
        except ValueError as error:
            fail(f"--sentence: {error}; fix: write it as 'Question: Xin chào Answer: ...'")
    if not os.path.isfile(data):
        fail(f"--data {data!r}: no such file")
    pairs = []
    for line_number, line in enumerate(read_text(data).splitlines(), 1):
        line = prompts.nfc(line).strip()
        if not line or line.startswith("#"):
            continue
        try:
            if line.startswith("{"):
                row = json.loads(line)
                line = f"Question: {row['question']} Answer: {row['answer']}"
            pairs.append(prompts.onechat_split(line))
        # JSONDecodeError is a ValueError; a row that is not an object gives TypeError.
        except (ValueError, KeyError, TypeError) as error:
            fail(f"{data} line {line_number}: {type(error).__name__} {error}; fix: write "
                 "'Question: ... Answer: ...' or JSON with 'question' and 'answer'")
    if not pairs:
        fail(f"{data} has no Question/Answer pairs; fix: write one 'Question: ... Answer: ...' "
             "per line")
    return pairs


def as_question(text):
    """'Question: Q', 'Question: Q Answer:' or just 'Q' -> 'Q' (NFC)."""
    text = prompts.nfc(text).strip()
    if text.startswith(prompts.ONECHAT_QUESTION):
        text = text[len(prompts.ONECHAT_QUESTION):]
    return text.split(prompts.ONECHAT_ANSWER)[0].strip()


def is_phogpt(name):
    """PhoGPT (a hub id or a folder of it) needs QLoRA and its own model class, not this script."""
    config = os.path.join(name, "config.json")
    if os.path.isfile(config):
        try:
            with open(config, encoding="utf-8") as file:
                return json.load(file).get("model_type") == "mpt"
        except (ValueError, AttributeError):
            return False
    return "phogpt" in name.lower()


def number(flag, text, kind, low, high, example):
    """A numeric flag (or 'auto' -> None) within [low, high], else one line with the range."""
    if text == "auto":
        return None
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        fail(f"{flag} {text} is out of range: use {low:g} to {high:g}; fix: e.g. {flag} {example}")
    return value


# ---- settle defaults and check every input (before any work) ----

# "none" and "" are how --help shows "not given"; from here on, not given is None.
for flag in ("data", "output", "load", "sweep"):
    if getattr(args, flag) == "none":
        setattr(args, flag, None)
if args.prompt == "":
    args.prompt = None

lr = number("--lr", args.lr, float, 1e-8, 1, "1e-3")
epochs = number("--epochs", args.epochs, int, 1, 100_000, 50)
number("--batch-size", args.batch_size, int, 1, 4096, 16)
number("--max-length", args.max_length, int, 8, 32_768, 128)
# Any integer torch takes is a seed.
number("--seed", args.seed, int, -(2**63), 2**64 - 1, 1234)
sweep = [item.strip() for item in (args.sweep or "").split(",") if item.strip()]
if args.sweep is not None and not sweep:
    fail("--sweep needs sizes (2x64) or models (gpt2), comma-separated")
if sweep and (args.load or args.output or args.prompt or args.chat):
    fail("--sweep only prints its table: it does not combine with --load, --output, --prompt "
         "or --chat")
for size in [args.size] + [item for item in sweep if item[0].isdigit()]:
    parse_size(size)
for name in [args.model] + [item for item in sweep if not item[0].isdigit()]:
    if name != "scratch" and is_phogpt(name):
        fail(f"--model {name} is PhoGPT: too big for this tour and not a GPT-2-style model; "
             f"fix: fine-tune it with phogpt_qlora.py --model {name}, chat with phogpt_chat.py")
if args.load and (args.output or args.model != "scratch"):
    fail("--load answers with a saved model: it does not combine with --output or --model")
if args.load and not os.path.isfile(os.path.join(args.load, "onechat_run.json")):
    fail(f"--load {args.load!r}: no model saved there (expected onechat_run.json, written by "
         "--output)")
if args.prompt is not None and not as_question(args.prompt):
    fail("--prompt is empty: write a question, e.g. --prompt 'Question: Xin chào'")
if args.output and os.path.exists(args.output) and not os.path.isdir(args.output):
    fail(f"--output {args.output} is a file; fix: give a folder name")
if args.output and os.path.isdir(args.output) and os.listdir(args.output) and not args.overwrite:
    fail(f"--output {args.output} already has files; fix: add --overwrite to replace them, "
         "or pick another --output")
pairs = None if args.load else read_pairs(args.data, args.sentence)

# ---- torch and the device (imported after the checks: bad input costs nothing) ----

import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402
from transformers import GPT2Config  # noqa: E402
from transformers import GPT2LMHeadModel  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402
from transformers.utils import logging  # noqa: E402

from phogpt_model import cached_hub_folder  # noqa: E402
from phogpt_model import check_json_files  # noqa: E402
from phogpt_model import check_weight_files  # noqa: E402
from phogpt_model import hub_reachable  # noqa: E402

logging.set_verbosity_error()
logging.disable_progress_bar()
available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(),
             "cpu": True}
device = args.device
if device == "auto":
    device = next(name for name in available if available[name])
if not available[device]:
    fail(f"--device {device} is not available on this machine; fix: use --device cpu")


# ---- model, batches, answers, training ----

def build_scratch(pairs, size, max_length):
    """A byte-level BPE trained on the pairs (milliseconds) and a tiny GPT-2 built from config."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    layers, width = parse_size(size)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    # The byte alphabet first, so any text still encodes.
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=["<|endoftext|>"],
                                  show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    texts = [prompts.onechat_prompt(q) + prompts.onechat_answer(a) for q, a in pairs]
    bpe.train_from_iterator(texts, trainer)
    # No pad token, on purpose: batches are padded with EOS under a zero attention mask.
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")
    # GPT2Config would default both to 50256.
    eos = tokenizer.eos_token_id
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=max_length, n_embd=width,
                        n_layer=layers, n_head=max(1, width // 32), resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=eos, eos_token_id=eos)
    return GPT2LMHeadModel(config), tokenizer


def load_pretrained(name):
    """A causal LM and its tokenizer from a folder or the hub; one clear line if it fails."""
    if not os.path.isdir(name) and not hub_reachable():
        # The hub client would retry for a minute: use the local cache, or say so now.
        if cached_hub_folder(name) is None:
            fail(f"model {name!r} is not a local folder and the Hugging Face hub cannot be "
                 "reached (offline?); fix: download it where the hub is reachable, or run "
                 "without --model for the offline tiny model")
        name = cached_hub_folder(name)
    if os.path.isdir(name):
        try:
            check_weight_files(name)
            check_json_files(name, ["tokenizer.json", "tokenizer_config.json", "vocab.json"])
        except OSError as error:
            fail(error)
    if is_phogpt(name):
        fail(f"{name} is PhoGPT; fix: use phogpt_qlora.py or phogpt_chat.py for it")
    try:
        return AutoModelForCausalLM.from_pretrained(name), AutoTokenizer.from_pretrained(name)
    # Any model folder can be damaged in its own way: one line, never a traceback.
    except Exception as error:
        fail(f"cannot load model {name!r}: {(str(error).splitlines() or [''])[0][:200]}")


def get_model(name, pairs):
    """(model, tokenizer, lr, epochs) for a scratch size like '2x64' or a model id or folder."""
    scratch = name[0].isdigit()
    if scratch:
        model, tokenizer = build_scratch(pairs, name, args.max_length)
    else:
        model, tokenizer = load_pretrained(name)
    if tokenizer.eos_token_id is None:
        fail(f"the tokenizer of {name!r} has no EOS token, so the model could not learn to stop")
    family = "scratch"
    if not scratch:
        family = next((key for key in FAMILY_DEFAULTS if key in name.lower()), "other")
    # One thread is fastest for tiny models (measured) and keeps CPU runs reproducible.
    small = sum(p.numel() for p in model.parameters()) < 5e6
    torch.set_num_threads(1 if small else min(8, os.cpu_count() or 1))
    family_lr, family_epochs = FAMILY_DEFAULTS[family]
    return model.to(device), tokenizer, lr or family_lr, epochs or family_epochs


def encode(tokenizer, question, answer=None):
    """Token ids of the prompt, and of the answer + EOS: one builder for training and answers."""
    prompt_ids = tokenizer(prompts.onechat_prompt(question))["input_ids"]
    if answer is None:
        return prompt_ids
    answer_ids = tokenizer(prompts.onechat_answer(answer), add_special_tokens=False)["input_ids"]
    return prompt_ids, answer_ids + [tokenizer.eos_token_id]


def make_batch(rows, full_loss, device):
    """Right-padded tensors; padding, and the prompt unless full_loss, get label -100."""
    length = max(len(p) + len(a) for p, a in rows)
    ids, mask, labels = [], [], []
    for prompt_ids, answer_ids in rows:
        pad = length - len(prompt_ids) - len(answer_ids)
        # Padded with EOS: no pad token needed, and the mask hides it.
        ids.append(prompt_ids + answer_ids + answer_ids[-1:] * pad)
        mask.append([1] * (length - pad) + [0] * pad)
        prompt_labels = prompt_ids if full_loss else [-100] * len(prompt_ids)
        labels.append(prompt_labels + answer_ids + [-100] * pad)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    return {key: torch.tensor(value, device=device) for key, value in batch.items()}


def reply(model, tokenizer, question, max_length, device):
    """Greedy answer; it ends by itself on EOS, else it is marked as cut at --max-length."""
    prompt_ids = encode(tokenizer, question)
    config = model.config
    positions = getattr(config, "n_positions", 0) or getattr(config, "max_position_embeddings", 0)
    limit = min(max_length, positions or max_length)
    if len(prompt_ids) >= limit:
        return f"[the question is {len(prompt_ids)} tokens: more than the {limit} this model takes]"
    model.eval()
    ids = torch.tensor([prompt_ids], device=device)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.eos_token_id,
                             max_new_tokens=limit - len(prompt_ids))
    new = out[0, len(prompt_ids):].tolist()
    if tokenizer.eos_token_id in new:
        return tokenizer.decode(new[:new.index(tokenizer.eos_token_id)]).strip()
    return tokenizer.decode(new).strip() + " [no EOS: cut at --max-length]"


def all_exact(model, tokenizer, pairs, checks, targets):
    """Does greedy decoding give every answer + EOS exactly?

    It does iff, at every answer position, the argmax given the true prefix is the next true
    token: one teacher-forced forward checks all answers; generate() confirms a success.
    """
    model.eval()
    with torch.no_grad():
        for batch in checks:
            logits = model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            labels = batch["labels"][:, 1:]
            if not ((logits[:, :-1].argmax(-1) == labels) | (labels == -100)).all():
                return False
    answers = [reply(model, tokenizer, q, args.max_length, device) for q, _ in pairs]
    return answers == targets


def train(model, tokenizer, pairs, lr, epochs, quiet=False):
    """AdamW until greedy decoding gives every answer + EOS exactly, or epochs; a summary dict.

    A Ctrl+C (the flag `interrupted`) ends training after the current step.
    """
    rows = [encode(tokenizer, q, a) for q, a in pairs]
    for (question, _), (p, a) in zip(pairs, rows):
        if len(p) + len(a) > args.max_length:
            fail(f"the pair {question[:40]!r} is {len(p) + len(a)} tokens, more than "
                 f"--max-length {args.max_length}; fix: raise --max-length")
    chunks = [rows[i:i + args.batch_size] for i in range(0, len(rows), args.batch_size)]
    batches = [make_batch(chunk, args.loss == "full", device) for chunk in chunks]
    checks = [make_batch(chunk, False, device) for chunk in chunks]
    # The answers as decoded text: what reply() must give back.
    targets = [tokenizer.decode(answer_ids[:-1]).strip() for _, answer_ids in rows]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    start = time.perf_counter()
    summary = {"epochs_to_exact": None, "seconds_to_exact": None, "final_loss": float("nan"),
               "epochs_run": 0, "steps": 0, "interrupted": False}
    for epoch in range(1, epochs + 1):
        epoch_start = time.perf_counter()
        losses = []
        model.train()
        for batch in batches:
            if interrupted:
                break
            loss = model(**batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            summary["steps"] += 1
        if interrupted:
            summary["interrupted"] = True
            print(f"Interrupted in epoch {epoch}.")
            break
        exact = all_exact(model, tokenizer, pairs, checks, targets)
        summary.update(final_loss=round(sum(losses) / len(losses), 6), epochs_run=epoch)
        if not quiet:
            seconds = time.perf_counter() - epoch_start
            print(f"({seconds:.3f}s) Epoch {epoch}, Loss {summary['final_loss']:.6f}", flush=True)
        if exact:
            summary["epochs_to_exact"] = epoch
            summary["seconds_to_exact"] = round(time.perf_counter() - start, 3)
            break
    summary["seconds"] = round(time.perf_counter() - start, 3)
    summary["exact"] = summary["epochs_to_exact"] is not None
    return summary


# ---- sweep, load, or train ----

if sweep:
    table = ["| model | parameters | lr | epochs to exact | seconds | final loss | answer |",
             "|---|---:|---:|---:|---:|---:|---|"]
    # Build (or download) every model first, so a bad name fails before any training.
    models = []
    for item in sweep:
        torch.manual_seed(args.seed)
        models.append(get_model(item, pairs))
    print(f"Sweep on {len(pairs)} pair(s), device {device}, loss on {args.loss}")
    for item, (model, tokenizer, item_lr, item_epochs) in zip(sweep, models):
        if interrupted:
            break
        torch.manual_seed(args.seed)
        result = train(model, tokenizer, pairs, item_lr, item_epochs, quiet=True)
        name = f"scratch {item}" if item[0].isdigit() else item
        parameters = sum(p.numel() for p in model.parameters())
        verdict = "exact" if result["exact"] else "NOT memorised"
        print(f"{name}: {verdict} after {result['epochs_run']} epochs, {result['seconds']} s",
              flush=True)
        answer = reply(model, tokenizer, pairs[0][0], args.max_length, device).replace("|", "/")
        epochs_to_exact = result["epochs_to_exact"] or f"not in {item_epochs}"
        table.append(f"| {name} | {parameters:,} | {item_lr:g} | {epochs_to_exact} | "
                     f"{result['seconds']} | {result['final_loss']:.6f} | {answer} |")
    print("\n".join(table))
    summary = {"exact": not interrupted}
    questions = []
elif args.load:
    model, tokenizer = load_pretrained(args.load)
    model = model.to(device)
    summary = {"exact": True}
    with open(os.path.join(args.load, "onechat_run.json"), encoding="utf-8") as file:
        questions = [pair["question"] for pair in json.load(file)["pairs"]]
else:
    torch.manual_seed(args.seed)
    name = args.size if args.model == "scratch" else args.model
    model, tokenizer, lr, epochs = get_model(name, pairs)
    parameters = sum(p.numel() for p in model.parameters())
    shown = f"scratch {args.size}" if args.model == "scratch" else args.model
    print(f"Model {shown}: {parameters:,} parameters, {len(pairs)} pair(s), lr {lr:g}, "
          f"up to {epochs} epochs, loss on {args.loss}, device {device}")
    summary = train(model, tokenizer, pairs, lr, epochs)
    summary.update(model=args.model, size=args.size, parameters=parameters, lr=lr,
                   loss=args.loss, seed=args.seed)
    if summary["steps"] == 0:
        fail("interrupted (Ctrl+C) before the first epoch ended: nothing was trained or saved")
    if summary["exact"]:
        print(f"Exact answer after {summary['epochs_to_exact']} epochs, "
              f"{summary['seconds_to_exact']} s of training.")
    else:
        print(f"NOT memorised: after {summary['epochs_run']} epochs greedy decoding still misses "
              f"an answer or its EOS. Try more --epochs or another --lr (now {lr:g}).")
    questions = [q for q, _ in pairs]

# ---- answers and chat ----

if args.prompt is not None or args.chat:
    questions = [as_question(args.prompt)] if args.prompt is not None else []
for question in questions:
    answer = reply(model, tokenizer, question, args.max_length, device)
    print(f"Question: {question}\nAnswer: {answer}")
if args.chat:
    # At the prompt, Ctrl+C ends the chat at once (and --output still saves).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # Bytes that are not UTF-8 (a terminal in another encoding) must not end the chat: keep
    # them as stand-ins (surrogates), so we can say so and read on.
    if hasattr(sys.stdin, "reconfigure"):
        sys.stdin.reconfigure(errors="surrogateescape")
while args.chat:
    try:
        line = input("Question: ")
    except (EOFError, KeyboardInterrupt):
        break
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        print("[that line is not UTF-8 text: type it again]", flush=True)
        continue
    question = as_question(line)
    if not question:
        break
    print(f"Answer: {reply(model, tokenizer, question, args.max_length, device)}", flush=True)
signal.signal(signal.SIGINT, stop_after_this_step)

# ---- save: into OUTPUT.partial, then renamed, so a kill never leaves a half-saved folder ----

if args.output and not args.load:
    partial = args.output.rstrip("/\\") + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    summary["pairs"] = [{"question": q, "answer": a,
                         "generated": reply(model, tokenizer, q, args.max_length, device)}
                        for q, a in pairs]
    try:
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        with open(os.path.join(partial, "onechat_run.json"), "w", encoding="utf-8") as file:
            json.dump(summary, file, ensure_ascii=False, indent=1)
        if os.path.isdir(args.output):
            old = args.output.rstrip("/\\") + ".old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(args.output, old)
            os.replace(partial, args.output)
            shutil.rmtree(old)
        else:
            os.replace(partial, args.output)
    except OSError as error:
        shutil.rmtree(partial, ignore_errors=True)
        fail(f"could not save to {args.output} ({error.strerror or error}): nothing was saved; "
             "fix: free some disk space or pick another --output")
    print(f"Saved the model, its tokenizer and onechat_run.json to {args.output}")
elif interrupted and not args.load:
    print("Nothing was saved (no --output).")

# ---- exit code ----

if previous_sigint is not None:
    signal.signal(signal.SIGINT, previous_sigint)
# A notebook shows even SystemExit(0) as an error, so success just ends.
if not summary["exact"]:
    sys.exit(2)
