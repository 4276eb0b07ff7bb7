"""Plumbing every script shares. A student can skip this file: there is no machine learning here.

It holds the care a tool needs and a lesson does not: flags and one-line errors (also in a
notebook), devices, data rows with file:line, output folders that never lose a student's files,
atomic saves, checkpoints, Ctrl+C and progress lines. torch and transformers are imported inside
the few functions that need them, so `--help` answers at once.
"""
import argparse
import csv
import difflib
import importlib.util
import io
import json
import os
import re
import shutil
import signal
import sys
import time
import unicodedata
import uuid
import zipfile
from pathlib import Path

# The Ctrl+C handler from before the script: put back on every way out (a notebook needs it).
SIGINT_BEFORE = signal.getsignal(signal.SIGINT)
# torchrun starts one process per GPU; only the first one talks and writes.
RANK = int(os.environ.get("RANK", "0"))


def in_notebook():
    # Pasted into Colab or Jupyter, the script runs inside ipykernel.
    return "ipykernel" in sys.modules


def say(*text):
    """Print once, from the first process."""
    if RANK == 0:
        print(*text, flush=True)


class Refusal(Exception):
    """Bad input, in a notebook: IPython shows _render_traceback_ instead of a traceback."""

    def _render_traceback_(self):
        return [f"error: {self}"]


def fail(message):
    """Bad input: one line `error: ...` on stderr, exit 1, no traceback."""
    release_outputs()
    signal.signal(signal.SIGINT, SIGINT_BEFORE)
    message = str(message)
    if not in_notebook():
        sys.exit(f"error: {message}")
    # A notebook ignores flags: name the defaults to edit on the first screen instead.
    flags = list(dict.fromkeys(re.findall(r"--[a-z][a-z0-9-]*", message)))
    if flags:
        message = re.sub(r"--([a-z][a-z0-9-]*)", r"\1", message)
        message += f" (edit default= of {', '.join(flags)} on the script's first screen)"
    raise Refusal(message) from None


def parse_flags(parser):
    """parser.parse_args, with argparse's errors as one line; in a notebook: the defaults."""
    def error(message):
        # argparse says "argument --lr: ..."; a student reads "--lr ...".
        message = re.sub(r"^argument (\S+/)?(\S+): ", r"\2 ", message)
        fix = f"python {parser.prog} --help lists every flag"
        typo = re.match(r"unrecognized arguments: ([^\s=]+)", message)
        flags = [flag for action in parser._actions for flag in action.option_strings]
        close = difflib.get_close_matches(typo[1], flags, n=1) if typo else []
        if close:
            fix = f"did you mean {close[0]}? ({fix})"
        fail(f"{message}; fix: {fix}")

    parser.error = error
    return parser.parse_args([] if in_notebook() else None)


def between(low, high, kind=float):
    """An argparse type= that takes a kind in [low, high] and says the range otherwise."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = None
        # NaN fails every comparison, so it is refused too.
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"must be between {low:,} and {high:,} (got {text})")
        return value

    parse.__name__ = kind.__name__
    return parse


def pick_device(name):
    """"auto" -> cuda, else mps, else cpu; one line if the named device is missing."""
    import torch
    cuda = torch.cuda.is_available()
    mps = torch.backends.mps.is_available()
    if name == "cuda" and not cuda:
        fail("--device cuda, but no CUDA GPU is visible; fix: on Colab pick "
             "Runtime > Change runtime type > T4 GPU, or --device cpu")
    if name == "mps" and not mps:
        fail("--device mps, but this machine has no Apple GPU; fix: --device cpu")
    if name != "auto":
        return name
    return "cuda" if cuda else "mps" if mps else "cpu"


def pick_load_in(name, device):
    """"auto" -> 4bit on CUDA, none elsewhere; 4/8-bit on a CPU runs, slowly, for checking."""
    if name == "auto":
        name = "4bit" if device == "cuda" else "none"
    if name == "none":
        return name
    # find_spec does not import it: importing bitsandbytes asks the hub on a CPU machine.
    if importlib.util.find_spec("bitsandbytes") is None:
        fail(f"--load-in {name} needs bitsandbytes; "
             "fix: pip install bitsandbytes (or --load-in none)")
    if device == "mps":
        fail(f"--load-in {name} does not run on an Apple GPU; "
             "fix: --load-in none, or --device cpu")
    if device == "cpu":
        say(f"lưu ý: --load-in {name} trên CPU chạy chậm, chỉ để kiểm tra "
            "(slow on a CPU: for checking; a GPU does the real run)")
    return name


def read_rows(source):
    """Yield (where, row) for each row of a .jsonl/.json/.csv file, or of a hub data set."""
    source = str(source)
    path = Path(source)
    if path.is_dir():
        fail(f"{source} is a folder; fix: give the data file inside it")
    if path.suffix not in (".jsonl", ".json", ".csv"):
        if path.exists() or path.suffix:
            fail(f"{source}: can't read this file; fix: use .jsonl, .json or .csv")
        yield from hub_rows(source)
        return
    try:
        raw = path.read_bytes()
        # utf-8-sig: Excel starts its files with a byte-order mark.
        text = raw.decode("utf-8-sig")
    except FileNotFoundError:
        fail(f"{source}: file not found; fix: check the path")
    except UnicodeDecodeError as err:
        utf16 = raw[:2] in (b"\xff\xfe", b"\xfe\xff")
        kind = "UTF-16 text" if utf16 else "not UTF-8 text"
        fail(f"{source}: {kind} (byte {err.start}); fix: save the file as UTF-8")
    # Vietnamese has two spellings of most accents: NFC makes them one.
    text = unicodedata.normalize("NFC", text)
    if path.suffix == ".jsonl":
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                yield f"{source}:{number}", parse_json(line, f"{source}:{number}")
    elif path.suffix == ".json":
        rows = parse_json(text, source)
        rows = rows if isinstance(rows, list) else [rows]
        for number, row in enumerate(rows, 1):
            yield f"{source} item {number}", row
    else:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        for row in reader:
            where = f"{source}:{reader.line_num}"
            # An unquoted comma makes an extra field: the answer would end there.
            if None in row:
                fields = len(reader.fieldnames) + len(row[None])
                fail(f"{where}: {fields} fields but the header has "
                     f"{len(reader.fieldnames)} (more fields than the header); "
                     'fix: put text with commas in double quotes: "Chào bạn, ..."')
            yield where, row


def parse_json(text, where):
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        # A whole .json file: the line of the mistake helps.
        where = where if ":" in where else f"{where}:{err.lineno}"
        fail(f"{where}: not valid JSON ({err.msg}); fix: one JSON object per line "
             "(.jsonl) or a list of objects (.json)")


def hub_rows(name):
    # No extension and no such file: a data set on the Hugging Face hub.
    import datasets
    try:
        rows = datasets.load_dataset(name, split="train")
    except Exception as err:
        fail(f"{name}: file not found, and no hub data set of that name "
             f"({type(err).__name__}); fix: check the path or the hub name")
    for number, row in enumerate(rows, 1):
        yield f"{name} row {number}", row


# ---- output folders: never delete or replace what a run of ours did not make ----
# The marker says a run of ours made the folder, and lists what it wrote there.
MARKER = ".phogpt-run.json"
LOCK = ".phogpt-run.lock"
# Written by the Trainer, or ours by name: temporary, set-aside and backup entries.
OURS = re.compile(r"checkpoint-\d+|runs|\.phogpt-.*")
# Folders this process has claimed: path -> (lock file, made by this run, --overwrite).
claimed = {}


def temp_name(path):
    """A name beside path that is unique to this run: never a user's OUTPUT.partial."""
    path = Path(path)
    unique = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return path.with_name(f".phogpt-{path.name}-{unique}")


def read_marker(folder):
    try:
        return json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def inside(folder, path):
    """True if folder is path or holds it (both as they are on disk)."""
    folder, path = Path(folder).resolve(), Path(path).resolve()
    return folder == path or folder in path.parents


def claim_output(folder, overwrite=False, resume=False, protect=None):
    """Check --output, lock it for this run and mark it ours. protect: {flag: path} it
    must not hold (--model, --adapter, --data). Nothing else changes here: an old run
    makes way later, in make_way(), once the new input is known to be fine."""
    folder = Path(folder)
    if resume and overwrite:
        fail("--resume continues the run in --output and --overwrite replaces it; "
             "fix: pick one")
    # torchrun: the first process checks and locks; the others follow it.
    if RANK != 0:
        return folder
    if folder.exists() and not folder.is_dir():
        fail(f"--output {folder} is a file; fix: give a folder name, e.g. my-adapter")
    if inside(folder, Path.cwd()):
        fail(f"--output {folder} holds the working folder, with your files in it; "
             "fix: give a new folder name, e.g. my-adapter")
    for flag, path in (protect or {}).items():
        if path and Path(path).exists() and inside(folder, path):
            fail(f"--output {folder} holds {flag} {path}, which this run reads; "
                 "fix: pick another --output")
    release_outputs(folder)
    mine = {MARKER, LOCK}
    entries = sorted(set(os.listdir(folder)) - mine) if folder.is_dir() else []
    marker = read_marker(folder)
    if entries and marker is None:
        fail(f"--output {folder} holds files no run of ours made ({entries[0]}, ...); "
             "fix: pick another --output (nothing was changed)")
    listed = set(marker["files"]) if marker else set()
    strangers = [n for n in entries if n not in listed and not OURS.fullmatch(n)]
    if strangers:
        fail(f"--output {folder} holds {strangers[0]}, which no run of ours made; "
             "fix: move it out, or pick another --output")
    if entries and not (overwrite or resume):
        fail(f"--output {folder} already exists; fix: pick another --output, add "
             "--overwrite to replace that run, or --resume to continue it")
    if resume and not entries:
        fail(f"--resume: {folder} does not exist or holds no run; "
             "fix: drop --resume to start afresh")
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    claimed[str(folder)] = (lock(folder), made, overwrite)
    if marker is None:
        script = Path(sys.argv[0]).name if not in_notebook() else "notebook"
        atomic_write(folder / MARKER, json.dumps({"made_by": script, "files": []}))
    return folder


def lock(folder):
    """Lock the folder for this run. The OS frees the lock when the process ends, however
    it ends, so a crash never leaves it stuck."""
    file = open(Path(folder) / LOCK, "a+")
    try:
        if os.name == "nt":
            import msvcrt
            msvcrt.locking(file.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        file.close()
        fail(f"--output {folder} is in use by another run; "
             "fix: wait for it to end, or pick another --output")
    return file


def release_outputs(only=None):
    """Unlock this process's folders (a notebook reruns cells in one process); a folder
    that this run made and left empty goes again."""
    for name in list(claimed):
        if only is not None and name != str(only):
            continue
        file, made, _ = claimed.pop(name)
        file.close()
        folder = Path(name)
        if made and set(os.listdir(folder)) <= {MARKER, LOCK}:
            shutil.rmtree(folder, ignore_errors=True)


def record(path):
    # Whatever we write into a marked folder is listed as ours.
    path = Path(path)
    marker = read_marker(path.parent)
    if marker is None or path.name in marker["files"] or OURS.fullmatch(path.name):
        return
    marker["files"].append(path.name)
    atomic_write(path.parent / MARKER, json.dumps(marker, ensure_ascii=False, indent=1))


def atomic_write(path, data):
    """Write data (text, bytes, or a function given a path) to a unique temporary name,
    then rename it: a kill or a full disk never leaves a half-written file."""
    path = Path(path)
    partial = temp_name(path)
    try:
        if callable(data):
            data(partial)
        elif isinstance(data, str):
            partial.write_text(data, encoding="utf-8")
        else:
            partial.write_bytes(data)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    record(path)


def make_way(folder):
    """With --overwrite, set the previous run aside (under a name of ours, deleted once the
    new run is saved). Call it when the new input is valid and the model is loaded."""
    if RANK != 0 or not claimed.get(str(folder), (0, 0, False))[2]:
        return
    folder = Path(folder)
    aside = temp_name(folder / "previous-run")
    aside.mkdir()
    for name in sorted(set(os.listdir(folder)) - {MARKER, LOCK, aside.name}):
        os.replace(folder / name, aside / name)


def move_in(staging, folder, last="adapter_config.json"):
    """Move every file of staging into folder, `last` last (what the scripts look for), then
    drop what earlier runs set aside. A kill in between leaves files a rerun replaces."""
    staging, folder = Path(staging), Path(folder)
    for path in sorted(staging.iterdir(), key=lambda p: p.name == last):
        os.replace(path, folder / path.name)
        record(folder / path.name)
    staging.rmdir()
    for name in os.listdir(folder):
        if name.startswith(".phogpt-") and name not in (MARKER, LOCK):
            shutil.rmtree(folder / name, ignore_errors=True)


# ---- checkpoints ----
def checkpoint_problem(folder):
    """Why the Trainer can't resume from this checkpoint folder (a file missing or cut short
    by a kill or a full disk), or None."""
    for name in ("optimizer.pt", "scheduler.pt", "trainer_state.json"):
        if not (folder / name).is_file():
            return f"{name} is missing"
    if not any(folder.glob("rng_state*.pth")):
        return "rng_state.pth is missing"
    if not any(folder.glob("*.safetensors")):
        return "the weights are missing"
    for path in sorted(folder.iterdir()):
        cut = f"{path.name} is cut short"
        if path.suffix == ".json":
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError):
                return cut
        # torch.save writes zip files whose directory comes last.
        if path.suffix in (".pt", ".pth") and not zipfile.is_zipfile(path):
            return cut
        if path.suffix == ".safetensors" and not safetensors_complete(path):
            return cut
    return None


def safetensors_complete(path):
    """True if the file holds every byte its header promises."""
    try:
        with open(path, "rb") as file:
            size = int.from_bytes(file.read(8), "little")
            header = json.loads(file.read(size))
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
        return os.path.getsize(path) == 8 + size + max(ends, default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return False


def last_checkpoint(folder):
    """The newest complete checkpoint (a Path, or None) and notes on the cut ones, which
    are set aside: the Trainer would pick them, or keep them over a good one."""
    from transformers.trainer_utils import get_last_checkpoint
    notes = []
    while (newest := get_last_checkpoint(folder)) is not None:
        newest = Path(newest)
        problem = checkpoint_problem(newest)
        if problem is None:
            return newest, notes
        notes.append(f"{newest.name} ({problem})")
        os.replace(newest, temp_name(newest))
    return None, notes


# ---- Ctrl+C and progress during training ----
def on_ctrl_c(then):
    """then: a line to print before exiting 130; signal.SIG_IGN to make Ctrl+C wait (while
    saving); None to put back the handler from before the script."""
    if isinstance(then, str):
        # A notebook keeps its own Ctrl+C: the interrupt button.
        if in_notebook():
            return

        def stop(*_):
            say(then)
            sys.exit(130)

        then = stop
    signal.signal(signal.SIGINT, then or SIGINT_BEFORE)


def ctrl_c_saves():
    """A Trainer callback. The first Ctrl+C finishes the step, saves a checkpoint and stops;
    a second one stops at once. It also saves at the last step, so a final save that fails
    (a full disk, a kill) leaves a checkpoint that --resume only has to save."""
    import torch
    from transformers import TrainerCallback

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
            if self.interrupted:
                control.should_training_stop = True
            if self.interrupted or state.global_step >= state.max_steps:
                control.should_save = True

    callback = SaveOnCtrlC()
    signal.signal(signal.SIGINT, callback.interrupt)
    return callback


def progress_lines(describe, redraw=None, every_s=10):
    """The Trainer's progress bar (with its ETA) and, per log, one line: step, epoch,
    describe(logs) (None: no line), and tokens per second. redraw(history) every few s."""
    from transformers.trainer_callback import ProgressCallback

    class Lines(ProgressCallback):
        clock, tokens, drawn = 0.0, 0, 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            super().on_train_begin(args, state, control, **kwargs)
            self.clock, self.tokens = time.time(), state.num_input_tokens_seen

        def on_prediction_step(self, *args, **kwargs):
            # A second bar flashing at every evaluation helps no one.
            return

        def on_log(self, args, state, control, logs=None, **kwargs):
            text = describe(logs)
            if self.training_bar is None or text is None:
                return
            now = time.time()
            line = f"step {state.global_step}/{state.max_steps} · epoch {state.epoch:.1f}"
            line += f" · {text}"
            if "loss" in logs:
                tokens = state.num_input_tokens_seen or logs.get("num_tokens", 0)
                speed = (tokens - self.tokens) / max(now - self.clock, 1e-6)
                line += f" · {speed:,.0f} tok/s"
                self.tokens = tokens
            self.training_bar.write(line)
            # Time spent evaluating is not training speed.
            self.clock = now
            if redraw and now - self.drawn > every_s:
                redraw(state.log_history)
                self.drawn = now

    return Lines()
