"""LoRA supervised fine-tuning for replyloop.

Public surface:

- ``training.config.load_train_config(path) -> TrainConfig`` (lora-scripts keys + ours)
- ``training.recipe.run_training(cfg, progress=None) -> TrainResult(output_dir, manifest)``
- ``training.prompting.render_prompt(tokenizer, prompt) -> str`` and
  ``training.prompting.prompt_input_ids(tokenizer, prompt, *, bos=None) -> list[int]`` (shared with drafting
  and evaluation, so training and generation see the same prompt tokens)
- ``training.merge.merge_adapter(adapter_dir, out_dir)`` / ``training.merge.export_adapter(adapter_dir, out_dir)``
- ``training.tiny.build_tiny_base(out_dir, texts, ...)`` (a tiny random Llama for tests) and
  ``training.tiny.cached_tiny_base(cache_dir, pairs, texts, cfg) -> PretrainResult`` (a tiny Llama
  pre-trained fully on question/reply pairs, cached by corpus and config: the demo's base)

Heavy libraries (torch, transformers, peft) are imported inside the modules that need
them; importing ``training`` itself is cheap.
"""
