"""Models and data built locally from configs, so tests and benchmarks never touch the network.

Tokenizers are trained on a small generated corpus of review-like sentences; models are randomly
initialised GPT-2 (policy) and DistilBERT (sequence classifier with NEGATIVE/POSITIVE labels).
"""

import json
import random
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    DistilBertConfig,
    DistilBertForSequenceClassification,
    DistilBertTokenizerFast,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2TokenizerFast,
)

SUBJECTS = ["this movie", "the film", "the plot", "the acting", "the ending", "the cast", "the story", "the music"]
VERBS = ["was", "is", "felt", "seemed", "looked", "became"]
ADJECTIVES = ["great", "good", "fine", "bad", "awful", "boring", "slow", "fun", "long", "dark", "funny", "odd"]
TAILS = ["to me", "at times", "in the end", "from the start", "overall", "for a while", "and then some"]


def corpus(n: int, seed: int = 0) -> list[str]:
    """n short review-like texts of 3-6 sentences."""
    rng = random.Random(seed)
    sentence = lambda: f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(ADJECTIVES)} {rng.choice(TAILS)}."
    return [" ".join(sentence().capitalize() for _ in range(rng.randint(3, 6))) for _ in range(n)]


def write_dataset(path: Path, n: int = 256, seed: int = 0) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus(n, seed)))
    return path


def gpt2_tokenizer(vocab_size: int = 512) -> GPT2TokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(500), trainer)
    return GPT2TokenizerFast(tokenizer_object=tok, model_max_length=1024, bos_token="<|endoftext|>",
                             eos_token="<|endoftext|>", unk_token="<|endoftext|>")


def bert_tokenizer() -> DistilBertTokenizerFast:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(corpus(500), trainers.WordPieceTrainer(vocab_size=200, special_tokens=special))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    return DistilBertTokenizerFast(tokenizer_object=tok, model_max_length=128, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def pretrain(model, tokenizer, steps: int = 150, seed: int = 0) -> None:
    """A few seconds of language modelling on the corpus, so the tiny policy writes review-like text."""
    import torch

    torch.manual_seed(seed)
    texts = corpus(steps * 16, seed=seed + 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for i in range(steps):
        batch = tokenizer(texts[i * 16 : (i + 1) * 16], return_tensors="pt", truncation=True, max_length=48,
                          padding=True)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def build_policy(out: Path, size: str = "tiny", pretrain_steps: int = 150) -> Path:
    """GPT-2 policy + tokenizer saved to `out`. size: tiny (2 layers, 32 wide, briefly pretrained on the
    corpus) or gpt2 (124M, GPT2Config(), random)."""
    tokenizer = gpt2_tokenizer()
    if size == "gpt2":
        config = GPT2Config()  # the real GPT-2 small shapes: 12 layers, 768 wide, vocab 50257
        tokenizer.add_tokens([f"<extra_{i}>" for i in range(config.vocab_size - len(tokenizer))])
    else:
        config = GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=32, n_layer=2, n_head=2)
    config.bos_token_id = config.eos_token_id = config.pad_token_id = tokenizer.eos_token_id
    model = GPT2LMHeadModel(config)
    if size == "tiny" and pretrain_steps:
        tokenizer.pad_token = tokenizer.eos_token
        pretrain(model, tokenizer, pretrain_steps)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# A chat template for the tiny policy (role: content lines, then "assistant:"); its turns end at <|endoftext|>
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}<|endoftext|>{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")
TOPICS = ["film", "plot", "cast", "music", "ending", "story", "actor", "scene"]


def build_chat_policy(policy: Path, out: Path) -> Path:
    """The tiny policy with a chat template in its tokenizer."""
    import shutil

    from transformers import AutoTokenizer

    shutil.copytree(policy, out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    return out


def write_instructions(path: Path, n: int = 64, seed: int = 0) -> Path:
    """Instructions with a checkable constraint, as a prompt dataset: `prompt` (text), `messages` (the same as a chat),
    `keyword` (the word the answer should use) and `max_words`."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic, keyword = rng.choice(TOPICS), rng.choice(TOPICS)
        prompt = f"Write about the {topic} and use the word {keyword}."
        rows.append({"prompt": prompt, "messages": [{"role": "user", "content": prompt}], "keyword": keyword,
                     "max_words": rng.randint(3, 12), "row": i})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def build_llama(out: Path) -> Path:
    """A tiny Llama-architecture causal LM (random weights) with the GPT-2-style tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = gpt2_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_classifier(out: Path, size: str = "tiny") -> Path:
    """DistilBERT sequence classifier (NEGATIVE/POSITIVE) + tokenizer. size: tiny or distilbert (66M)."""
    tokenizer = bert_tokenizer()
    labels = {"id2label": {0: "NEGATIVE", 1: "POSITIVE"}, "label2id": {"NEGATIVE": 0, "POSITIVE": 1}}
    if size == "distilbert":
        config = DistilBertConfig(vocab_size=30522, **labels)
    else:
        config = DistilBertConfig(vocab_size=len(tokenizer), dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                                  max_position_embeddings=128, **labels)
    DistilBertForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
