import os
import sys

# The reference is what the suite tests; kernel tests pick their backends explicitly.
os.environ.setdefault("LOWBIT_BACKEND", "reference")

from hypothesis import settings

sys.path.insert(0, os.path.dirname(__file__))

settings.register_profile("ci", max_examples=150, deadline=None, derandomize=True)
settings.register_profile("dev", max_examples=60, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
