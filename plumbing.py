"""Plumbing every script needs; a student can skip it: flags, one-line errors, devices, data
rows, output folders that never lose a student's files, saves, checkpoints, Ctrl+C, progress."""
import argparse
import csv
import difflib
import importlib.util
import json
import logging
import os
import re
import shutil
import signal
import sys
import time
import unicodedata
import zipfile
from pathlib import Path

import prompts

# Put back on every way out: a notebook needs its own Ctrl+C handler again.
SIGINT_BEFORE = signal.getsignal(signal.SIGINT)
# torchrun starts one process per GPU: only the first one talks and writes.
RANK = int(os.environ.get("RANK", "0"))
# Pasted into Colab or Jupyter, a script runs inside ipykernel: no flags.
NOTEBOOK = "ipykernel" in sys.modules

def say(*text):
    if RANK == 0:
        print(*text, flush=True)

# IPython shows _render_traceback_ instead of "An exception has occurred".
class Refusal(Exception):
    def _render_traceback_(self):
        return [f"error: {self}"]

# Bad input: one line `error: ...` on stderr, exit 1, no traceback.
def fail(message):
    release_outputs()
    signal.signal(signal.SIGINT, SIGINT_BEFORE)
    message = str(message)
    if not NOTEBOOK:
        sys.exit(f"error: {message}")
    # A notebook ignores flags: name the defaults to edit instead.
    flags = list(dict.fromkeys(re.findall(r"--[a-z][a-z0-9-]*", message)))
    if flags:
        message = re.sub(r"--([a-z][a-z0-9-]*)", r"\1", message)
        message += f" (edit default= of {', '.join(flags)} on the script's first screen)"
    raise Refusal(message) from None

# parse_args, errors in one line; in a notebook the defaults are the knobs.
def parse_flags(parser):
    def error(message):
        # argparse says "argument --lr: ..."; a student reads "--lr ...".
        message = re.sub(r"^argument (\S+/)?(\S+): ", r"\2 ", message)
        fix = f"python {parser.prog} --help lists every flag"
        typo = re.match(r"unrecognized arguments: ([^\s=]+)", message)
        flags = [f for action in parser._actions for f in action.option_strings]
        close = difflib.get_close_matches(typo[1], flags, n=1) if typo else []
        fail(f"{message}; fix: " + (f"did you mean {close[0]}?" if close else fix))
    parser.error = error
    return parser.parse_args([] if NOTEBOOK else None)

# An argparse type=: a `kind` in [low, high], or one line with the range.
def between(low, high, kind=float):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = float("nan")
        # NaN fails every comparison: refused too.
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low:,} and {high:,} (got {text})")
        return value
    parse.__name__ = kind.__name__
    return parse

# "auto": cuda, else mps, else cpu. A named device that is missing: one line.
def pick_device(name):
    import torch
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "cuda" and not cuda:
        fail("--device cuda, but no CUDA GPU is visible; fix: --device cpu, or a T4 on Colab")
    if name == "mps" and not mps:
        fail("--device mps, but this machine has no Apple GPU; fix: --device cpu")
    auto = "cuda" if cuda else "mps" if mps else "cpu"
    return auto if name == "auto" else name

# "auto": 4bit on CUDA, none elsewhere. 4/8-bit on a CPU runs, slowly: for checking.
def pick_load_in(name, device):
    name = ("4bit" if device == "cuda" else "none") if name == "auto" else name
    if name == "none":
        return name
    # find_spec does not import it: importing bitsandbytes asks the hub on a CPU.
    if importlib.util.find_spec("bitsandbytes") is None:
        fail(f"--load-in {name} needs bitsandbytes; fix: pip install bitsandbytes")
    if device == "mps":
        fail(f"--load-in {name} does not run on an Apple GPU; fix: --device cpu")
    if device == "cpu":
        # stderr: a chat's stdout holds only the answer.
        print(f"lưu ý: --load-in {name} trên CPU rất chậm, chỉ để kiểm tra; "
              "chạy thật thì dùng GPU", file=sys.stderr)
    return name

# (where, row) for each row of a .jsonl/.json/.csv file (where: file:line) or hub data set.
def read_rows(source):
    source, path = str(source), Path(source)
    if path.is_dir():
        fail(f"{source or '.'} is a folder; fix: give the data file inside it")
    if path.suffix not in (".jsonl", ".json", ".csv"):
        if path.exists() or path.suffix:
            fail(f"{source}: can't read this file; fix: use .jsonl, .json or .csv")
        import datasets
        try:
            rows = datasets.load_dataset(source, split="train")
        except Exception as err:
            fail(f"{source}: no such file or hub data set ({type(err).__name__}); fix: check it")
        yield from ((f"{source} row {n}", row) for n, row in enumerate(rows, 1))
        return
    # A name copied from a Mac may be in NFD on disk: try both spellings.
    spellings = [Path(unicodedata.normalize(form, source)) for form in ("NFD", "NFC")]
    path = next((p for p in [path, *spellings] if p.is_file()), path)
    try:
        # utf-8-sig: Excel starts its files with a byte-order mark.
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        fail(f"{source}: file not found; fix: check the path")
    except OSError as err:
        fail(f"{source}: can't be read ({err.strerror}); fix: give a plain data file")
    except UnicodeDecodeError as err:
        # Notepad's "Unicode" is UTF-16.
        kind = "UTF-16" if err.object[:2] in (b"\xff\xfe", b"\xfe\xff") else "not UTF-8"
        fail(f"{source}: {kind} text (byte {err.start}); fix: save the file as UTF-8")
    # Vietnamese has two spellings of most accents: NFC makes them one.
    lines = prompts.nfc(text).splitlines(keepends=True)
    if path.suffix == ".csv":
        # Excel in a Vietnamese locale separates fields with ';' (',' is decimal).
        semicolons = lines and ";" in lines[0] and "," not in lines[0]
        # A long answer is fine: csv's default cap is 128 KB a field.
        csv.field_size_limit(2**31 - 1)
        reader = csv.DictReader(lines, delimiter=";" if semicolons else ",")
        try:
            for row in reader:
                where = f"{source}:{reader.line_num}"
                # An unquoted comma makes an extra field: the answer would end there.
                if None in row:
                    fields, header = len(row) + len(row[None]) - 1, len(reader.fieldnames)
                    fail(f"{where}: {fields} fields but the header has {header} (more "
                         'fields than the header); fix: put text with commas in "quotes"')
                yield where, checked_text(row, where)
        except csv.Error as err:
            fail(f"{source}:{reader.line_num + 1}: {err}; fix: save it again as CSV UTF-8")
        return
    chunks = enumerate(lines, 1) if path.suffix == ".jsonl" else [(0, "".join(lines))]
    for number, chunk in chunks:
        where = f"{source}:{number or 1}"
        try:
            rows = [json.loads(chunk, object_pairs_hook=one_of_each)] if chunk.strip() else []
        except json.JSONDecodeError as err:
            fail(f"{source}:{number or err.lineno}: not valid JSON ({err.msg}); fix: one "
                 "object per line (.jsonl), a list of objects (.json)")
        except RecursionError:
            fail(f"{where}: brackets nested too deeply; fix: one flat object per row")
        except ValueError as err:
            fail(f"{where}: {err}")
        if number == 0 and rows and isinstance(rows[0], list):
            rows = rows[0]
        for item, row in enumerate(rows, 1):
            where = f"{source}:{number}" if number else f"{source} item {item}"
            yield where, checked_text(row, where)

# json.loads keeps the last of two equal keys without a word: refuse instead.
def one_of_each(pairs):
    keys = [key for key, _ in pairs]
    twice = [key for key in keys if keys.count(key) > 1]
    if twice:
        raise ValueError(f"field '{twice[0]}' appears twice; fix: keep one of them")
    return dict(pairs)

# Every text in a row, checked; only invisible characters count as empty.
def checked_text(value, where):
    if isinstance(value, dict):
        return {key: checked_text(item, where) for key, item in value.items()}
    if isinstance(value, list):
        return [checked_text(item, where) for item in value]
    if not isinstance(value, str):
        return value
    # "\ud83d" alone in JSON is half an emoji: it can't be encoded, nor trained.
    bad = re.search(r"[\ud800-\udfff\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", value)
    if bad:
        what = "half a character" if bad[0] >= "\ud800" else "a control character"
        fail(f"{where}: {what} (U+{ord(bad[0]):04X}) in the text; fix: delete it")
    if value and all(char.isspace() or prompts.is_invisible(char) for char in value):
        return ""
    return value

# No code from the hub, and bitsandbytes only to load in 4 or 8 bits: call this
# before importing transformers, peft, trl or datasets.
def keep_hub_code_out(load_in="none", cuda=False):
    # transformers fetches compiled "kernels" from the hub: code nobody reviewed.
    os.environ.setdefault("USE_HUB_KERNELS", "NO")
    # trl reports each training run to the hub unless told not to.
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    quantised = load_in in ("4bit", "8bit") or (load_in == "auto" and cuda)
    # None in sys.modules makes `import name` fail: peft and trl carry on without.
    for name in ["kernels"] + ([] if quantised else ["bitsandbytes"]):
        sys.modules.setdefault(name, None)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

# ---- output folders: never delete or replace what a run of ours did not make ----
# The marker says a run of ours made the folder and lists what it wrote there.
MARKER, LOCK = ".phogpt-run.json", ".phogpt-run.lock"
# Also ours: the Trainer's checkpoints and logs, and our temporary names.
OURS = re.compile(r"checkpoint-\d+|runs|\.phogpt-.*")
# Folders this process holds: path -> (lock file, made by this run, --overwrite).
claimed = {}
# Where make_way put each folder's previous run, until the new one moves in.
set_aside = {}

# A name unique to this run, never a fixed OUTPUT.partial a student may own.
def temp_name(path):
    return Path(path).with_name(f".phogpt-{Path(path).name}-{os.getpid()}-{os.urandom(4).hex()}")

def read_json(path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None

# Check --output, lock it, mark it ours. protect: {flag: path} it must not hold.
# Nothing is removed here: an old run makes way later, once the input is valid.
def claim_output(folder, overwrite=False, resume=False, protect=None):
    folder = Path(folder)
    if resume and overwrite:
        fail("--resume continues the run in --output, --overwrite replaces it; fix: pick one")
    # torchrun: the first process checks and locks, the others follow it.
    if RANK != 0:
        return folder
    if folder.exists() and not folder.is_dir():
        fail(f"--output {folder} is a file; fix: give a folder name, e.g. my-adapter")
    for flag, path in {"the working folder": Path.cwd(), **(protect or {})}.items():
        if path and Path(path).exists() and Path(path).resolve().is_relative_to(folder.resolve()):
            fail(f"--output {folder} holds {flag} {path}; fix: pick another --output")
    # A notebook reruns a cell in one process: the lock of its last run goes first.
    release_outputs(folder)
    names = sorted(set(os.listdir(folder)) - {MARKER, LOCK}) if folder.is_dir() else []
    marker = read_json(folder / MARKER)
    listed = marker["files"] if marker else []
    strangers = [n for n in names if n not in listed and not OURS.fullmatch(n)]
    if strangers or (names and marker is None):
        fail(f"--output {folder} holds {(strangers or names)[0]}, which no run of ours "
             "made; fix: pick another --output (nothing was changed)")
    # A folder of ours may be in use by a run right now: that is said first.
    if marker:
        claimed[str(folder)] = (lock(folder), False, overwrite)
    if names and not (overwrite or resume):
        fail(f"--output {folder} already exists; fix: pick another --output, add "
             "--overwrite to replace that run, or --resume to continue it")
    if resume and not names:
        fail(f"--resume: {folder} does not exist or holds no run; fix: drop --resume")
    made = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        claimed[str(folder)] = claimed.get(str(folder)) or (lock(folder), made, overwrite)
        if marker is None:
            atomic_write(folder / MARKER, json.dumps({"made_by": sys.argv[0], "files": []}))
    except OSError as err:
        fail(f"--output {folder} can't be written ({err.strerror}); fix: pick another")
    return folder

# The OS frees the lock when the process ends, however it ends.
def lock(folder):
    file = open(Path(folder) / LOCK, "a+")
    try:
        import fcntl
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:
        # Windows has no flock: there, two runs at once are up to the student.
        pass
    except OSError:
        file.close()
        fail(f"--output {folder} is in use by another run; fix: wait, or pick another")
    return file

# Unlock this process's folders. A run that wrote nothing there (an error, Ctrl+C)
# puts back the run it set aside; a folder it made and left empty goes again.
def release_outputs(only=None):
    for name in [n for n in claimed if only is None or n == str(only)]:
        file, made, _ = claimed.pop(name)
        aside = set_aside.pop(name, None)
        written = [n for n in os.listdir(name) if not n.startswith(".phogpt-")]
        if aside and not written:
            for path in aside.iterdir():
                os.replace(path, Path(name, path.name))
            shutil.rmtree(aside, ignore_errors=True)
        file.close()
        if made and all(n.startswith(".phogpt-") for n in os.listdir(name)):
            shutil.rmtree(name, ignore_errors=True)

# What we write into a marked folder is listed there as ours.
def record(path):
    path = Path(path)
    marker = read_json(path.parent / MARKER)
    if marker is None or path.name in marker["files"] or OURS.fullmatch(path.name):
        return
    marker["files"].append(path.name)
    atomic_write(path.parent / MARKER, json.dumps(marker, ensure_ascii=False))

# A write that failed for lack of space, in any library's words (a GGUF: numpy's).
def disk_full(err):
    signs = ("os error 28", "os error 27", "No space left", "failed writing", "unexpected pos",
             "requested and")
    full = isinstance(err, OSError) and err.errno in (28, 27, 122)
    return full or any(sign in str(err) for sign in signs)

# Write text, bytes (or call a function given the path) under a unique name, then rename:
# a kill or a full disk never leaves half a file under the real name.
def atomic_write(path, data):
    path, partial = Path(path), temp_name(path)
    try:
        if callable(data):
            data(partial)
        else:
            partial.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    record(path)

# --overwrite: set the previous run aside, once the input is valid and the model
# loaded (a typo never costs it). Our temporary names (a staging folder) stay.
def make_way(folder):
    if RANK != 0 or not claimed.get(str(folder), (0, 0, False))[2]:
        return
    aside = temp_name(Path(folder, "previous-run"))
    aside.mkdir()
    set_aside[str(folder)] = aside
    for name in os.listdir(folder):
        if not name.startswith(".phogpt-"):
            os.replace(Path(folder, name), aside / name)

# Move staging's files into folder, `last` last: the scripts look for it, so the
# folder never looks finished before it is. What was set aside then goes.
def move_in(staging, folder, last="adapter_config.json"):
    for path in sorted(Path(staging).iterdir(), key=lambda p: p.name == last):
        os.replace(path, Path(folder, path.name))
        record(Path(folder, path.name))
    Path(staging).rmdir()
    set_aside.pop(str(folder), None)
    for name in set(os.listdir(folder)) - {MARKER, LOCK}:
        if name.startswith(".phogpt-"):
            shutil.rmtree(Path(folder, name), ignore_errors=True)

# ---- checkpoints: one definition of complete ----
# Why the Trainer can't resume from this folder (a file missing or cut short), or None.
def checkpoint_problem(folder):
    for name in ("optimizer.pt", "scheduler.pt", "trainer_state.json", "rng_state*.pth"):
        if not any(folder.glob(name)):
            return f"{name.replace('*', '')} is missing"
    for path in sorted(folder.iterdir()):
        if path.suffix in (".pt", ".pth", ".json", ".safetensors") and not whole(path):
            return f"{path.name} is cut short"

# A .json that parses, a torch.save zip (its directory is written last), a .safetensors
# with every byte its header promises.
def whole(path):
    try:
        if path.suffix in (".pt", ".pth"):
            return zipfile.is_zipfile(path)
        if path.suffix == ".json":
            return json.loads(path.read_text(encoding="utf-8")) is not None
        from safetensors import safe_open
        with safe_open(path, "numpy"):
            return True
    except Exception:
        return False

# The newest complete checkpoint (or None), and notes on cut ones. Those are set
# aside: the Trainer would resume from them, or keep them over a good one.
def last_checkpoint(folder):
    from transformers.trainer_utils import get_last_checkpoint
    notes = []
    while (newest := get_last_checkpoint(folder)) is not None:
        problem = checkpoint_problem(Path(newest))
        if problem is None:
            return Path(newest), notes
        notes.append(f"{Path(newest).name} ({problem})")
        os.replace(newest, temp_name(newest))
    return None, notes

# ---- Ctrl+C and progress while training ----
# then: a line to print before exiting 130; signal.SIG_IGN: Ctrl+C waits (while
# saving); None: the handler from before the script comes back.
def on_ctrl_c(then):
    if isinstance(then, str):
        # A notebook keeps its own Ctrl+C: the interrupt button.
        if NOTEBOOK:
            return
        line, then = then, lambda _, frame: stop_now(line, frame)
    signal.signal(signal.SIGINT, then or SIGINT_BEFORE)

# Say why and end. Ctrl+C can land inside a __del__, where Python would swallow
# SystemExit (printing a traceback) and go on: there, end the process at once.
def stop_now(line, frame=None):
    release_outputs()
    signal.signal(signal.SIGINT, SIGINT_BEFORE)
    say(line)
    while frame is not None:
        if frame.f_code.co_name == "__del__":
            sys.stderr.flush()
            os._exit(130)
        frame = frame.f_back
    sys.exit(130)

# The Trainer's progress bar (with its ETA) and per log one line: step, epoch,
# describe(logs) (None: no line), tokens/s; redraw(history) every 10 s.
def progress_lines(describe, redraw=None):
    from transformers.trainer_callback import ProgressCallback
    class Lines(ProgressCallback):
        clock, tokens, drawn = 0.0, 0, 0.0
        def on_train_begin(self, args, state, control, **kwargs):
            super().on_train_begin(args, state, control, **kwargs)
            self.clock, self.tokens = time.time(), state.num_input_tokens_seen
        # A second bar flashing at every evaluation helps no one.
        def on_prediction_step(self, *args, **kwargs):
            return
        def on_log(self, args, state, control, logs=None, **kwargs):
            text, now = describe(logs), time.time()
            if self.training_bar is None or text is None:
                return
            if "loss" in logs:
                tokens = state.num_input_tokens_seen or logs.get("num_tokens", 0)
                speed = (tokens - self.tokens) / max(now - self.clock, 1e-6)
                text, self.tokens = f"{text} · {speed:,.0f} tok/s", tokens
            self.training_bar.write(f"step {state.global_step}/{state.max_steps} · "
                                    f"epoch {state.epoch:.1f} · {text}")
            # Time spent evaluating is not training speed.
            self.clock = now
            if redraw and now - self.drawn > 10:
                redraw(state.log_history)
                self.drawn = now
    return Lines()

# ---- one training run, the same in every script: resume, train, save ----
# A field of a data row: text, not empty, in NFC (hub rows are not normalised).
def text_field(row, field, where, fix):
    value = row.get(field)
    if not isinstance(value, str) or not value.strip():
        problem = "missing" if value is None else "empty or not text"
        fail(f"{where}: field '{field}' is {problem}; fix: {fix}")
    return prompts.nfc(value)

# --resume continues the run of these settings (run.json), never another. "x_sha256"
# compares the content of "x": a moved file is the same data. Returns steps done.
def same_run(folder, last, settings, total_steps):
    before = (read_json(Path(folder) / "run.json") or {}) if last else {}
    for key, value in settings.items():
        if f"{key}_sha256" in settings or before.get(key, value) == value:
            continue
        name = key.removesuffix("_sha256")
        now = settings[name] if settings[name] != before[name] else "its edited contents"
        fail(f"--resume: this run trained with {name} {before[name]}, not {now}; fix: resume "
             "with the same flags and data, or start afresh with --overwrite")
    done = read_json(Path(last) / "trainer_state.json")["global_step"] if last else 0
    if done >= total_steps and (Path(folder) / "adapter_config.json").exists():
        fail(f"--resume: {Path(last).name} already reached step {done} of {total_steps}; "
             "fix: raise --epochs (or --max-steps) to train longer, or drop --resume")
    return done

# Train, from the last checkpoint if any; only now does an old run make way.
# finished: only the final save failed, so the last checkpoint is loaded.
def train(trainer, folder, settings, last, finished):
    import torch
    from transformers import TrainerCallback
    make_way(folder)
    if RANK == 0:
        atomic_write(Path(folder) / "run.json", json.dumps(settings, ensure_ascii=False))
    # The first Ctrl+C finishes the step, saves and stops; a second stops at once. The
    # last step is saved too: if the final save fails, --resume finds training done.
    class SaveOnCtrlC(TrainerCallback):
        interrupted = False
        def interrupt(self, *_):
            self.interrupted = True
            # torchrun forwards its own Ctrl+C: there a second one must not cut the save.
            if not torch.distributed.is_initialized():
                signal.signal(signal.SIGINT, signal.default_int_handler)
        def on_step_end(self, args, state, control, **kwargs):
            # All processes stop after the same step, or one waits for the others forever.
            if torch.distributed.is_initialized():
                flag = torch.tensor([float(self.interrupted)], device=args.device)
                torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
                self.interrupted = bool(flag.item())
            control.should_training_stop |= self.interrupted
            control.should_save |= self.interrupted or state.global_step >= state.max_steps
    stop = SaveOnCtrlC()
    signal.signal(signal.SIGINT, stop.interrupt)
    trainer.add_callback(stop)
    try:
        if not finished:
            trainer.train(resume_from_checkpoint=str(last) if last else None)
        else:
            from peft import load_peft_weights, set_peft_model_state_dict
            from transformers import TrainerState
            set_peft_model_state_dict(trainer.model, load_peft_weights(str(last), "cpu"))
            trainer.state = TrainerState.load_from_json(str(Path(last) / "trainer_state.json"))
    except KeyboardInterrupt:
        stop_now(f"stopped by a second Ctrl+C; {folder} keeps its last checkpoint (--resume)")
    except torch.OutOfMemoryError:
        fail("out of GPU memory; fix: halve --batch-size, or lower --max-length")
    except Exception as err:
        if not disk_full(err):
            raise
        again = "--resume" if last_checkpoint(folder)[0] else "--overwrite"
        fail(f"could not write a checkpoint in {folder} (the disk is full); "
             f"fix: free some disk space, then rerun with {again}")
    finally:
        # A run that stops early leaves its bar open: what follows gets its own line.
        for callback in trainer.callback_handler.callbacks:
            if getattr(callback, "training_bar", None) is not None:
                callback.training_bar.close()
    # While saving, Ctrl+C waits: a half-saved adapter would look finished.
    on_ctrl_c(signal.SIG_IGN)
    if stop.interrupted and trainer.state.global_step < trainer.state.max_steps:
        stop_now(f"stopped by Ctrl+C at step {trainer.state.global_step}; rerun with --resume")
    # torchrun: only the first process saves and reports; no collective calls after this.
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
        if RANK != 0:
            sys.stdout.flush()
            sys.stderr.flush()
            # A normal exit can abort in the process group's C++ teardown.
            os._exit(0)

# Save the adapter, its tokenizer and files ({name: text}) under a name of this
# run, then move them in. A full disk: --resume then only saves.
def save_adapter(model, tokenizer, folder, files=None, **kwargs):
    staging = temp_name(Path(folder) / "adapter")
    try:
        model.save_pretrained(staging, **kwargs)
        tokenizer.save_pretrained(staging)
        # peft's own README.md is an empty template: the script writes the card.
        (staging / "README.md").unlink(missing_ok=True)
        for name, text in (files or {}).items():
            (staging / name).write_text(text, encoding="utf-8")
        move_in(staging, folder)
    except Exception as err:
        if not disk_full(err):
            raise
        fail(f"could not save the adapter in {folder} (the disk is full); fix: free some "
             "disk space, then rerun with --resume (it only saves)")
