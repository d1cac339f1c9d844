"""The demo's bundled data, generated from a seed: nothing large ships in the package.

One skill, reversing a short sequence of digits, appears in two forms:

- the **pretraining corpus** states it in plain English and Chinese sentences
  ("3 1 4 reversed is 4 1 3." / "3 1 4 倒过来是4 1 3。"), the way a web corpus states facts.
  A little chat small talk is mixed in, as real pretraining corpora contain chat transcripts:
  the base model then knows the chat template's markers, including the end-of-turn token, but it
  has never seen anyone *ask* for a reversal;
- the **instruction set** asks for the skill in chat form ("Reverse the sequence: 3 1 4" /
  "把这个序列倒过来：3 1 4" -> "4 1 3"), which is what supervised fine-tuning teaches.

Held-out sequences are drawn first and excluded from both, so the accuracy the demo prints
measures generalisation to sequences the model has never seen, not recall.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["INSTRUCTIONS", "SENTENCES", "SMALL_TALK", "DemoData", "make_data"]

# Several phrasings, with different text between a sequence and its reverse, so that the base
# model learns to reverse across whatever separates the two (the chat template is one more
# separator). In Chinese the reverse follows a character with no space, as an answer at the
# start of a chat turn does, so the base model knows both token forms of the first digit.
SENTENCES = (
    "{x} reversed is {y}.",
    "The reverse of {x} is {y}.",
    "Read {x} backwards and you get {y}.",
    "Reversed, the sequence {x} becomes {y}.",
    "{x} 倒过来是{y}。",
    "把{x}倒过来，得到{y}。",
    "{x} 从后往前读就是{y}。",
    "序列{x}的倒序是{y}。",
)

# Chat transcripts for the pretraining corpus, on anything but reversing sequences.
SMALL_TALK = (
    ("Hello!", "Hello! How can I help you today?"),
    ("Who are you?", "I am a tiny language model."),
    ("Thank you!", "You are welcome."),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("How many days are in a week?", "There are seven days in a week."),
    ("Good night.", "Good night, sleep well!"),
    ("你好！", "你好！有什么可以帮你的吗？"),
    ("你是谁？", "我是一个很小的语言模型。"),
    ("谢谢！", "不客气。"),
    ("中国的首都是哪里？", "中国的首都是北京。"),
    ("一个星期有几天？", "一个星期有七天。"),
    ("晚安。", "晚安，做个好梦！"),
)

# How users ask for the skill: three English and three Chinese phrasings, some with the sequence
# at the end and some with it in the middle.
INSTRUCTIONS = (
    "Reverse the sequence: {x}",
    "Write {x} backwards.",
    "What is {x} in reverse order?",
    "把这个序列倒过来：{x}",
    "请倒序输出：{x}",
    "{x} 倒过来是什么？",
)

Seq = tuple[int, ...]
Chat = Callable[[str, str], str]  # (user, assistant) -> the exchange rendered with the chat template


@dataclass(frozen=True)
class DemoData:
    corpus: list[dict[str, str]]  # {"text": ...} rows for tk.CausalLM
    train: list[dict[str, str]]  # {"prompt", "completion"} rows for tk.SFT
    held_out: list[dict[str, str]]  # the same shape, on sequences that appear nowhere else


def _show(seq: Seq) -> str:
    return " ".join(map(str, seq))


def make_data(
    render_chat: Chat,
    *,
    seed: int = 0,
    corpus_size: int = 4000,
    small_talk_share: float = 0.1,
    train_size: int = 2000,
    held_out_size: int = 100,
    lengths: tuple[int, int] = (3, 5),
) -> DemoData:
    """The demo's corpus, instruction set and held-out set, the same for the same seed.

    Sequences have distinct digits: reversing them can then be learned as "find the previous
    answer digit in the question and take the digit before it", which works wherever the
    question sits in the text, so the skill carries over from sentences to chat turns.
    """
    rng = random.Random(seed)

    def draw() -> Seq:
        return tuple(rng.sample(range(10), rng.randint(*lengths)))

    held: dict[Seq, None] = {}  # an insertion-ordered set: the same order for the same seed
    while len(held) < held_out_size:
        held[draw()] = None

    def fresh(n: int) -> list[Seq]:
        out: list[Seq] = []
        while len(out) < n:
            s = draw()
            if s not in held:
                out.append(s)
        return out

    def ask(seqs: list[Seq]) -> list[dict[str, str]]:
        return [{"prompt": rng.choice(INSTRUCTIONS).format(x=_show(s)), "completion": _show(s[::-1])} for s in seqs]

    corpus = [{"text": rng.choice(SENTENCES).format(x=_show(s), y=_show(s[::-1]))} for s in fresh(corpus_size)]
    corpus += [{"text": render_chat(*rng.choice(SMALL_TALK))} for _ in range(int(corpus_size * small_talk_share))]
    rng.shuffle(corpus)
    return DemoData(corpus=corpus, train=ask(fresh(train_size)), held_out=ask(list(held)))
