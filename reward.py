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
