"""lowbit.moe."""
