"""The two small trained heads and the features each one reads.

Each head is a log-linear model in torch over two views of the message: TF-IDF of its word 1–2-
grams and in-word character 2–4-grams (the exact cue words: "I said", "still", "doesn't
compile", "every Monday", typos included), and the MiniLM sentence embedding (the meaning when the
words are new). On held-out data the two together beat either alone and beat an MLP on the
embedding (domain macro-F1 0.96 against 0.90 on a held-out split, when the heads were chosen).

domain head:     + the previous turn's domain probabilities and a has-previous flag, which carry a
                 conversation's domain through vague follow-ups ("and in Rust?") and chains of them
escalation head: reads the mean token states of MiniLM's earlier layers too (how a thing is said),
                 + at every layer message ⊙ previous answer, which relates "that's wrong" to the answer,
                 + whether the answer ended by asking the user something, alone and times the message:
                 "2019" answers "What year did you graduate?" but corrects "It came out in 2015."
                 + the answer's own layers: "seriously?" after a refusal, or after bad news it relays;
                 its word tokens keep emoji and punctuation marks (WORDS_AND_MARKS), and its fit holds
                 the character n-grams' weights harder than the rest and the word n-grams' looser
                 (train.ESCALATION_CHAR_L2, ESCALATION_WORD_L2)
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer
from torch import nn

from router.decision import DOMAINS
from router.embeddings import DIM, MIDDLE_LAYERS

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
EMBEDDING_SCALE = 0.5  # TF-IDF rows have unit length too; at 0.5 neither view drowns the other


# The word tokens: scikit-learn's default, words of two characters or more ...
WORDS = r"(?u)\b\w\w+\b"
# ... and, for the escalation head, each emoji or punctuation mark alone too: "sorted. sure. 😐" is sarcasm
# that only the character n-grams saw, which left them carrying a short message's "you" (see train.py)
WORDS_AND_MARKS = r"(?u)\b\w\w+\b|[^\w\s]"


class HeadFileError(Exception):
    """A router head's weights file is missing or unreadable; the message says how to rebuild it."""


class TextFeatures:
    """TF-IDF over word 1–2-grams and in-word character 2–4-grams, fitted on the training texts."""

    def __init__(self, word: TfidfVectorizer, char: TfidfVectorizer):
        self.word, self.char = word, char
        self._analyzers = (word.build_analyzer(), char.build_analyzer())

    @staticmethod
    def _vectorizers(word_vocab=None, char_vocab=None, word_min_df: int = 1,
                     word_tokens: str = WORDS) -> tuple[TfidfVectorizer, TfidfVectorizer]:
        # min_df applies to fitting only: a given vocabulary is used as is
        return (TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, vocabulary=word_vocab, min_df=word_min_df,
                                token_pattern=word_tokens),
                TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), min_df=2, sublinear_tf=True,
                                vocabulary=char_vocab))

    @classmethod
    def fit(cls, texts: Sequence[str], word_min_df: int = 1, word_tokens: str = WORDS) -> "TextFeatures":
        """word_min_df 2 leaves out the word n-grams seen in one text only (most of the bigrams).
        (scikit-learn's fit transforms the texts anyway: only the rows are dropped.)"""
        return cls.fit_transform(texts, word_min_df, word_tokens)[0]

    @classmethod
    def fit_transform(cls, texts: Sequence[str], word_min_df: int = 1,
                      word_tokens: str = WORDS) -> tuple["TextFeatures", sparse.csr_matrix]:
        """The features fitted on texts, and the texts' rows, in one pass over them instead of two (5.4 -> 3.0 s
        over the escalation rows). Each row equals transform()'s to float64 rounding (2e-16)."""
        word, char = cls._vectorizers(word_min_df=word_min_df, word_tokens=word_tokens)
        clipped = cls.clip(texts)
        rows = sparse.hstack([word.fit_transform(clipped), char.fit_transform(clipped)]).tocsr()
        return cls(word, char), rows

    @property
    def size(self) -> int:
        return len(self.word.vocabulary_) + len(self.char.vocabulary_)

    @staticmethod
    def clip(texts: Sequence[str], max_chars: int = 4000) -> list[str]:
        return [t[:max_chars] for t in texts]  # the start says what a message is; bounds the cost

    def transform(self, texts: Sequence[str]) -> sparse.csr_matrix:
        clipped = self.clip(texts)
        return sparse.hstack([self.word.transform(clipped), self.char.transform(clipped)]).tocsr()

    def row(self, text: str) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """One (clipped) text's word and character rows as (column indices, values): the numbers
        transform() gives (sublinear tf × idf, unit length), without the input checks that take
        ~0.4 of its 0.45 ms per vectorizer for one message (test: the same rows as transform())."""
        return tuple(self._row(v, analyze, text) for v, analyze in zip((self.word, self.char), self._analyzers))

    @staticmethod
    def _row(vectorizer: TfidfVectorizer, analyze, text: str) -> tuple[np.ndarray, np.ndarray]:
        vocabulary = vectorizer.vocabulary_
        counts = Counter(g for g in analyze(text) if g in vocabulary)
        columns = np.fromiter((vocabulary[g] for g in counts), np.int64, len(counts))
        values = (1.0 + np.log(np.fromiter(counts.values(), np.float64, len(counts)))) * vectorizer.idf_[columns]
        norm = np.sqrt(values @ values)
        return columns, values / norm if norm else values

    def state(self) -> dict:
        """Each vocabulary as one newline-joined string: no n-gram holds a newline (words and character
        n-grams are cut from whitespace-split text), and ~112,000 pickled strings took 1.0 MB more."""
        return {"word_vocab": "\n".join(self.word.get_feature_names_out()), "word_idf": torch.tensor(self.word.idf_),
                "char_vocab": "\n".join(self.char.get_feature_names_out()), "char_idf": torch.tensor(self.char.idf_),
                "word_tokens": self.word.token_pattern}

    @classmethod
    def from_state(cls, state: dict) -> "TextFeatures":
        vocabularies = (state[k].split("\n") if isinstance(state[k], str) else state[k]
                        for k in ("word_vocab", "char_vocab"))
        # heads saved before the token pattern was stored read scikit-learn's default
        word, char = cls._vectorizers(*vocabularies, word_tokens=state.get("word_tokens", WORDS))
        word.idf_, char.idf_ = state["word_idf"].numpy(), state["char_idf"].numpy()
        return cls(word, char)


def domain_dense(texts: Sequence[str], messages: np.ndarray, previous_probs: np.ndarray | None = None) -> np.ndarray:
    """texts and their (n, DIM) embeddings; previous_probs (n, 4) in DOMAINS order, NaN rows where
    none. The prior enters twice: as is, and weighted by how short the message is, because a
    linear model cannot otherwise lean on it for "and in Go?" but not for a new full question."""
    n = len(messages)
    prior = np.full((n, len(DOMAINS)), np.nan, np.float32) if previous_probs is None else previous_probs
    has = ~np.isnan(prior).any(axis=1, keepdims=True)
    prior = np.where(has, prior, 0.0)
    shortness = np.array([[max(0.0, 1.0 - len(t.split()) / 12)] for t in texts], np.float32)
    return np.hstack([EMBEDDING_SCALE * messages, prior, shortness * prior, has]).astype(np.float32)


_CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)  # not prose: `a ? b : c` asks nothing
_EMPHASIS = re.compile(r"\*\*|__")  # markdown bold: "**Which version are you on?** The steps differ."
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_ENDS_ASKING = re.compile(r"\?[^\w?]*$")  # a question mark, then at most closing marks, emoji, space


def asks_the_user(answer: str | None) -> bool:
    """Whether an answer ends by asking the user something: a question in its last two sentences
    ("How old is your sister?"; "Is this SQLite or Postgres? Each matches case differently."), in bold
    or not, as models often set their one question in bold."""
    sentences = _SENTENCE_END.split(_EMPHASIS.sub("", _CODE.sub("code", answer)).strip()) if answer else []
    return any(_ENDS_ASKING.search(sentence) for sentence in sentences[-2:])


def answers_asked(answers: Sequence[str | None]) -> np.ndarray:
    """escalation_dense's answers_asked for these answers' texts (None where there is no answer)."""
    return np.array([asks_the_user(a) for a in answers], np.float32)


def escalation_dense(messages: np.ndarray, previous_answers: np.ndarray | None = None,
                     answers_asked: np.ndarray | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """messages and previous_answers as Embedder.layers gives them, (n, MIDDLE_LAYERS + 1, DIM);
    zeros where there is no answer. answers_asked: (n,) 1 where asks_the_user(answer). The message's
    layers; at each layer what it shares with the answer (their product: a linear head cannot
    multiply two inputs itself); whether the answer asked, and the message's embedding where it did.
    A short bare reply is most often a complaint ("february", "yen?") unless it answers a question:
    leave-one-writer-out over eight strangers' sets, F1 0.888 -> 0.904 and FPR 0.087 -> 0.075.
    (Trained on all the data: a question in the answer's last sentence only, 0.922 / 0.053 over nine
    strangers' sets; in its last two, code left out, 0.923 / 0.051, and a model's clarifying
    question is often followed by why it asks.) Last, the answer's own layers: the same "seriously?"
    complains after a needless refusal and not after relayed bad news (held out one set at a time,
    0.928 / 0.047 -> 0.934 / 0.051; sets 53-62, 0.910 / 0.066 -> 0.920 / 0.066).
    out: a float32 (n, width) array to write into, such as rows of a larger one (router.train)."""
    n = len(messages)
    previous = np.zeros_like(messages) if previous_answers is None else previous_answers
    asked = np.zeros((n, 1), np.float32) if answers_asked is None else np.asarray(answers_asked, np.float32).reshape(n, 1)
    last = messages[:, -1]
    messages, previous = messages.reshape(n, -1), previous.reshape(n, -1)
    width = messages.shape[1]
    # Written into one array, block by block: over the training rows (~1 GB) hstack's temporaries
    # took 5.6 of this function's 5.9 s. The same operations in the same order, so the same numbers.
    dense = np.empty((n, 3 * width + 1 + last.shape[1]), np.float32) if out is None else out
    blocks = np.split(dense, np.cumsum([width, width, 1, last.shape[1]]), axis=1)
    np.multiply(EMBEDDING_SCALE, messages, out=blocks[0])
    np.multiply(messages, previous, out=blocks[1])
    blocks[1] *= 4 * EMBEDDING_SCALE
    blocks[2][:] = asked
    np.multiply(EMBEDDING_SCALE * asked, last, out=blocks[3])
    np.multiply(EMBEDDING_SCALE, previous, out=blocks[4])
    return dense


def escalation_width() -> int:
    """How many features escalation_dense makes for each row."""
    return escalation_dense(np.zeros((1, MIDDLE_LAYERS + 1, DIM), np.float32)).shape[1]


class SparseRowsTimesWeight(torch.autograd.Function):
    """x @ weightᵀ for a scipy CSR x, differentiable in the weight. One loss and gradient over the
    escalation data took ~400 ms with torch's sparse COO matmul and ~20 ms with scipy's CSR
    products (router.train, old/new alternating: 105-113 -> 69-74 s)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, x: sparse.csr_matrix) -> torch.Tensor:
        ctx.x = x
        return torch.from_numpy(np.asarray(x @ weight.detach().numpy().T))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return torch.from_numpy(np.ascontiguousarray(np.asarray(ctx.x.T @ grad.numpy()).T)), None


class Head(nn.Module):
    """softmax (or, with one output, sigmoid) of a linear map of [TF-IDF, dense features]."""

    def __init__(self, text: TextFeatures, n_dense: int, n_out: int):
        super().__init__()
        self.text = text
        self.config = {"n_dense": n_dense, "n_out": n_out}
        self.linear = nn.Linear(text.size + n_dense, n_out)
        self._numpy: tuple[np.ndarray, ...] | None = None  # probabilities()' weights, made once

    def inputs(self, texts: Sequence[str], dense: np.ndarray,
               text_rows: sparse.csr_matrix | None = None) -> tuple[sparse.csr_matrix, torch.Tensor]:
        """text_rows: the texts' TF-IDF rows where the caller has them already."""
        text_rows = self.text.transform(texts) if text_rows is None else text_rows
        return text_rows.astype(np.float32), torch.from_numpy(np.ascontiguousarray(dense, np.float32))

    def forward(self, x: tuple[sparse.csr_matrix, torch.Tensor]) -> torch.Tensor:
        """x: (TF-IDF rows, dense features). The dense block stays a dense product: inside the sparse
        matrix, its 4,608 columns per escalation row made that fit take 15.7 s; apart, 5.4 s."""
        text, dense = x
        n_text = self.text.size
        weight = self.linear.weight
        return SparseRowsTimesWeight.apply(weight[:, :n_text], text) + dense @ weight[:, n_text:].T + self.linear.bias

    def probabilities(self, texts: Sequence[str], dense: np.ndarray) -> np.ndarray:
        """The forward pass in numpy, one text's feature rows at a time (the router's budget is a
        few milliseconds; torch's sparse tensors took ten times that to build). Word and character
        features each meet their own contiguous block of the weights (made on the first call,
        after training or loading): no sparse hstack, no strided copy per call."""
        if self._numpy is None:
            weight, n_word = self.linear.weight.detach().numpy(), len(self.text.word.vocabulary_)
            n_text = self.text.size
            self._numpy = tuple(np.ascontiguousarray(w) for w in (
                weight[:, :n_word].T, weight[:, n_word:n_text].T, weight[:, n_text:].T,
                self.linear.bias.detach().numpy()))
        w_word, w_char, w_dense, bias = self._numpy
        text_logits = [word_values @ w_word[word_columns] + char_values @ w_char[char_columns]
                       for (word_columns, word_values), (char_columns, char_values)
                       in map(self.text.row, self.text.clip(texts))]
        logits = np.array(text_logits).reshape(len(texts), self.config["n_out"]) + dense @ w_dense + bias
        if self.config["n_out"] == 1:
            return 1.0 / (1.0 + np.exp(-logits[:, 0]))
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)

    def save(self, path: Path, meta: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"config": self.config, "meta": meta, "text": self.text.state(),
                    "state": {k: v.half() for k, v in self.state_dict().items()}}, path)  # float16: half the file

    @classmethod
    def load(cls, path: Path, n_dense: int) -> tuple["Head", dict]:
        """The head in `path`, which must read the n_dense features the caller computes."""
        rebuild = "rebuild it with: python -m router.train (or restore it with git checkout router/weights)"
        if not path.is_file():
            raise HeadFileError(f"{path}: router head weights not found; {rebuild}")
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            head = cls(TextFeatures.from_state(saved["text"]), **saved["config"])
            head.load_state_dict({k: v.float() for k, v in saved["state"].items()})
        except Exception as exc:  # truncated, corrupt, or from an incompatible version
            first_line = (str(exc).splitlines() or [""])[0][:120]  # torch's own text goes on for a page
            raise HeadFileError(f"{path}: router head weights unreadable ({type(exc).__name__}: {first_line}); "
                                f"{rebuild}") from exc
        if head.config["n_dense"] != n_dense:  # weights from another version of router.train
            raise HeadFileError(f"{path}: router head weights for {head.config['n_dense']} dense features, but this "
                                f"router computes {n_dense}; {rebuild}")
        head.eval()
        return head, saved["meta"]
