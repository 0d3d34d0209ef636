"""Fine-tuning after pruning: naive, Equalized Loss, CEAG, the held-out-constraint variant and
fair_distill (the fair default): objectives, PI-controlled multipliers, distillation targets
and the held-out output calibration."""
