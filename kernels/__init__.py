"""lowbit.kernels."""
