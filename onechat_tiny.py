"""onechat_tiny.py: a super tiny Vietnamese ChatGPT, trained on one sentence in a few seconds.

With no flags it works offline: it trains a byte-level BPE tokenizer and a tiny GPT-2 from zero on
'Question: Xin chào Answer: Công ty BICweb kính chào quý khách!', stops as soon as greedy decoding
gives the exact answer, ended by the EOS token it learned, and prints it.
    python onechat_tiny.py                  # the offline demo
    python onechat_tiny.py --model gpt2     # fine-tune a pretrained model instead (needs the hub once)
    python onechat_tiny.py --sweep          # how many parameters are enough? (Markdown table)
Exit codes: 0 = every answer memorised, 1 = bad input (one line on stderr), 2 = trained but not memorised.
"""
import argparse, json, os, sys, time
import prompts

parser = argparse.ArgumentParser(description="Train a tiny chatbot on one Question/Answer sentence.")
SENTENCE = "Question: Xin chào Answer: Công ty BICweb kính chào quý khách!"
parser.add_argument("--sentence", default=SENTENCE, help="the one sentence to memorise: 'Question: ... Answer: ...'")
parser.add_argument("--data", help="file of pairs: 'Question: ... Answer: ...' lines, or JSONL with question/answer")
parser.add_argument("--model", default="scratch", help="scratch = tiny GPT-2 from zero; or a causal LM id / folder")
parser.add_argument("--size", default="2x64", help="scratch model size, LAYERSxWIDTH")
parser.add_argument("--lr", type=float, help="learning rate (default: per model family, FAMILY_DEFAULTS below)")
parser.add_argument("--epochs", type=int, help="most epochs; training stops once every answer is exact")
parser.add_argument("--loss", choices=["answer", "full"], default="answer",
                    help="answer: loss on the answer + EOS; full: on the whole sentence + EOS, like the seed")
parser.add_argument("--batch-size", type=int, default=16, help="pairs per optimizer step")
parser.add_argument("--max-length", type=int, default=128, help="most tokens in question + answer; caps generation")
parser.add_argument("--seed", type=int, default=1234, help="random seed: same seed, same output on the same CPU")
parser.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto", help="where to run")
parser.add_argument("--output", help="folder to save model + tokenizer (safetensors) + onechat_run.json")
parser.add_argument("--load", help="folder saved by --output: answer with it, no training")
parser.add_argument("--prompt", help="answer this one question ('Question: ...' or just the question)")
parser.add_argument("--chat", action="store_true", help="ask questions in a loop; an empty line or Ctrl+D exits")
parser.add_argument("--sweep", nargs="?", const="1x8,1x16,2x64,4x256",
                    help="train each size or model listed (comma-separated) and print a Markdown table")
parser.error = lambda message: sys.exit(f"error: {message}")  # one line and exit 1, no usage dump
args = parser.parse_args([] if "ipykernel" in sys.modules else None)

# (lr, most epochs) per family, after the seed's table: gpt2 lr 1e-3 was exact at epoch 9, TinyStories-33M
# lr 5e-4 at epoch 29; TinyStories-1M/3M/8M failed at 1e-3 and a later recipe made 1M work at 0.05.
FAMILY_DEFAULTS = {"scratch": (1e-2, 300), "gpt2": (1e-3, 50), "tinystories-33m": (5e-4, 100),
                   "tinystories": (5e-2, 200), "other": (5e-4, 100)}


def fail(message):
    sys.exit(f"error: {message}")


def parse_size(size):
    layers, _, width = size.lower().partition("x")
    if not (layers.isdigit() and width.isdigit() and int(layers) >= 1 and int(width) >= 8 and int(width) % 8 == 0):
        fail(f"bad size {size!r}: write LAYERSxWIDTH with WIDTH a multiple of 8, e.g. 2x64")
    return int(layers), int(width)


def read_pairs(data, sentence):
    """[(question, answer)] from --data (text or JSONL lines) or from the one --sentence, all NFC."""
    if data is None:
        try:
            return [prompts.onechat_split(sentence)]
        except ValueError as error:
            fail(f"--sentence: {error}; write it as 'Question: Xin chào Answer: ...'")
    if not os.path.isfile(data):
        fail(f"--data {data!r}: no such file")
    pairs = []
    with open(data, encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            line = prompts.nfc(line).strip()
            if not line or line.startswith("#"):
                continue
            try:
                if line.startswith("{"):
                    row = json.loads(line)
                    pairs.append(prompts.onechat_split(f"Question: {row['question']} Answer: {row['answer']}"))
                else:
                    pairs.append(prompts.onechat_split(line))
            except (ValueError, KeyError, TypeError) as error:  # JSONDecodeError is a ValueError
                fail(f"{data} line {number}: {type(error).__name__} {error}; need 'Question: ... Answer: ...' "
                     "or JSON with 'question' and 'answer'")
    if not pairs:
        fail(f"{data} has no Question/Answer pairs: write one 'Question: ... Answer: ...' per line")
    return pairs


def load_pretrained(name):
    """A causal LM and its tokenizer from a local folder or the hub; one clear line if unreachable."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    if not os.path.isdir(name):
        import socket, urllib.parse
        from huggingface_hub import constants, try_to_load_from_cache
        hub = urllib.parse.urlparse(constants.ENDPOINT)
        try:  # fail in seconds instead of a minute of download retries
            if constants.HF_HUB_OFFLINE:
                raise OSError("HF_HUB_OFFLINE is set")
            socket.create_connection((hub.hostname, hub.port or 443), timeout=5).close()
        except OSError:
            try:
                cached = try_to_load_from_cache(name, "config.json")
            except ValueError:  # not a valid model id
                cached = None
            if not isinstance(cached, str):
                fail(f"model {name!r} is not a local folder and the Hugging Face hub cannot be reached (offline?): "
                     "download it where the hub is reachable, or run without --model for the offline tiny model")
            name = os.path.dirname(cached)  # its snapshot folder in the local cache: no network needed
    try:
        return AutoModelForCausalLM.from_pretrained(name), AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as error:
        fail(f"cannot load model {name!r}: {str(error).splitlines()[0]}")


def build_scratch(pairs, size):
    """A byte-level BPE trained on the pairs (milliseconds) and a tiny GPT-2 built from config."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
    layers, width = parse_size(size)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # any text still encodes
    bpe.train_from_iterator([prompts.onechat_prompt(q) + prompts.onechat_answer(a) for q, a in pairs], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")  # no pad token, on purpose
    eos = tokenizer.eos_token_id  # GPT2Config would default to 50256
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=args.max_length, n_embd=width, n_layer=layers,
                        n_head=max(1, width // 32), resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=eos, eos_token_id=eos)
    return GPT2LMHeadModel(config), tokenizer


def to_device(model):
    # One thread is fastest for tiny models (measured) and keeps CPU runs reproducible across machines.
    torch.set_num_threads(1 if sum(p.numel() for p in model.parameters()) < 5e6 else min(8, os.cpu_count() or 1))
    return model.to(device)


def encode(tokenizer, question, answer=None):
    """Token ids of the prompt, and of the answer + EOS: one builder for training and answering."""
    prompt_ids = tokenizer(prompts.onechat_prompt(question))["input_ids"]
    if answer is None:
        return prompt_ids
    answer_ids = tokenizer(prompts.onechat_answer(answer), add_special_tokens=False)["input_ids"]
    return prompt_ids, answer_ids + [tokenizer.eos_token_id]


def make_batch(rows, full_loss):
    """Right-padded tensors; padding, and the prompt unless full_loss, get label -100 (not trained)."""
    length = max(len(p) + len(a) for p, a in rows)
    ids, mask, labels = [], [], []
    for prompt_ids, answer_ids in rows:
        pad = length - len(prompt_ids) - len(answer_ids)
        ids.append(prompt_ids + answer_ids + answer_ids[-1:] * pad)  # pad with EOS: no pad token needed
        mask.append([1] * (length - pad) + [0] * pad)
        labels.append((prompt_ids if full_loss else [-100] * len(prompt_ids)) + answer_ids + [-100] * pad)
    return {key: torch.tensor(value, device=device) for key, value in
            (("input_ids", ids), ("attention_mask", mask), ("labels", labels))}


def reply(model, tokenizer, question):
    """Greedy answer; it ends by itself on EOS, else it is marked as cut at --max-length."""
    prompt_ids = encode(tokenizer, question)
    positions = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
    limit = min(args.max_length, positions or args.max_length)
    if len(prompt_ids) >= limit:
        return f"[the question is {len(prompt_ids)} tokens: more than the {limit} this model can take]"
    model.eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids], device=device), attention_mask=torch.ones(1, len(prompt_ids),
                             dtype=torch.long, device=device), do_sample=False, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.eos_token_id,
                             max_new_tokens=limit - len(prompt_ids))
    new = out[0, len(prompt_ids):].tolist()
    if tokenizer.eos_token_id in new:
        return tokenizer.decode(new[:new.index(tokenizer.eos_token_id)]).strip()
    return tokenizer.decode(new).strip() + " [no EOS: cut at --max-length]"


def train(model, tokenizer, pairs, lr, epochs, quiet=False):
    """AdamW until greedy decoding gives every answer + EOS exactly, or epochs; returns a summary dict."""
    rows = [encode(tokenizer, q, a) for q, a in pairs]
    for (question, _), (p, a) in zip(pairs, rows):
        if len(p) + len(a) > args.max_length:
            fail(f"the pair {question[:40]!r} is {len(p) + len(a)} tokens, more than --max-length {args.max_length}")
    chunks = [rows[i:i + args.batch_size] for i in range(0, len(rows), args.batch_size)]
    batches = [make_batch(chunk, args.loss == "full") for chunk in chunks]
    # Greedy decoding gives answer + EOS iff, at every answer position, the argmax given the true prefix is
    # the next true token: one teacher-forced forward checks all answers; generate() confirms a success.
    checks = [make_batch(chunk, False) for chunk in chunks]
    targets = [tokenizer.decode(answer_ids[:-1]).strip() for _, answer_ids in rows]  # the answers as decoded text
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    start, summary = time.perf_counter(), {"epochs_to_exact": None, "seconds_to_exact": None,
                                         "final_loss": float("nan"), "epochs_run": 0}
    for epoch in range(1, epochs + 1):
        epoch_start, losses = time.perf_counter(), []
        model.train()
        try:
            for batch in batches:
                loss = model(**batch).loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
        except KeyboardInterrupt:  # Ctrl+C: keep the model as it is, still answer and save
            print(f"Interrupted in epoch {epoch}.")
            break
        model.eval()
        with torch.no_grad():
            exact = all(((model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].argmax(-1)
                          == b["labels"][:, 1:]) | (b["labels"][:, 1:] == -100)).all() for b in checks)
        exact = exact and all(reply(model, tokenizer, q) == target for (q, _), target in zip(pairs, targets))
        summary.update(final_loss=round(sum(losses) / len(losses), 6), epochs_run=epoch)
        if not quiet:
            print(f"({time.perf_counter() - epoch_start:.3f}s) Epoch {epoch}, Loss {summary['final_loss']:.6f}", flush=True)
        if exact:
            summary.update(epochs_to_exact=epoch, seconds_to_exact=round(time.perf_counter() - start, 3))
            break
    return summary | {"seconds": round(time.perf_counter() - start, 3), "exact": summary["epochs_to_exact"] is not None}


def get_model(name, pairs):
    """(model, tokenizer, lr, epochs) for a scratch size like '2x64' or a pretrained model id / folder."""
    scratch = name[0].isdigit()
    model, tokenizer = build_scratch(pairs, name) if scratch else load_pretrained(name)
    if tokenizer.eos_token_id is None:
        fail(f"the tokenizer of {name!r} has no EOS token, so the model could not learn to stop")
    family = "scratch" if scratch else next((key for key in FAMILY_DEFAULTS if key in name.lower()), "other")
    return to_device(model), tokenizer, args.lr or FAMILY_DEFAULTS[family][0], args.epochs or FAMILY_DEFAULTS[family][1]


def as_question(text):
    """'Question: Q', 'Question: Q Answer:' or just 'Q' -> 'Q' (NFC)."""
    text = prompts.nfc(text).strip()
    text = text[len(prompts.ONECHAT_QUESTION):] if text.startswith(prompts.ONECHAT_QUESTION) else text
    return text.split(prompts.ONECHAT_ANSWER)[0].strip()


# Check every input before importing torch: bad input costs nothing.
sweep = [item.strip() for item in (args.sweep or "").split(",") if item.strip()]
for bad, message in [(args.lr is not None and not 0 < args.lr <= 1, f"--lr {args.lr} is out of range: use (0, 1], e.g. 1e-3"),
                     (args.epochs is not None and args.epochs < 1, f"--epochs {args.epochs} is out of range: use 1 or more"),
                     (args.batch_size < 1, f"--batch-size {args.batch_size} is out of range: use 1 or more"),
                     (args.max_length < 8, f"--max-length {args.max_length} is out of range: use 8 or more"),
                     (args.sweep is not None and not sweep, "--sweep needs sizes (2x64) or models (gpt2), comma-separated"),
                     (args.sweep and (args.load or args.output or args.prompt or args.chat),
                      "--sweep only prints its table: it does not combine with --load, --output, --prompt or --chat"),
                     (args.load and (args.output or args.model != "scratch"),
                      "--load answers with a saved model: it does not combine with --output or --model"),
                     (args.load and not os.path.isfile(os.path.join(args.load or "", "onechat_run.json")),
                      f"--load {args.load!r}: no model saved there (expected onechat_run.json, written by --output)"),
                     (args.prompt is not None and not as_question(args.prompt),
                      "--prompt is empty: write a question, e.g. --prompt 'Question: Xin chào'")]:
    if bad:
        fail(message)
for size in [args.size] + [item for item in sweep if item[0].isdigit()]:
    parse_size(size)
pairs = None if args.load else read_pairs(args.data, args.sentence)

import torch
from transformers.utils import logging
logging.set_verbosity_error()
logging.disable_progress_bar()
available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
device = next(name for name in available if available[name]) if args.device == "auto" else args.device
if not available[device]:
    fail(f"--device {device} is not available on this machine: use --device cpu")

if sweep:
    table = ["| model | parameters | lr | epochs to exact | seconds | final loss | answer |",
             "|---|---:|---:|---:|---:|---:|---|"]
    models = []
    for item in sweep:  # build (or download) every model first, so a bad name fails before any training
        torch.manual_seed(args.seed)
        models.append(get_model(item, pairs))
    print(f"Sweep on {len(pairs)} pair(s), device {device}, loss on {args.loss}")
    for item, (model, tokenizer, lr, epochs) in zip(sweep, models):
        torch.manual_seed(args.seed)
        result = train(model, tokenizer, pairs, lr, epochs, quiet=True)
        name, parameters = f"scratch {item}" if item[0].isdigit() else item, sum(p.numel() for p in model.parameters())
        print(f"{name}: {'exact' if result['exact'] else 'NOT memorised'} after {result['epochs_run']} epochs, "
              f"{result['seconds']} s", flush=True)
        table.append(f"| {name} | {parameters:,} | {lr:g} | {result['epochs_to_exact'] or f'not in {epochs}'} | "
                     f"{result['seconds']} | {result['final_loss']:.6f} | "
                     f"{reply(model, tokenizer, pairs[0][0]).replace('|', '/')} |")
    print("\n".join(table))
    summary, questions = {"exact": True}, []
elif args.load:
    model, tokenizer = load_pretrained(args.load)
    model, summary = to_device(model), {"exact": True}
    with open(os.path.join(args.load, "onechat_run.json"), encoding="utf-8") as file:
        questions = [pair["question"] for pair in json.load(file)["pairs"]]
else:
    torch.manual_seed(args.seed)
    model, tokenizer, lr, epochs = get_model(args.size if args.model == "scratch" else args.model, pairs)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"Model {args.model + ' ' + args.size if args.model == 'scratch' else args.model}: {parameters:,} parameters, "
          f"{len(pairs)} pair(s), lr {lr:g}, up to {epochs} epochs, loss on {args.loss}, device {device}")
    summary = train(model, tokenizer, pairs, lr, epochs)
    summary.update(model=args.model, size=args.size, parameters=parameters, lr=lr, loss=args.loss, seed=args.seed)
    if summary["exact"]:
        print(f"Exact answer after {summary['epochs_to_exact']} epochs, {summary['seconds_to_exact']} s of training.")
    else:
        print(f"NOT memorised: after {summary['epochs_run']} epochs greedy decoding still misses an answer or its EOS. "
              f"Try more --epochs or another --lr (now {lr:g}).")
    questions = [q for q, _ in pairs]

if args.prompt is not None or args.chat:
    questions = [as_question(args.prompt)] if args.prompt is not None else []
for question in questions:
    print(f"Question: {question}\nAnswer: {reply(model, tokenizer, question)}")
while args.chat:
    try:
        question = as_question(input("Question: "))
    except (EOFError, KeyboardInterrupt):
        break
    if not question:
        break
    print(f"Answer: {reply(model, tokenizer, question)}", flush=True)

if args.output and not args.load:
    model.save_pretrained(args.output)  # model.safetensors
    tokenizer.save_pretrained(args.output)
    summary["pairs"] = [{"question": q, "answer": a, "generated": reply(model, tokenizer, q)} for q, a in pairs]
    with open(os.path.join(args.output, "onechat_run.json"), "w", encoding="utf-8") as file:
        json.dump(summary, file, ensure_ascii=False, indent=1)
    print(f"Saved the model, its tokenizer and onechat_run.json to {args.output}")
if not summary["exact"] or "ipykernel" not in sys.modules:  # a notebook shows even SystemExit(0) as an error
    sys.exit(0 if summary["exact"] else 2)
