"""lowbit.tts."""
