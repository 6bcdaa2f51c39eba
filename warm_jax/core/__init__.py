"""The foundation every stage runs on: the partitioner (mesh, logical axes), the objectives and
losses a trainer optimises, the trainer and the one training loop, checkpoints, a stage dir's
other files (`run_dir`), metrics, model FLOPs, paired statistics and plots.

Imports point down only: `core` uses `models` and `data`, never `rm`, `policy`, `merging`,
`pipeline` or the command lines (tests/test_layout.py).
"""
