"""Fine-tuning after pruning: naive, Equalized Loss, CEAG and the held-out-constraint variant."""
