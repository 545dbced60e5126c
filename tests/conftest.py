import os

# Two cores: keep BLAS and torch from oversubscribing them in tests.
os.environ.setdefault("OMP_NUM_THREADS", "2")
