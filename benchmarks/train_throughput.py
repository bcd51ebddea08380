"""Training throughput: `replyloop train` (packing, own loop) vs HF Trainer + peft with padding
to max_seq_length (the lora-scripts way), same model, data, rank, batch and steps, in one run.

Prints non-padding tokens/s of each and their ratio, peak memory, and the mean loss of the
last steps of both (they must agree within noise). Each side runs in its own child process so
its peak memory is its own.

    python benchmarks/train_throughput.py                       # tiny Llama on CPU
    python benchmarks/train_throughput.py --device cuda --model-config qwen2.5-0.5b --steps 50 \
        --batch-size 8 --max-seq-length 512                     # Qwen2.5-0.5B-shaped, random init
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
SAMPLES = ROOT / "replyloop" / "samples" / "cs_samples.csv"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LAST = 5  # loss compared over the last LAST steps


def rows() -> list[dict]:
    with SAMPLES.open(encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def build_model(kind: str, out: Path) -> Path:
    from replyloop.training.tiny import build_tiny_base, build_tiny_tokenizer

    texts = [r["prompt"] for r in rows()] + [r["response"] for r in rows()]
    if kind == "tiny":
        return build_tiny_base(out, texts)
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_tiny_tokenizer(texts, vocab_size=4096)  # no download: ids fit Qwen's vocab
    config = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                         rope_theta=1000000.0, tie_word_embeddings=True, rms_norm_eps=1e-6,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def peak_memory_mb(device: str) -> float:
    import resource

    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def timed(run, device: str) -> float:
    """Seconds ``run()`` takes, with the GPU's queued work finished before and after."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    run()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def run_ours(args, base: str, work: str, queue) -> None:
    import torch

    from replyloop.training.config import make_train_config
    from replyloop.training.recipe import LoRAFinetuneRecipe

    torch.set_num_threads(args.threads)
    data = Path(work) / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "metadata.csv").write_bytes(SAMPLES.read_bytes())
    cfg = make_train_config(root=work, base_model=base, train_data_dir=str(data), output_dir="ours",
                            batch_size=args.batch_size, max_seq_length=args.max_seq_length, max_steps=args.steps,
                            lora_rank=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0,
                            target_modules=TARGETS, learning_rate=args.lr, eval_ratio=0.0, save_steps=10**6,
                            packing=True, device=args.device, seed=args.seed,
                            precision="bf16" if args.device == "cuda" else "fp32")
    losses = []
    recipe = LoRAFinetuneRecipe(cfg, progress=lambda e: "loss" in e and losses.append(e["loss"]))
    try:
        recipe.setup()
        seconds = timed(recipe.train, args.device)
        tokens = recipe.progress.seen_tokens
    finally:
        recipe.cleanup()
    queue.put({"tokens": tokens, "seconds": seconds, "losses": losses, "peak_mb": peak_memory_mb(args.device)})


def run_baseline(args, base: str, work: str, queue) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback
    from transformers.utils import logging as hf_logging

    from replyloop.training.data import collate_padded, tokenize_records

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(base)
    examples, _ = tokenize_records(tokenizer, [(r["prompt"], r["response"]) for r in rows()], args.max_seq_length)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, attn_implementation="sdpa")
    torch.manual_seed(args.seed)
    model = get_peft_model(model, LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0,
                                             target_modules=TARGETS, task_type="CAUSAL_LM"))
    counted = {"tokens": 0}

    def collate(batch):  # lora-scripts: every sample padded to max_seq_length
        counted["tokens"] += sum(len(e) for e in batch)
        return collate_padded(batch, tokenizer.pad_token_id, pad_to=args.max_seq_length)

    training_args = TrainingArguments(
        output_dir=str(Path(work) / "baseline"), per_device_train_batch_size=args.batch_size, max_steps=args.steps,
        learning_rate=args.lr, lr_scheduler_type="cosine", warmup_steps=0, logging_steps=1, save_strategy="no",
        report_to=[], use_cpu=args.device == "cpu", seed=args.seed, bf16=args.device == "cuda",
        remove_unused_columns=False, disable_tqdm=True, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=training_args, train_dataset=examples, data_collator=collate)
    trainer.remove_callback(PrinterCallback)
    seconds = timed(trainer.train, args.device)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    queue.put({"tokens": counted["tokens"], "seconds": seconds, "losses": losses,
               "peak_mb": peak_memory_mb(args.device)})


def in_child(target, *args):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--model-config", choices=["tiny", "qwen2.5-0.5b"], default="tiny")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-seq-length", type=int, default=256)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (per side)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as work:
        base = str(build_model(args.model_config, Path(work) / "base"))
        ours = in_child(run_ours, args, base, work)
        baseline = in_child(run_baseline, args, base, work)
    report = {"device": args.device, "model": args.model_config, "steps": args.steps, "batch_size": args.batch_size,
              "max_seq_length": args.max_seq_length, "rank": args.rank}
    for name, r in (("replyloop", ours), ("hf_trainer_padded", baseline)):
        tail = r["losses"][-LAST:]
        report[name] = {"tokens_per_s": round(r["tokens"] / r["seconds"], 1), "seconds": round(r["seconds"], 2),
                        "tokens": r["tokens"], "peak_memory_mb": round(r["peak_mb"], 1),
                        f"mean_loss_last_{LAST}": round(sum(tail) / len(tail), 4), "first_loss": round(r["losses"][0], 4)}
    report["ratio"] = round(report["replyloop"]["tokens_per_s"] / report["hf_trainer_padded"]["tokens_per_s"], 2)
    print(json.dumps(report, indent=2))
    print(f"replyloop {report['replyloop']['tokens_per_s']:.0f} tok/s vs HF Trainer padded "
          f"{report['hf_trainer_padded']['tokens_per_s']:.0f} tok/s: {report['ratio']:.2f}x "
          f"({args.device}, {args.model_config})")


if __name__ == "__main__":
    main()
