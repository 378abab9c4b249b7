"""The human evaluation: a pairwise similarity study served as a local web app."""
