"""Chat with PhoGPT (plus your LoRA adapter) in the terminal or in a Gradio web page.

    python phogpt_chat.py --adapter out/phogpt-lora        # terminal chat, answers stream
    python phogpt_chat.py --prompt "Xin chào"              # answer once and exit (piped stdin works too)
    python phogpt_chat.py --adapter out/phogpt-lora --ui   # web page on http://127.0.0.1:7860

Commands in the terminal: /reset, /undo, /save FILE, /exit. Ctrl+C stops an answer, Ctrl+D quits.
"""
import argparse
import json
import logging
import os
import socket
import sys
import time
import warnings

import torch

import prompts

warnings.filterwarnings("ignore", category=FutureWarning)  # the libraries' deprecation notices are for us, not students
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # its hint about an optional CPU kernel package

parser = argparse.ArgumentParser(description="Multi-turn chat with PhoGPT, in the terminal or a Gradio page.",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
# model
parser.add_argument("--model", default=None, help="hub id or local folder (a merged model folder works too); "
                    "default: the --adapter's base model, else vinai/PhoGPT-4B-Chat")
parser.add_argument("--adapter", default=None, help="LoRA adapter folder written by phogpt_qlora.py --output")
parser.add_argument("--load-in", default="auto", choices=["auto", "4bit", "8bit", "none"], help="auto: 4bit (nf4) on CUDA, none elsewhere")
parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (the dtype follows: fp16 on a T4, bf16 on newer GPUs, fp32 on CPU)")
parser.add_argument("--template", default="auto", choices=["auto", "chat", "instruct"], help="auto: 4B-Chat template if the tokenizer has it, else 7B5-Instruct")
# conversation
parser.add_argument("--system", default="", help="instructions for the whole chat; prepended to the first question kept in the prompt")
parser.add_argument("--max-length", type=int, default=None, help="context in tokens, prompt + answer (default: the model's max_seq_len, 8192 for 4B)")
# sampling: VinAI's README uses do_sample, temperature 1.0, top_k 50, top_p 0.9, max_new_tokens 1024
parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (deterministic)")
parser.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling: keep the smallest set of tokens with this much probability")
parser.add_argument("--top-k", type=int, default=50, help="sample among the k most likely tokens (0 = all)")
parser.add_argument("--repetition-penalty", type=float, default=1.0, help=">1 discourages repeating tokens already in the chat")
parser.add_argument("--max-new-tokens", type=int, default=1024, help="longest answer, in tokens")
parser.add_argument("--seed", type=int, default=1337, help="random seed: the same seed and input give the same answers")
# modes
parser.add_argument("--prompt", default=None, help="answer this one question and exit (stdin is read when piped)")
parser.add_argument("--ui", action="store_true", help="start the Gradio web page instead of the terminal chat")
parser.add_argument("--port", type=int, default=7860, help="web page port (it listens on 127.0.0.1 only)")
parser.add_argument("--share", action="store_true", help="also publish a temporary public gradio.live link (opt-in)")
parser.add_argument("--auth", default=None, help="user:pass required to open the web page")
# speed
parser.add_argument("--stats", action="store_true", help="print tok/s and time to first token after each answer")
parser.add_argument("--compile", action="store_true", help="GPU fast path: static KV cache + torch.compile (CUDA graphs); "
                    "the first answer waits for compilation")


def fit_history(tokenizer, messages, budget, template="chat", system="", first=0):
    """Token ids of the prompt for messages (ending with a question) in at most budget tokens.

    Drops the oldest question/answer pairs first, starting from messages[first:] (so an earlier
    cut stays put and the KV cache of the kept turns stays valid). Returns (ids, first);
    raises ValueError when the last question alone does not fit.
    """
    while True:
        text = prompts.generation_prompt(messages[first:], tokenizer.eos_token, template, system)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]  # as phogpt_qlora.py tokenises
        if len(ids) <= budget:
            return ids, first
        if len(messages) - first <= 1:
            raise ValueError(f"the question is {len(ids)} tokens; at most {budget} fit (lower --max-new-tokens)")
        first += 2


@torch.inference_mode()  # on a generator, torch enters the mode around each step (gradio may switch threads)
def stream_answer(model, tokenizer, prompt_ids, state, stop, temperature=1.0, top_p=0.9, top_k=50,
                  repetition_penalty=1.0, max_new_tokens=1024):
    """Generate an answer to prompt_ids, yielding its text piece by piece.

    state = {"cache": DynamicCache or None, "ids": token ids the cache holds} carries the KV cache
    from turn to turn: only the tokens after the common prefix are encoded. With state["static"] = n
    the cache is a StaticCache of n tokens and state["step"] (e.g. torch.compile(model)) decodes
    one token at a time on it, the fast path for a GPU. Stops at EOS or at
    the stop string, which is never yielded (a possible start of it is held back until it is not).
    Leaves {"tokens", "prompt", "reused", "first_token_s", "seconds"} in state["stats"].
    """
    from transformers import (DynamicCache, LogitsProcessorList, RepetitionPenaltyLogitsProcessor, StaticCache,
                              TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)
    from phogpt_model import CACHE_NAME
    start = time.perf_counter()
    warpers = LogitsProcessorList()  # same order as transformers' generate()
    if repetition_penalty != 1.0:
        warpers.append(RepetitionPenaltyLogitsProcessor(repetition_penalty))
    if temperature > 0:
        warpers.append(TemperatureLogitsWarper(temperature))
        if top_k > 0:
            warpers.append(TopKLogitsWarper(top_k))
        if top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p))
    reused = 0  # length of the common prefix; keep at least one new token to get logits from
    while reused < min(len(state["ids"]), len(prompt_ids) - 1) and state["ids"][reused] == prompt_ids[reused]:
        reused += 1
    if state["cache"] is None:
        state["cache"] = (StaticCache(config=model.config, max_cache_len=state["static"]) if state.get("static")
                          else DynamicCache(config=model.config))
    if reused < len(state["ids"]) and state.get("static"):  # roll back: keys past the position are masked
        for layer in state["cache"].layers:
            layer.cumulative_length.fill_(reused)
    elif reused < len(state["ids"]):
        state["cache"].crop(reused - len(state["ids"]))  # transformers 5: crop(-number of tokens to drop)
    state["ids"] = prompt_ids[:reused]
    device = next(model.parameters()).device
    all_ids = torch.tensor([prompt_ids], device=device)
    new_ids, answer_ids, shown, first_token_s = prompt_ids[reused:], [], "", None
    for _ in range(max_new_tokens):
        forward = state["step"] if len(new_ids) == 1 and state.get("step") is not None else model  # prefill: eager
        logits = forward(input_ids=torch.tensor([new_ids], device=device), **{CACHE_NAME: state["cache"]},
                         use_cache=True, logits_to_keep=1).logits[:, -1, :].float()
        state["ids"] = state["ids"] + new_ids
        logits = warpers(all_ids, logits)
        if temperature > 0:
            token = torch.multinomial(torch.softmax(logits, dim=-1), 1)[0, 0].item()
        else:
            token = logits.argmax(dim=-1)[0].item()
        first_token_s = first_token_s or time.perf_counter() - start
        if token == tokenizer.eos_token_id:
            break
        answer_ids.append(token)
        all_ids = torch.cat([all_ids, torch.tensor([[token]], device=device)], dim=1)
        new_ids = [token]
        raw = tokenizer.decode(answer_ids, skip_special_tokens=True)
        if stop in raw:
            raw = raw[:raw.index(stop)]
            break
        hold = next((k for k in range(min(len(stop) - 1, len(raw)), 0, -1) if raw.endswith(stop[:k])), 0)
        visible = raw[:len(raw) - hold].lstrip().rstrip("\ufffd")  # \ufffd: half a UTF-8 character
        if len(visible) > len(shown):
            yield visible[len(shown):]
            shown = visible
    visible = raw.lstrip().rstrip("\ufffd") if answer_ids else ""
    if len(visible) > len(shown):
        yield visible[len(shown):]
    state["stats"] = {"tokens": len(answer_ids), "prompt": len(prompt_ids), "reused": reused,
                      "first_token_s": first_token_s or 0.0, "seconds": time.perf_counter() - start}


def stats_line(stats):
    decode_s = stats["seconds"] - stats["first_token_s"]
    speed = (stats["tokens"] - 1) / decode_s if stats["tokens"] > 1 and decode_s > 0 else 0.0
    return (f"[{stats['tokens']} tokens, {speed:.1f} tok/s, first token {1000 * stats['first_token_s']:.0f} ms, "
            f"prompt {stats['prompt']} tokens ({stats['reused']} reused from the KV cache)]")


if __name__ == "__main__":
    args = parser.parse_args([] if "ipykernel" in sys.modules else None)

    def fail(message):
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)

    # check everything cheap before loading gigabytes
    device = args.device if args.device != "auto" else (
        "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu")
    if device.split(":")[0] == "cuda" and not torch.cuda.is_available():
        fail(f"--device {device} but PyTorch sees no CUDA GPU: use --device auto (or cpu)")
    load_in = args.load_in if args.load_in != "auto" else ("4bit" if device.startswith("cuda") else "none")
    if load_in != "none" and not device.startswith("cuda"):
        fail(f"--load-in {load_in} needs a CUDA GPU (bitsandbytes); on this machine use --load-in none")
    has = lambda name: os.path.exists(os.path.join(args.adapter, name))  # noqa: E731
    if args.adapter and not has("adapter_config.json"):
        if not has("config.json"):  # not a merged model either
            fail(f"no adapter_config.json in {args.adapter}: pass the --output folder of phogpt_qlora.py")
        print(f"{args.adapter} holds a full (merged) model: loading it as --model", file=sys.stderr)
        args.model, args.adapter = args.adapter, None
    if args.adapter and not (has("adapter_model.safetensors") or has("adapter_model.bin")):
        fail(f"no adapter_model.safetensors in {args.adapter}: the adapter is incomplete, train it again")
    trained_on = None  # the base the adapter was trained on, as phogpt_qlora.py saved it
    if args.adapter:
        try:
            with open(os.path.join(args.adapter, "adapter_config.json"), encoding="utf-8") as f:
                trained_on = json.load(f).get("base_model_name_or_path")
        except (ValueError, AttributeError):
            fail(f"{args.adapter}/adapter_config.json is not valid: the adapter is damaged, train it again")
    args.model = args.model or trained_on or "vinai/PhoGPT-4B-Chat"
    if args.auth and ":" not in args.auth:
        fail("--auth takes user:pass, for example --auth lan:matkhau")
    if args.ui:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will: a listener still fails
            try:
                probe.bind(("127.0.0.1", args.port))
            except OSError:
                fail(f"port {args.port} is already in use: pass --port {args.port + 1} or stop the other program")
    if args.temperature < 0 or args.repetition_penalty <= 0 or not 0 < args.top_p <= 1 or args.max_new_tokens < 1:
        fail("need --temperature >= 0, --repetition-penalty > 0, 0 < --top-p <= 1 and --max-new-tokens >= 1")
    question = args.prompt
    if question is None and not args.ui and not sys.stdin.isatty() and "ipykernel" not in sys.modules:
        question = sys.stdin.read()  # piped input: one question, possibly several lines
    if question is not None and not question.strip():
        fail("the question is empty: pass --prompt \"...\" or pipe some text")

    from phogpt_model import load_phogpt, pick_dtype
    dtype = pick_dtype(device)  # bf16 on recent GPUs, fp16 on a T4, fp32 on CPU/MPS
    print(f"loading {args.model} ({load_in}, {str(dtype)[6:]}, {device})" +
          (f" + adapter {args.adapter}" if args.adapter else ""), file=sys.stderr)
    try:
        model, tokenizer = load_phogpt(args.model, load_in=load_in, dtype=dtype, device_map={"": device})
    except (ValueError, OSError) as err:
        fail(err)
    if args.adapter:
        from peft import PeftModel
        trained_on = trained_on or "?"
        try:
            model = PeftModel.from_pretrained(model, args.adapter)
        except (RuntimeError, ValueError, KeyError):  # peft: "size mismatch for ...lora_A..."
            fail(f"the adapter in {args.adapter} was trained on another base model ({trained_on}), its shapes "
                 f"do not fit {args.model}: pass --model {trained_on}")
        if os.path.basename(os.path.normpath(trained_on)) != os.path.basename(os.path.normpath(args.model)):
            print(f"note: the adapter was trained on {trained_on}, now used on {args.model}", file=sys.stderr)
        if load_in == "none":
            model = model.merge_and_unload()  # plain weights again: no LoRA cost per token
    model.eval()
    torch.manual_seed(args.seed)
    context = args.max_length or model.config.max_seq_len
    if args.max_new_tokens > context // 2:
        print(f"note: --max-new-tokens {args.max_new_tokens} lowered to {context // 2}, half the "
              f"{context}-token context, to leave room for the conversation", file=sys.stderr)
        args.max_new_tokens = context // 2
    template = args.template if args.template != "auto" else ("chat" if tokenizer.chat_template else "instruct")
    stop = prompts.STOP_STRINGS[template]
    system = prompts.nfc(args.system).strip()
    state = {"cache": None, "ids": [], "dropped": []}  # KV cache, the ids it holds, turns cut from the prompt
    if args.compile:
        state.update(static=context, step=torch.compile(model, mode="reduce-overhead", dynamic=False))

    def prompt_for(messages, max_new_tokens, notify):
        """Prompt ids for messages, dropping the oldest turns to fit the context (and saying so)."""
        dropped = state["dropped"]  # keep an earlier cut while the chat goes on, so the KV cache stays valid
        first = len(dropped) if messages[:len(dropped)] == dropped and len(messages) > len(dropped) else 0
        ids, first_now = fit_history(tokenizer, messages, context - max_new_tokens, template, system, first)
        state["dropped"] = messages[:first_now]
        if first_now > first:
            notify(f"(dropped the {first_now // 2} oldest turn(s) so the prompt and a {max_new_tokens}-token "
                   f"answer fit the {context}-token context)")
        return ids

    sampling = dict(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                    repetition_penalty=args.repetition_penalty, max_new_tokens=args.max_new_tokens)

    if question is not None:  # one-shot: only the answer goes to stdout
        try:
            ids = prompt_for([{"role": "user", "content": prompts.nfc(question)}], args.max_new_tokens, print)
            for piece in stream_answer(model, tokenizer, ids, state, stop, **sampling):
                print(piece, end="", flush=True)
        except ValueError as err:
            fail(err)
        except KeyboardInterrupt:
            sys.exit(130)
        print()
        if args.stats:
            print(stats_line(state["stats"]), file=sys.stderr)
        sys.exit(0)

    if args.ui:
        os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before importing gradio: no telemetry
        os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
        import gradio as gr

        def respond(message, history, temperature, top_p, top_k, repetition_penalty, max_new_tokens):
            """Answer message after history (a list of {"role", "content"} dicts), streaming the text."""
            if not message.strip():
                return
            text = lambda c: c if isinstance(c, str) else " ".join(p.get("text", "") for p in c)  # noqa: E731
            messages = [{"role": m["role"], "content": prompts.nfc(text(m["content"]))} for m in history
                        if m["role"] in ("user", "assistant")] + [{"role": "user", "content": prompts.nfc(message)}]
            try:
                ids = prompt_for(messages, int(max_new_tokens), gr.Info)
            except ValueError as err:
                raise gr.Error(str(err))
            answer = ""
            for piece in stream_answer(model, tokenizer, ids, state, stop, temperature=temperature, top_p=top_p,
                                       top_k=int(top_k), repetition_penalty=repetition_penalty,
                                       max_new_tokens=int(max_new_tokens)):
                answer += piece
                yield answer
            if args.stats:
                print(stats_line(state["stats"]), file=sys.stderr)

        sliders = [
            gr.Slider(0.0, 2.0, value=args.temperature, step=0.05, label="temperature (0 = greedy)"),
            gr.Slider(0.05, 1.0, value=args.top_p, step=0.05, label="top-p"),
            gr.Slider(0, 200, value=args.top_k, step=1, label="top-k (0 = all)"),
            gr.Slider(1.0, 2.0, value=args.repetition_penalty, step=0.05, label="repetition penalty"),
            gr.Slider(1, context // 2, value=args.max_new_tokens, step=1, label="max new tokens"),
        ]
        examples = ["Xin chào, bạn là ai?", "Viết bài văn nghị luận xã hội về an toàn giao thông",
                    "Sửa lỗi chính tả:\nTriệt phá băng nhóm kướp ô tô, sử dụng \"vũ khí nóng\"",
                    "Hà Nội có những món ăn nào nổi tiếng?"]
        demo = gr.ChatInterface(
            respond, additional_inputs=sliders, additional_inputs_accordion="Tham số sinh văn bản (sampling)",
            examples=[[e] + [s.value for s in sliders] for e in examples], cache_examples=False,
            title="PhoGPT chat", analytics_enabled=False,
            description=f"{args.model}" + (f" + {args.adapter}" if args.adapter else "") +
                        ". Nút 🗑 xoá hội thoại (reset); the 🗑 button starts over.")
        auth = tuple(args.auth.split(":", 1)) if args.auth else None
        print(f"web page on http://127.0.0.1:{args.port} (Ctrl+C stops it" +
              ("; a public link follows)" if args.share else "; --share gives a public link)"), flush=True)
        try:
            demo.launch(server_name="127.0.0.1", server_port=args.port, share=args.share, auth=auth,
                        inbrowser=False, ssr_mode=False, quiet=not args.share)
        except OSError as err:
            fail(f"cannot listen on 127.0.0.1:{args.port} ({err}): pass another --port")
        sys.exit(0)

    # terminal chat
    print(f"PhoGPT chat: {args.model}" + (f" + {args.adapter}" if args.adapter else "") +
          ". Commands: /reset /undo /save FILE /exit. Ctrl+C stops an answer, Ctrl+D quits.")
    try:
        import readline  # noqa: F401  (arrow keys and history in input())
    except ImportError:
        pass
    history = []
    while True:
        try:
            line = prompts.nfc(input("\nBạn: ")).strip()
        except EOFError:
            print()
            break
        except KeyboardInterrupt:
            print("\n(Ctrl+D or /exit quits)")
            continue
        if not line:
            continue
        if line in ("/exit", "/quit"):
            break
        if line == "/reset":
            history = []
            print("(new conversation)")
            continue
        if line == "/undo":
            history = history[:-2]
            print(f"(dropped the last turn; {len(history) // 2} left)")
            continue
        if line.startswith("/save"):
            path = line[len("/save"):].strip()
            if not path or not history:
                print("(usage: /save FILE, after at least one answer)")
                continue
            messages = ([{"role": "system", "content": system}] if system else []) + history
            with open(path, "a", encoding="utf-8") as f:  # one conversation per line: phogpt_qlora.py --data
                f.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
            print(f"(appended this conversation, {len(history) // 2} turn(s), to {path})")
            continue
        if line.startswith("/"):
            print("(commands: /reset /undo /save FILE /exit)")
            continue
        history.append({"role": "user", "content": line})
        answer = ""
        try:
            ids = prompt_for(history, args.max_new_tokens, print)
            print("PhoGPT: ", end="", flush=True)
            for piece in stream_answer(model, tokenizer, ids, state, stop, **sampling):
                print(piece, end="", flush=True)
                answer += piece
        except ValueError as err:  # the question alone does not fit the context
            print(f"({err})")
            history.pop()
            continue
        except KeyboardInterrupt:
            print(" [stopped]", end="")
            state.update(cache=None, ids=[], stats=None)  # an interrupted forward may leave the cache half-updated
        print()
        history.append({"role": "assistant", "content": answer.strip()})
        if args.stats and state.get("stats"):
            print(stats_line(state["stats"]), file=sys.stderr)
