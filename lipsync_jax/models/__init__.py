"""Flax (linen) models: pure modules, channels-last, explicit ``dtype``/``param_dtype``.

Every model module exposes the module plus ``init_params(rng, model, ...)`` (random parameters)
and ``abstract_params(model, ...)`` (``jax.ShapeDtypeStruct`` leaves, nothing allocated); both
return BARE parameter trees. ``{"params": tree}`` is added only at ``module.apply``.
"""

from typing import Any

Dtype = Any  # a jnp dtype (jnp.float32, jnp.bfloat16, ...) as Flax's dtype/param_dtype fields take
