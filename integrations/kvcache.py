"""``QuantizedKVCache``: a transformers ``DynamicCache`` that quantizes keys and values on write.

Every ``update(key_states, value_states, layer_idx)`` call fake-quantizes the new states
``(batch, kv_heads, tokens, head_dim)`` in the given formats, with blocks along ``head_dim``
(one block set per token and head), then stores them. Since each token's block is quantized
independently, quantize-on-write equals storing the codes: the attention of every step, the
current one included, reads only quantized keys and values. Nothing else in the model changes:
with ``use_cache=False`` the model never calls the cache and its outputs are the unquantized
model's.

``install_kv_cache(model, keys, values)`` makes every forward call that would start a fresh
cache (none given, or an empty plain ``DynamicCache`` as ``generate`` passes, caching on) use a
``QuantizedKVCache`` instead; an explicitly passed ``QuantizedKVCache`` (``cache=`` or
``past_key_values=`` by transformers version) is used as it is.
"""

from __future__ import annotations

import functools
import inspect

from transformers.cache_utils import DynamicCache

from .fakequant import fake_quant, parse_spec

SAME = "same"  # a value spec equal to the key spec


class QuantizedKVCache(DynamicCache):
    """``keys`` / ``values``: specs (``None`` or ``"none"``: not quantized); ``values="same"``
    (the default) uses the key spec."""

    def __init__(self, config=None, keys=None, values=SAME, **kwargs):
        super().__init__(config=config, **kwargs)
        self.key_spec = parse_spec(keys)
        self.value_spec = self.key_spec if _is_same(values) else parse_spec(values)

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        key_states = fake_quant(key_states, self.key_spec)
        value_states = fake_quant(value_states, self.value_spec)
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)


def _is_same(values) -> bool:
    return isinstance(values, str) and values == SAME


def install_kv_cache(model, keys, values=SAME) -> None:
    """Make ``model`` create a ``QuantizedKVCache`` whenever it would create a cache itself
    (``values`` as in ``QuantizedKVCache``)."""
    keys = parse_spec(keys)
    values = keys if _is_same(values) else parse_spec(values)
    if getattr(model, "_lowbit_orig_forward", None) is None:
        model._lowbit_orig_forward = model.forward
    orig = model._lowbit_orig_forward
    if keys is None and values is None:
        model.forward = orig
        return

    # transformers >= 5.2x calls the argument ``cache``; earlier versions ``past_key_values``
    params = inspect.signature(orig).parameters
    key = "cache" if "cache" in params else "past_key_values"

    @functools.wraps(orig)
    def forward(*args, **kwargs):
        use_cache = kwargs.get("use_cache")
        if use_cache is None:
            use_cache = getattr(model.config, "use_cache", True)
        given = kwargs.get(key, kwargs.get("past_key_values"))
        fresh = given is None or (type(given) is DynamicCache and given.get_seq_length() == 0)
        if use_cache and fresh:
            # also replaces the empty DynamicCache that ``generate`` creates and then reads back
            # from the model's output
            kwargs.pop("past_key_values", None)
            kwargs[key] = QuantizedKVCache(model.config, keys, values)
            kwargs["use_cache"] = True
        return orig(*args, **kwargs)

    model.forward = forward
    model._lowbit_kv = (keys, values)


def make_cache(model):
    """A fresh cache for ``model``'s KV setting (``QuantizedKVCache`` or ``DynamicCache``)."""
    kv = getattr(model, "_lowbit_kv", None)
    if kv is None:
        return DynamicCache(config=model.config)
    return QuantizedKVCache(model.config, *kv)
