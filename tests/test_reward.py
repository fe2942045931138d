"""reward.py functions on fixed strings, and the contract train_ppo.py enforces on any reward function."""

import math

import pytest

import reward
from conftest import REWARDS, ROOT
from ppo_lm.reward_contract import compute_rewards, load_reward_fn
from ppo_lm.errors import RunError

POSITIVE = "What a wonderful, beautiful and moving film. I loved every minute!"
NEGATIVE = "A terrible, boring and ugly mess. I hated every minute."


def test_vader_orders_positive_above_negative():
    scores = reward.vader(["", ""], [POSITIVE, NEGATIVE])
    assert scores[0] > 0.5 > -0.5 > scores[1]
    assert all(-1.0 <= s <= 1.0 for s in scores)
    assert reward.vader([""], [""]) == [0.0]


def test_sentiment_classifier_one_float_per_text(tiny):
    prompts, responses = ["The movie", "The plot", "It"], [" was great.", " felt awful.", ""]
    scores = reward.sentiment_classifier(prompts, responses, model=tiny["classifier"], batch_size=2)
    assert len(scores) == 3 and all(isinstance(s, float) and math.isfinite(s) for s in scores)
    # the raw POSITIVE logit: different texts give different scores, and the same text the same one
    assert len(set(scores)) == 3
    assert reward.sentiment_classifier(prompts[:1], responses[:1], model=tiny["classifier"]) == \
        pytest.approx(scores[:1], rel=1e-4)
    # the pipeline is loaded once per (model, device, dtype), not per call
    loaded = reward._text_classifier.cache_info().currsize
    reward.sentiment_classifier(prompts, responses, model=tiny["classifier"])
    assert reward._text_classifier.cache_info().currsize == loaded


def test_sentiment_classifier_unknown_label(tiny):
    with pytest.raises(ValueError, match="label 'GOOD' is not one of the classifier's labels"):
        reward.sentiment_classifier(["a"], ["b"], model=tiny["classifier"], positive_label="GOOD")


def test_keyword_counts_words():
    assert reward.keyword(["", "", ""], ["Great, great fun!", "nothing here", "GREAT."], keywords=["great"]) == \
        [2.0, 0.0, 1.0]


def test_load_reward_fn_by_name_and_by_file():
    assert load_reward_fn("vader", functions=reward) is reward.vader
    fn = load_reward_fn(f"{REWARDS}:shout")
    assert compute_rewards(fn, ["a", "b"], ["hi!!", "no"], {}) == [2.0, 0.0]


@pytest.mark.parametrize("spec, message", [
    ("no_such_reward", "reward_fn 'no_such_reward': no function 'no_such_reward' in"),
    ("missing_file.py:fn", "reward_fn 'missing_file.py:fn': file 'missing_file.py' not found"),
])
def test_load_reward_fn_errors(spec, message):
    with pytest.raises(RunError) as e:
        load_reward_fn(spec, functions=reward)
    assert str(e.value).startswith(message) and e.value.code == 2


def test_unknown_reward_lists_the_available_ones():
    available = (r"available: \['answer_logprob', 'gsm8k_correct', 'instruction_followed', 'keyword', 'names_topic', "
                 r"'sentiment_classifier', 'sentiment_positive', 'vader'\]$")
    with pytest.raises(RunError, match=available):
        load_reward_fn("no_such_reward", functions=reward)


def test_load_reward_fn_broken_file():
    broken = ROOT / "tests" / "reward_that_fails_to_import.py"
    with pytest.raises(RunError, match="importing .* failed: ModuleNotFoundError: No module named 'not_a_module'"):
        load_reward_fn(f"{broken}:fn")


@pytest.mark.parametrize("returned, message", [
    ([1.0], "returned 1 values for 2 responses"),
    ([1.0, 2.0, 3.0], "returned 3 values for 2 responses"),
    (None, "returned NoneType for 2 responses"),
    ([1.0, "high"], "returned a non-number at index 1: 'high'"),
    ([1.0, True], "returned a non-number at index 1: True"),
    ([float("nan"), 1.0], "returned nan at index 0"),
    ([1.0, float("-inf")], "returned -inf at index 1"),
])
def test_reward_contract(returned, message):
    def my_reward(prompts, responses, **kwargs):
        return returned

    with pytest.raises(RunError) as e:
        compute_rewards(my_reward, ["p1", "p2"], ["r1", "r2"], {})
    assert str(e.value).startswith(f"reward function 'my_reward' {message}") and e.value.code == 2


def test_reward_contract_accepts_numbers_of_any_kind():
    import numpy as np
    import torch

    fn = lambda prompts, responses: [1, np.float32(0.5), torch.tensor(2.0)]  # noqa: E731
    assert compute_rewards(fn, ["a"] * 3, ["b"] * 3, {}) == [1.0, 0.5, 2.0]


def test_reward_that_raises_names_the_sample():
    def fragile(prompts, responses, **kwargs):
        return [1.0 / len(r) for r in responses]

    with pytest.raises(RunError) as e:
        compute_rewards(fragile, ["p0", "p1", "p2"], ["ok", "", "fine"], {})
    assert str(e.value) == ("reward function 'fragile' raised ZeroDivisionError: float division by zero — on sample "
                            "1: prompt='p1' response=''")


def test_instruction_followed_checks_each_answer_against_its_own_row():
    kinds, words, limits = ["use_word"] * 4 + ["max_words"] * 3, ["warm"] * 4 + [""] * 3, [0] * 4 + [5] * 3
    topics = ["the ocean"] * 4 + ["winter"] * 3
    answers = ["The warm ocean hums at dusk.", "Warm.", "ocean warm warm warm warm", "The warm sand hums at dusk.",
               "Cold bright winter days.", "Winter.", "Winter is long and cold and dark."]
    assert reward.instruction_followed([""] * 7, answers, kind=kinds, word=words, max_words=limits, topic=topics) == \
        [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]  # the word alone, repeated, off topic, one word, too many words: not met


def test_names_topic_is_a_judge_of_what_the_answer_is_about():
    topics = ["the ocean", "a train journey", "the moon"]
    answers = ["Oceans are deep and blue.", "The journey was slow.", "Bright."]
    assert reward.names_topic([""] * 3, answers, topic=topics) == [1.0, 1.0, 0.0]


@pytest.mark.parametrize("chat", [False, True])
def test_answer_logprob_is_the_mean_log_probability_of_the_answer_tokens(tiny, tiny_chat, chat):
    """The judge's score is minus transformers' own loss on the answer tokens after the prompt (the prompt in the
    model's chat template when it has one), and an empty answer scores ending at once."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lm = tiny_chat["policy"] if chat else tiny["policy"]
    tokenizer, model = AutoTokenizer.from_pretrained(lm), AutoModelForCausalLM.from_pretrained(lm)
    prompts, answers = ["Describe the film.", "Why?"], [" It was slow and long.", ""]
    scores = reward.answer_logprob(prompts, answers, lm=lm)
    for prompt, answer, score in zip(prompts, answers, scores):
        context = (tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                 tokenize=False) if chat else prompt)
        context_ids = tokenizer(context)["input_ids"]
        answer_ids = tokenizer(answer)["input_ids"] or [tokenizer.eos_token_id]
        ids = torch.tensor([context_ids + answer_ids])
        labels = ids.clone()
        labels[0, :len(context_ids)] = -100
        with torch.no_grad():
            assert score == pytest.approx(-model(ids, labels=labels).loss.item(), abs=1e-4)
    assert all(s < 0 for s in scores)
    assert math.isfinite(reward.answer_logprob([""], [" It was slow."], lm=lm)[0])  # no prompt at all: still a score


def test_gsm8k_correct_compares_the_final_numbers():
    answers = ["She has 3 + 4 = 7 apples.\n#### 7", "#### 1,200", "#### 5", "#### 12"]
    responses = ["3 + 4 = 7, so the answer is 7.", "That is 1,200 dollars.", "It is 6.", "No number here."]
    assert reward.gsm8k_correct([""] * 4, responses, answer=answers) == [1.0, 1.0, 0.0, 0.0]


def test_a_reward_that_needs_a_column_says_which():
    with pytest.raises(RunError, match="missing 1 required keyword-only argument: 'answer'"):
        compute_rewards(reward.gsm8k_correct, ["q"], ["7"], {})
