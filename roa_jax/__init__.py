"""roa_jax: ROA meta-learning through simulated memristor crossbars."""
