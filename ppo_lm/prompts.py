"""Prompts: what the policy is asked, in one of two modes, and where its answer ends.

- Text prefixes (no prompt_column; TRL's IMDB example): the first prompt_min_tokens..prompt_max_tokens tokens of each
  text of text_column. The reward sees the decoded prefix.
- Whole prompts (prompt_column): each row's prompt used whole. A column of `{"role", "content"}` message lists is
  rendered with the tokenizer's chat template and its generation prompt; `chat_template: true` wraps a plain-text
  prompt as one user turn; `system_prompt` adds a system turn. Prompts longer than prompt_max_tokens are dropped,
  with a count. The reward sees the prompt as written (a message list: its last user turn), and every other column
  of the row as a keyword argument (GRPO's convention). A response ends at its first EOS (kept, so the policy learns
  to stop), after a stop string, or at response_max_tokens.
"""

import sys

from datasets import Dataset
from trl import set_seed
from trl.core import LengthSampler

from ppo_lm.data import fit_prompts, load_rows, load_texts, read_eval_prompts
from ppo_lm.errors import RunError, first_line


def text_prefixes(args, tokenizer, seed: int):
    """Texts -> prompts: the first 2-8 tokens (a random length per text, as in TRL's example)."""
    texts = load_texts(args.dataset_name, args.dataset_split, args.text_column, args.min_text_length,
                       args.dataset_config)
    set_seed(seed)
    prompt_length = LengthSampler(args.prompt_min_tokens, args.prompt_max_tokens + 1)

    def tokenize(batch):
        ids = [row[: prompt_length()] for row in tokenizer(batch[args.text_column])["input_ids"]]
        return {"input_ids": ids, "query": tokenizer.batch_decode(ids, skip_special_tokens=True)}

    return texts.map(tokenize, batched=True, remove_columns=texts.column_names, load_from_cache_file=False)


def is_messages(value) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value)


def render(value, tokenizer, chat_template: bool, system_prompt: str | None, where: str) -> tuple[list[int], str]:
    """One prompt -> (token ids, the prompt as the reward sees it)."""
    if isinstance(value, str) and not chat_template:
        return tokenizer(value, add_special_tokens=False)["input_ids"], value
    if isinstance(value, str):
        messages = [{"role": "user", "content": value}]
    elif is_messages(value):
        messages = [{"role": m["role"], "content": m["content"]} for m in value]
    else:
        raise RunError(f"{where} holds {type(value).__name__} {str(value)[:60]!r}: a prompt column holds text, or a "
                       "list of {\"role\": ..., \"content\": ...} messages")
    if system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}, *messages]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    shown = next((m["content"] for m in reversed(messages) if m["role"] == "user"), messages[-1]["content"])
    return tokenizer(text, add_special_tokens=False)["input_ids"], shown


def whole_prompts(args, tokenizer, dataset_name: str | None = None, what: str = "dataset_name"):
    """Rows of prompt_column -> input_ids and query, every other column kept for the reward functions. Also the
    held-out prompts (eval_file: a .jsonl with the same columns, or a .txt of one prompt a line)."""
    dataset_name = dataset_name or args.dataset_name
    column = args.prompt_column
    if dataset_name.endswith(".txt"):  # one prompt a line, as eval_file has always been
        rows = Dataset.from_dict({column: read_eval_prompts(dataset_name)})
    else:
        rows = load_rows(dataset_name, *((args.dataset_split, args.dataset_config) if what == "dataset_name" else
                                         ("train", None)))
    if column not in rows.column_names:
        raise RunError(f"prompt_column '{column}' is not a column of {what} '{dataset_name}': {rows.column_names}; "
                       "set prompt_column to the column that holds the prompts")
    clash = {"input_ids", "query"} & set(rows.column_names) - {column}
    if clash:
        raise RunError(f"{what} '{dataset_name}' has a column named {sorted(clash)[0]!r}, a name this script uses for "
                       "the tokenized prompt: rename that column")
    if len(rows) == 0:
        raise RunError(f"{what} '{dataset_name}' has no rows")
    chat = args.chat_template or is_messages(rows[0][column])
    if chat and not getattr(tokenizer, "chat_template", None):
        raise RunError(f"the tokenizer of '{tokenizer.name_or_path}' has no chat template, needed for "
                       + ("chat_template: true" if args.chat_template else f"prompt_column '{column}' (messages)")
                       + ": use a chat model, set the tokenizer's chat_template, or give plain-text prompts with "
                       "chat_template: false")
    if args.system_prompt and not chat:
        raise RunError("system_prompt is a turn of a chat: set chat_template: true (or give a column of messages), "
                       "or remove system_prompt")
    try:
        rendered = [render(value, tokenizer, args.chat_template, args.system_prompt,
                           f"prompt_column '{column}' of {what} '{dataset_name}', row {i + 1},")
                    for i, value in enumerate(rows[column])]
    except RunError:
        raise
    except Exception as e:  # the template's own errors (jinja: a role it refuses, ...)
        raise RunError(f"the chat template of '{tokenizer.name_or_path}' failed on prompt_column '{column}' "
                       f"({type(e).__name__}: {first_line(e)}); check the roles of the messages") from None
    keep = [i for i, (ids, _) in enumerate(rendered) if 0 < len(ids) <= args.prompt_max_tokens]
    if len(keep) < len(rendered):
        longest = max(len(ids) for ids, _ in rendered)
        print(f"note: {what}: dropped {len(rendered) - len(keep)} of {len(rendered)} prompts longer than "
              f"prompt_max_tokens ({args.prompt_max_tokens} tokens; the longest has {longest}): raise "
              "prompt_max_tokens to keep them", file=sys.stderr)
    if not keep:
        raise RunError(f"every prompt of {what} '{dataset_name}' is longer than prompt_max_tokens "
                       f"({args.prompt_max_tokens} tokens): raise prompt_max_tokens")
    rows = rows.select(keep)
    rows = rows.add_column("input_ids", [rendered[i][0] for i in keep])
    return rows.add_column("query", [rendered[i][1] for i in keep]).remove_columns(column)


def held_out_prompts(args, tokenizer, context: int | None) -> dict | None:
    """eval_file as {"query": [...], "input_ids": [...], and its other columns}. Text prefixes: one prompt a line,
    those longer than the context (less the response) keep their last tokens, with a warning."""
    if not args.eval_file:
        return None
    if args.prompt_column:
        return whole_prompts(args, tokenizer, args.eval_file, "eval_file").to_dict()
    prompts = read_eval_prompts(args.eval_file)
    if context:  # room for the response, and a margin for text that re-tokenizes longer
        prompts = fit_prompts(prompts, tokenizer, max(1, context - args.response_max_tokens - 8))
    return {"query": prompts, "input_ids": tokenizer(prompts)["input_ids"]}


def first_prompts(prompts: dict, n: int) -> dict:
    return {k: v[:n] for k, v in prompts.items()}


def with_columns(reward_kwargs: dict, batch: dict) -> dict:
    """A reward function's keyword arguments: reward_kwargs, and each dataset column's values for the batch, in
    order."""
    return {**reward_kwargs, **{k: v for k, v in batch.items() if k not in ("input_ids", "query")}}


def check_columns(dataset, reward_kwargs: dict) -> None:
    clash = sorted(set(reward_columns(dataset)) & set(reward_kwargs))
    if clash:
        raise RunError(f"reward_kwargs '{clash[0]}' is also a column of the dataset, which reaches the reward functions "
                       "under that name: rename one of them")


def end_responses(responses: list, tokenizer, stop_strings: list[str], max_tokens: int) -> tuple[list, list[bool]]:
    """Whole-prompt mode: each response (TRL has already cut it after its first EOS, which is kept) also ends after
    the first stop string; returns the responses and whether each ended (EOS or stop string) before max_tokens."""
    ended = []
    out = []
    for r in responses:
        cut = None
        if stop_strings and any(s in tokenizer.decode(r) for s in stop_strings):
            cut = next(k for k in range(1, len(r) + 1) if any(s in tokenizer.decode(r[:k]) for s in stop_strings))
        if cut is not None:
            out.append(r[:cut])
            ended.append(True)
        else:
            out.append(r)
            ended.append(len(r) > 0 and (r[-1].item() == tokenizer.eos_token_id or len(r) < max_tokens))
    return out, ended


def penalise_unended(scores: list[float], ended: list[bool], penalty: float | None) -> list[float]:
    """missing_eos_penalty: `penalty` added to the score of each response that reached the limit without ending (in
    training and in the held-out report alike)."""
    if penalty is None:
        return scores
    return [s + (0.0 if done else penalty) for s, done in zip(scores, ended, strict=True)]


def reward_columns(dataset) -> list[str]:
    """The dataset's columns that reach the reward functions and the judges as keyword arguments."""
    return [c for c in dataset.column_names if c not in ("input_ids", "query")]
