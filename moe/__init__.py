"""lowbit.moe: analytic dense-FFN -> MoE restructuring (CMoE, arXiv 2502.04416).

Modules, by concern (import them directly; nothing heavy is imported here):

* ``config``: the ``SxAyEz`` configuration (``parse_config``);
* ``profile``: ATopK activation markers and rates of a SwiGLU FFN;
* ``partition``: shared neurons, balanced linear-assignment clustering, representatives;
* ``router``: the analytic router (representative mini-SwiGLU, top-k, balancing bias);
* ``modules``: ``CMoEBlock``, the exact restructured FFN (eager and grouped-GEMM experts);
* ``convert``: layer-by-layer ``restructure`` of a transformers model, ``load_restructured``;
* ``finetune``: LoRA fine-tuning with the balancing update, resumable; ``merge_lora``;
* ``export``: ``export_qwen2_moe`` to the standard Qwen2-MoE layout (linear router);
* ``recursive``: hierarchical CMoE inside the experts of Qwen2-MoE / Qwen3-MoE / Mixtral /
  DeepSeek-V3 models;
* ``eval``: perplexity, KL to dense (float32), active MACs; ``data``: windows of the Wikipedia
  text and models of ``lowbit.integrations.data`` (the PTQ study's split).
"""
