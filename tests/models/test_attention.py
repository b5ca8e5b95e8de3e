import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lipsync_jax.models.attention import dot_product_attention


@pytest.mark.parametrize("backend", ["auto", "xla"])
def test_backends_match_naive(backend):
    kq, kk, kv = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(kq, (2, 7, 3, 16))
    k = jax.random.normal(kk, (2, 5, 3, 16))
    v = jax.random.normal(kv, (2, 5, 3, 16))
    ref = dot_product_attention(q, k, v, backend="naive")
    out = dot_product_attention(q, k, v, backend=backend)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-5)


def test_bfloat16_close_to_float32():
    kq, kk, kv = jax.random.split(jax.random.key(1), 3)
    q, k, v = (jax.random.normal(key, (1, 9, 2, 32)) for key in (kq, kk, kv))
    ref = dot_product_attention(q, k, v, backend="naive")
    out = dot_product_attention(*(x.astype(jnp.bfloat16) for x in (q, k, v)))
    assert out.dtype == jnp.bfloat16
    err = np.linalg.norm(np.asarray(out, np.float32) - ref) / np.linalg.norm(ref)
    assert err < 2e-2


def test_unknown_backend():
    x = jnp.zeros((1, 2, 1, 8))
    with pytest.raises(ValueError, match="unknown attention backend"):
        dot_product_attention(x, x, x, backend="flash")
