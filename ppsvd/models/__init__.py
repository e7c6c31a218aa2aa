"""What a stage runs (see base.py). Importing this package must not import torch."""
