"""Helpers the tests import: tiny models and texts, synthetic results and task files, the
config composer, a local Slurm cluster."""
