"""Model-inversion attacks on one latent-search loop (see latent_search.py)."""
