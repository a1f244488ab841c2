"""lowbit.integrations."""
