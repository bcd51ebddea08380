"""A tiny local base model that already writes fluent replies, for the "Your first model" test.

A randomly initialised tiny Llama drafts noise, which no gate should pass; a team's real
base model (Qwen, Llama) writes fluent text. So the tiny Llama of ``training.tiny`` is first
fully trained here, in a few seconds, on question/reply texts, then saved with
``save_pretrained`` as a plain local model directory, as a team would point ``base_model`` at.
"""

from __future__ import annotations

from pathlib import Path


def fluent_tiny_base(out_dir: Path, pairs: list[tuple[str, str]], steps: int = 100, seed: int = 0) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from replyloop.training.prompting import PLAIN_TEMPLATE
    from replyloop.training.tiny import build_tiny_base

    texts = [p for p, _ in pairs] + [r for _, r in pairs]
    raw = build_tiny_base(out_dir.with_name(out_dir.name + "-init"), texts, hidden_size=64, num_layers=2)
    tokenizer = AutoTokenizer.from_pretrained(raw)
    model = AutoModelForCausalLM.from_pretrained(raw, dtype=torch.float32)
    rows = [tokenizer(PLAIN_TEMPLATE.format(prompt=p) + r, add_special_tokens=False)["input_ids"]
            + [tokenizer.eos_token_id] for p, r in pairs]
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        pick = torch.randint(len(rows), (16,), generator=generator).tolist()
        width = max(len(rows[i]) for i in pick)
        ids = torch.full((len(pick), width), tokenizer.pad_token_id)
        labels = torch.full((len(pick), width), -100)
        mask = torch.zeros((len(pick), width), dtype=torch.long)
        for row, i in enumerate(pick):
            ids[row, :len(rows[i])] = labels[row, :len(rows[i])] = torch.tensor(rows[i])
            mask[row, :len(rows[i])] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
