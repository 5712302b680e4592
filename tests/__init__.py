"""ipkernel test suite (twisted.trial)."""
