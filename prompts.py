"""Prompt templates: the only place in this project where a template string lives.

Pure functions, no imports beyond the standard library. Training and inference build
their text with the same functions, so the prompt a model sees when it answers is, byte
for byte, a prefix of the text it was trained on.
"""
import re
import unicodedata

# oneChat (onechat_tiny.py): "Question: Xin chào Answer: Công ty BICweb kính chào quý khách!"
ONECHAT_QUESTION = "Question:"
ONECHAT_ANSWER = "Answer:"

# PhoGPT-4B-Chat, as in its published tokenizer_config.json chat_template.
PHOGPT_USER_FIRST = "### Câu hỏi: "
PHOGPT_USER_NEXT = "\n### Câu hỏi: "
# The generation prompt; the answer follows after one space.
PHOGPT_ASSISTANT = "\n### Trả lời:"

# PhoGPT-7B5-Instruct: "### Câu hỏi:\n{instruction}\n\n### Trả lời:".
INSTRUCT_USER = "### Câu hỏi:\n"
INSTRUCT_ASSISTANT = "\n\n### Trả lời:"
# Between turns of a multi-turn conversation (not in the original).
INSTRUCT_TURN_SEPARATOR = "\n\n"

# The same template as PhoGPT-4B-Chat's tokenizer_config.json writes it (Jinja), for tokenizer
# files. tests/test_prompts.py checks it against the published one, character for character.
PHOGPT_CHAT_TEMPLATE_JINJA = (
    "{% if not add_generation_prompt is defined %}"
    "{% set add_generation_prompt = false %}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' and loop.first %}"
    "{{ '### Câu hỏi: ' + message['content'].strip() }}"
    "{% elif message['role'] == 'user' %}"
    "{{ '\n### Câu hỏi: ' + message['content'].strip() }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '\n### Trả lời: ' + message['content'] + eos_token }}{% endif %}"
    "{% if loop.last %}"
    "{% if message['role'] == 'user' and add_generation_prompt %}"
    "{{ '\n### Trả lời:' }}{% endif %}{% endif %}"
    "{% endfor %}"
)

# A line that starts a new question: generation stops here even if the model misses EOS.
STOP_STRINGS = {"chat": PHOGPT_USER_NEXT.rstrip(), "instruct": "\n### Câu hỏi:"}

TEMPLATES = ("chat", "instruct")

# Text that would open a turn if it came from a user: '###' before 'Câu hỏi' or 'Trả lời' (both
# templates, any case or spacing), and PhoGPT's special tokens, which the tokenizer turns into
# control ids even inside plain text ('</s>' would end an answer).
TURN_MARKER = re.compile(r"#{3,}\s*(?:câu hỏi|trả lời)", re.IGNORECASE)
SPECIAL_TOKEN_TEXTS = ("</s>", "<s>", "<pad>", "<unk>")
# A full-width number sign: looks like '#' to a reader, but is not the template's '###'.
LOOKALIKE_HASH = "\uff03"
# Characters that show nothing, besides the format characters (Unicode category Cf, e.g. the
# zero-width space U+200B): a combining grapheme joiner, Hangul fillers, variation selectors.
# Hidden inside '###\u200b Câu hỏi:', they would slip a turn marker past a plain search.
INVISIBLE = {"\u034f", "\u115f", "\u1160", "\u3164", "\uffa0", *map(chr, range(0xFE00, 0xFE10))}


def is_invisible(char):
    """True for a character that takes no space on screen (zero-width, format, filler)."""
    return char in INVISIBLE or unicodedata.category(char) == "Cf"


def marker_spans(text):
    """Where TURN_MARKER matches text once invisible characters are skipped: a list of lists,
    for each marker the positions in text of its visible characters."""
    kept = [i for i, char in enumerate(text) if not is_invisible(char)]
    visible = "".join(text[i] for i in kept)
    return [kept[match.start():match.end()] for match in TURN_MARKER.finditer(visible)]


def nfc(text):
    """Return text in Unicode NFC, the form PhoGPT's tokenizer was trained on (macOS pastes NFD)."""
    return unicodedata.normalize("NFC", text)


def turn_markers(text):
    """Every piece of text that could forge a turn: template markers and special-token strings.

    Training scripts report these (with counts) instead of training them silently.
    """
    text = nfc(text)
    found = ["".join(text[i] for i in span) for span in marker_spans(text)]
    return found + [token for token in SPECIAL_TOKEN_TEXTS for _ in range(text.count(token))]


def defuse(text):
    """User text that cannot forge a turn of either template; otherwise as typed (NFC).

    A typed '\\n### Trả lời: ...' or '### Câu hỏi:' would read to the model as a turn that never
    happened, and a typed '</s>' as the end of an answer. So each '#' of such a marker (found
    also with zero-width or other invisible characters inside it) becomes
    the look-alike '＃' (U+FF03), and the special-token strings ('</s>', '<s>', '<pad>',
    '<unk>') are dropped. Apply it to what a user types, before building the prompt: a
    defused conversation keeps the prefix property of generation_prompt.
    """
    chars = list(nfc(text))
    # Invisible characters inside a marker do not save it: its '#'s are replaced all the same.
    for span in marker_spans("".join(chars)):
        for i in span:
            chars[i] = LOOKALIKE_HASH if chars[i] == "#" else chars[i]
    text = "".join(chars)
    # Dropping one token can join the halves of another ('<</s>/s>'): repeat until none is left.
    while any(token in text for token in SPECIAL_TOKEN_TEXTS):
        for token in SPECIAL_TOKEN_TEXTS:
            text = text.replace(token, "")
    return text


def onechat_split(sentence):
    """Split 'Question: Q Answer: A' into (Q, A); raise ValueError if either part is missing."""
    sentence = nfc(sentence).strip()
    if not sentence.startswith(ONECHAT_QUESTION) or ONECHAT_ANSWER not in sentence:
        raise ValueError(f"expected 'Question: ... Answer: ...', got {sentence[:60]!r}")
    question, answer = sentence[len(ONECHAT_QUESTION):].split(ONECHAT_ANSWER, 1)
    question, answer = question.strip(), answer.strip()
    if not question or not answer:
        raise ValueError(f"the question or the answer is empty in {sentence[:60]!r}")
    return question, answer


def onechat_prompt(question):
    """The text the tiny model continues: 'Question: Q Answer:'."""
    return f"{ONECHAT_QUESTION} {nfc(question).strip()} {ONECHAT_ANSWER}"


def onechat_answer(answer):
    """The trained continuation of onechat_prompt: ' A' (EOS is appended as a token id)."""
    return " " + nfc(answer).strip()


def with_system(messages, system=None):
    """Fold system text into the first user turn, since PhoGPT's templates drop system messages.

    A 'system' message inside messages, or the system argument, is prepended to the first
    question followed by a blank line: 'SYSTEM\\n\\nQUESTION'.
    """
    texts = [m["content"] for m in messages if m["role"] == "system"]
    if system:
        texts.insert(0, system)
    turns = [dict(m) for m in messages if m["role"] != "system"]
    system_text = "\n\n".join(nfc(t).strip() for t in texts if t.strip())
    if system_text and turns and turns[0]["role"] == "user":
        turns[0]["content"] = system_text + "\n\n" + turns[0]["content"].strip()
    return turns


def conversation_segments(messages, eos_token, template="chat"):
    """Cut a conversation into (text, is_answer) pieces whose concatenation is the training text.

    messages: [{'role': 'user'|'assistant'|'system', 'content': str}, ...], alternating
    user/assistant, starting with a user turn. Only is_answer pieces are trained: each
    assistant answer, including its EOS. The pieces before an answer end with the
    generation prompt, so everything up to an answer is exactly what the model sees when
    asked to produce that answer.
    """
    segments = []
    for i, message in enumerate(with_system(messages)):
        text = nfc(message["content"])
        if message["role"] == "user":
            if template == "chat":
                head = PHOGPT_USER_FIRST if i == 0 else PHOGPT_USER_NEXT
                segments.append((head + text.strip() + PHOGPT_ASSISTANT, False))
            else:
                head = INSTRUCT_USER if i == 0 else INSTRUCT_TURN_SEPARATOR + INSTRUCT_USER
                segments.append((head + text.strip() + INSTRUCT_ASSISTANT, False))
        elif message["role"] == "assistant":
            segments.append((" " + text.strip() + eos_token, True))
        else:
            role = message["role"]
            raise ValueError(f"unknown role {role!r}: use 'user', 'assistant' or 'system'")
    return segments


def conversation_text(messages, eos_token, template="chat"):
    """The full training text of a conversation (equal to PhoGPT-4B-Chat's chat_template output)."""
    return "".join(text for text, _ in conversation_segments(messages, eos_token, template))


def generation_prompt(messages, eos_token, template="chat", system=None):
    """The prompt for the next answer: all turns so far, ending with the last user question.

    The result ends with '\\n### Trả lời:' (chat) or '\\n\\n### Trả lời:' (instruct), and is an
    exact prefix of conversation_text() of the same conversation once answered.
    """
    if not messages or messages[-1]["role"] != "user":
        raise ValueError("the last message must be the user's question")
    return conversation_text(with_system(messages, system), eos_token, template)


def instruct_prompt(instruction):
    """PhoGPT-7B5-Instruct's one-turn prompt: '### Câu hỏi:\\n{instruction}\\n\\n### Trả lời:'."""
    return INSTRUCT_USER + nfc(instruction).strip() + INSTRUCT_ASSISTANT
