"""Batched, left-padded generation must be the same model as one sequence at a time (trl#2654): the
log-probability of each sampled token at generation time equals the one from scoring that sequence alone,
and equals what PPOTrainer.step's batched forward pass computes."""

import torch
from transformers import AutoTokenizer
from trl import PPOConfig, PPOTrainer

from ppo_lm.models import load_model
from train_ppo import CheckedModelConfig


def test_batched_left_padded_generation_matches_single_sequence_scoring(tiny):
    policy = load_model(tiny["policy"], "policy", CheckedModelConfig(tiny["policy"]))
    tokenizer = AutoTokenizer.from_pretrained(tiny["policy"])
    tokenizer.pad_token = tokenizer.eos_token
    trainer = PPOTrainer(PPOConfig(batch_size=6, mini_batch_size=6), policy, None, tokenizer)
    model = trainer.model.pretrained_model

    texts = ["The film", "This movie was great to me.", "The plot", "The acting felt slow at times and",
             "It", "The music seemed odd overall. The cast"]
    device = trainer.accelerator.device  # the GPU where there is one, as in a run
    queries = [torch.tensor(tokenizer(t)["input_ids"], device=device) for t in texts]
    assert len({len(q) for q in queries}) >= 3  # genuinely ragged, so left padding is exercised

    # generation exactly as PPOTrainer._generate_batched pads it, keeping the per-step scores
    tokenizer.padding_side = "left"
    padded = tokenizer.pad({"input_ids": [q.tolist() for q in queries]}, return_tensors="pt").to(device)
    torch.manual_seed(0)
    out = model.generate(**padded, max_new_tokens=8, do_sample=True, top_k=0, top_p=1.0,
                         pad_token_id=tokenizer.eos_token_id, output_scores=True, return_dict_in_generate=True)
    width = padded["input_ids"].shape[1]
    # keep each response up to its first EOS, as PPOTrainer does; after it come pad tokens
    responses = []
    for seq in out.sequences[:, width:]:
        eos = (seq == tokenizer.eos_token_id).nonzero()
        responses.append(seq[: eos[0, 0] + 1] if len(eos) else seq)
    generated_logprobs = torch.stack([torch.log_softmax(s.float(), -1) for s in out.scores], 1)  # (B, 8, V)

    with torch.no_grad():
        for i, (query, response) in enumerate(zip(queries, responses)):
            at_generation = generated_logprobs[i, : len(response)].gather(-1, response[:, None]).squeeze(-1)
            alone = torch.log_softmax(model(torch.cat([query, response])[None]).logits[0].float(), -1)
            scored_alone = alone[len(query) - 1 : -1].gather(-1, response[:, None]).squeeze(-1)
            torch.testing.assert_close(at_generation, scored_alone, atol=1e-4, rtol=1e-4)

        # and PPOTrainer.step's own batched forward pass agrees too: it pads on the tokenizer's side, which must
        # be the right (train_ppo.py sets it; left padding would shift the positions, as in trl#2654)
        tokenizer.padding_side = "right"
        inputs = trainer.prepare_model_inputs(queries, responses)
        logprobs, _, _, masks = trainer.batched_forward_pass(trainer.model, queries, responses, inputs)
        for i, response in enumerate(responses):
            trl_logprobs = logprobs[i][masks[i].bool()]  # the mask marks the response tokens
            at_generation = generated_logprobs[i, : len(response)].gather(-1, response[:, None]).squeeze(-1)
            torch.testing.assert_close(trl_logprobs, at_generation, atol=1e-4, rtol=1e-4)
