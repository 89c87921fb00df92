"""Launch helpers: local multi-process runs (`launch.local`) and the shell
recipes for TPU pods, SLURM and plain multi-node runs (see launch/README.md)."""
