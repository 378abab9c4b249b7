"""Image grids, plots and result tables."""
