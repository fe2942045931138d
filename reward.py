"""Reward functions for train_ppo.py.

Every reward function has the same signature:

    fn(prompts: list[str], responses: list[str], **kwargs) -> list[float]

one float per (prompt, response) pair, finite. `reward_fn` in the config names the function
(`vader`, or `path/to/file.py:my_reward` for your own file) and `reward_kwargs` holds its keyword
arguments. Adding a reward is writing one function; train_ppo.py checks what it returns.
Models are loaded once per process (functools.cache), not per call.
"""

import functools
import os
import re

import torch


@functools.cache
def _text_classifier(model: str, device: torch.device, torch_dtype: str):
    from transformers import pipeline

    if model.startswith(("/", ".", "~")) and not os.path.isdir(model):  # a path, not a hub id like org/name
        raise ValueError(f"reward_kwargs model: directory '{model}' not found; point it to a saved classifier")
    dtype = None if torch_dtype == "auto" else getattr(torch, torch_dtype)
    return pipeline("text-classification", model=model, device=device, dtype=dtype)


def _label_logits(prompts, responses, model, positive_label, batch_size, torch_dtype) -> list[dict[str, float]]:
    """Raw logit of every label of a text classifier, on prompt + response; positive_label must be one of them."""
    from accelerate import PartialState

    # the run's own device: a CPU run on a machine with a GPU (ACCELERATE_USE_CPU, `accelerate launch --cpu`) scores
    # on the CPU too, and each GPU process on its own GPU
    classify = _text_classifier(model, PartialState().device, torch_dtype)
    texts = [p + r for p, r in zip(prompts, responses)]
    outputs = classify(texts, top_k=None, function_to_apply="none", batch_size=batch_size, truncation=True)
    logits = [{o["label"]: o["score"] for o in out} for out in outputs]
    if logits and positive_label not in logits[0]:
        raise ValueError(f"label {positive_label!r} is not one of the classifier's labels {sorted(logits[0])}")
    return logits


def sentiment_classifier(
    prompts: list[str],
    responses: list[str],
    model: str = "lvwerra/distilbert-imdb",
    positive_label: str = "POSITIVE",
    batch_size: int = 128,
    torch_dtype: str = "float32",
    **_,
) -> list[float]:
    """Raw logit of `positive_label` from a text classifier, on prompt + response (TRL's IMDB example).

    Range: unbounded logit; for lvwerra/distilbert-imdb roughly -3 (negative review) to +3 (positive).
    Runs on the current GPU when there is one; `model` is a hub id or a local directory.
    """
    logits = _label_logits(prompts, responses, model, positive_label, batch_size, torch_dtype)
    return [out[positive_label] for out in logits]


def sentiment_positive(
    prompts: list[str],
    responses: list[str],
    model: str = "lvwerra/distilbert-imdb",
    positive_label: str = "POSITIVE",
    batch_size: int = 128,
    torch_dtype: str = "float32",
    **_,
) -> list[float]:
    """1.0 where the classifier calls prompt + response `positive_label` (its top label), else 0.0; the mean is the
    share of positive texts. Same keyword arguments as sentiment_classifier: a judge for eval_reward_fns.

    Range: 0 or 1.
    """
    logits = _label_logits(prompts, responses, model, positive_label, batch_size, torch_dtype)
    return [float(max(out, key=out.get) == positive_label) for out in logits]


@functools.cache
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def vader(prompts: list[str], responses: list[str], **_) -> list[float]:
    """VADER compound sentiment of the response alone (lexicon based, offline, CPU).

    Range: -1 (most negative) to +1 (most positive); 0 for neutral or empty text.
    """
    analyzer = _vader()
    return [analyzer.polarity_scores(r)["compound"] for r in responses]


def keyword(prompts: list[str], responses: list[str], keywords: tuple = ("great",), **_) -> list[float]:
    """Template for your own reward: how many times the response uses one of `keywords` (case-insensitive words).

    Range: 0 to the number of words in the response. Copy this function, change the body, and set
    `reward_fn: my_function` (in this file) or `reward_fn: path/to/file.py:my_function`.
    """
    wanted = {k.lower() for k in keywords}
    return [float(sum(word.strip(".,!?;:\"'").lower() in wanted for word in r.split())) for r in responses]


# Instructions with a checkable constraint (make train-chat): the dataset's columns `kind`, `word`, `max_words` and
# `topic` arrive as keyword arguments, one value per response, in order.

def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def instruction_followed(prompts: list[str], responses: list[str], *, kind: list[str], word: list[str],
                         max_words: list[int], **_) -> list[float]:
    """1.0 where the answer meets its row's constraint, else 0.0. `use_word`: the answer uses `word`, in a sentence of
    4-40 words that repeats it at most twice; `max_words`: the answer has 3 to `max_words` words. The lower bounds
    keep the check from being met by the word alone or by a one-word answer."""
    scores = []
    for response, k, w, n in zip(responses, kind, word, max_words, strict=True):
        words = _words(response)
        if k == "use_word":
            met = w.lower() in words and 4 <= len(words) <= 40 and words.count(w.lower()) <= 2
        elif k == "max_words":
            met = 3 <= len(words) <= n
        else:
            raise ValueError(f"unknown instruction kind {k!r}: expected use_word or max_words")
        scores.append(float(met))
    return scores


def names_topic(prompts: list[str], responses: list[str], *, topic: list[str], **_) -> list[float]:
    """A judge for make train-chat: 1.0 where the answer names its row's topic (a content word of it: 'ocean' of
    'the ocean', 'train' or 'journey' of 'a train journey'), else 0.0. An answer that games instruction_followed
    (the word alone, a few words unrelated to the question) stops naming the topic."""
    scores = []
    for response, t in zip(responses, topic, strict=True):
        content = [w for w in _words(t) if w not in {"a", "an", "the", "at", "of", "in"}]
        words = set(_words(response))
        scores.append(float(any(c in words or c + "s" in words for c in content)))
    return scores


# A verifiable task (configs/qwen_gsm8k.yaml): GSM8K's `answer` column ends with "#### NUMBER".

def _final_number(text: str) -> float | None:
    """The last number of a text (commas dropped: 1,200 is 1200), or None."""
    numbers = re.findall(r"-?\d[\d,]*(?:\.\d+)?", text)
    if not numbers:
        return None
    try:
        return float(numbers[-1].replace(",", ""))
    except ValueError:
        return None


def gsm8k_correct(prompts: list[str], responses: list[str], *, answer: list[str], **_) -> list[float]:
    """1.0 where the response's last number equals the final number of the row's `answer` (after '####'), else 0.0."""
    scores = []
    for response, a in zip(responses, answer, strict=True):
        wanted, given = _final_number(a.split("####")[-1]), _final_number(response)
        scores.append(float(wanted is not None and given is not None and abs(wanted - given) < 1e-6))
    return scores
