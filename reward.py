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


def _check_local(model: str, key: str, what: str) -> None:
    """A local path (not a hub id like org/name) must be a directory."""
    if model.startswith(("/", ".", "~")) and not os.path.isdir(model):
        raise ValueError(f"reward_kwargs {key}: directory '{model}' not found; point it to a saved {what}")


@functools.cache
def _text_classifier(model: str, device: torch.device, torch_dtype: str):
    from transformers import pipeline

    _check_local(model, "model", "classifier")
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


def _names(topic: str, words: set[str]) -> bool:
    """Whether an answer's words name its topic: a content word of it ('ocean' of 'the ocean', 'train' or 'journey'
    of 'a train journey'), or its plural."""
    content = [w for w in _words(topic) if w not in {"a", "an", "the", "at", "of", "in"}]
    return any(c in words or c + "s" in words for c in content)


def instruction_followed(prompts: list[str], responses: list[str], *, kind: list[str], word: list[str],
                         max_words: list[int], topic: list[str], **_) -> list[float]:
    """1.0 where the answer meets its row's instruction, else 0.0. Every answer must name its `topic` (the
    instruction is about it). `use_word`: the answer uses `word`, in a sentence of 4-40 words that repeats it at most
    twice; `max_words`: the answer has 3 to `max_words` words. The lower bounds and the topic keep the check from
    being met by the word alone, a one-word answer, or a short sentence about something else."""
    scores = []
    for response, k, w, n, t in zip(responses, kind, word, max_words, topic, strict=True):
        words = _words(response)
        if k == "use_word":
            met = w.lower() in words and 4 <= len(words) <= 40 and words.count(w.lower()) <= 2
        elif k == "max_words":
            met = 3 <= len(words) <= n
        else:
            raise ValueError(f"unknown instruction kind {k!r}: expected use_word or max_words")
        scores.append(float(met and _names(t, set(words))))
    return scores


def names_topic(prompts: list[str], responses: list[str], *, topic: list[str], **_) -> list[float]:
    """1.0 where the answer names its row's topic (a content word of it, or its plural), else 0.0: a judge of what
    an answer is about, for a reward that checks only the form of the answer."""
    return [float(_names(t, set(_words(response)))) for response, t in zip(responses, topic, strict=True)]


@functools.cache
def _causal_lm(lm: str, device: torch.device):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _check_local(lm, "lm", "causal language model")
    return AutoTokenizer.from_pretrained(lm), AutoModelForCausalLM.from_pretrained(lm).to(device).eval()


def answer_logprob(prompts: list[str], responses: list[str], lm: str = "HuggingFaceTB/SmolLM2-135M-Instruct",
                   **_) -> list[float]:
    """A judge of fluency: the mean log-probability per token of each answer after its prompt, under the causal
    language model `lm` (give the policy's own starting model to read it as "how likely the reference finds the
    answer"). A prompt is asked as one user turn in `lm`'s chat template when it has one. Word salad, broken text
    and runs of junk tokens score far below fluent answers, so an answer that games a check by degenerating makes
    this judge fall.

    Range: -inf to 0 (nats per token); about -3 on average for SmolLM2-135M-Instruct's own answers at temperature 1.
    """
    from accelerate import PartialState

    tokenizer, model = _causal_lm(lm, PartialState().device)
    scores = []
    for prompt, response in zip(prompts, responses, strict=True):
        if tokenizer.chat_template:
            prompt = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                   tokenize=False)
        context = tokenizer(prompt, add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id]  # "" as prompt
        answer = tokenizer(response, add_special_tokens=False)["input_ids"]
        answer = answer or [tokenizer.eos_token_id]  # an empty answer: how likely `lm` finds ending at once
        ids = torch.tensor([context + answer], device=model.device)
        with torch.no_grad():
            logprobs = torch.log_softmax(model(ids).logits[0, len(context) - 1:-1].float(), dim=-1)
        scores.append(logprobs.gather(-1, ids[0, len(context):, None]).mean().item())
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
