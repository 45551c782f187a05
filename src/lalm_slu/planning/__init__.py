"""The grid before it runs: runs and names, paths, each job's arguments, config checks, GPUs and GPU-hours."""
