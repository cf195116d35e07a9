"""d4-bridge."""

import os

# d4-bridge does no linear algebra: without this, numpy's OpenBLAS starts a thread pool at import,
# which costs about 0.07 s of CPU in every process (a third of a one-shot command's start-up)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
