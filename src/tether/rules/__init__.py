"""Pure rules: no I/O, no clock reads, no randomness. Time, ids and keys are arguments."""
