"""roa_jax: ROA meta-learning through simulated memristor crossbars."""

from roa_jax import batching as _batching

_batching.configure_xla()
