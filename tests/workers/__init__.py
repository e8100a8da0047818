"""Scripts that tests run as real processes (``accelerate launch`` with two ranks, or plain Python)."""
