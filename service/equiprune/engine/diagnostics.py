"""Per-group loss-landscape diagnostics at the dense model (science.md §1).

For every group a of a `GroupedData`, at the dense weights θ*, this module measures what the
second-order analysis of Tran et al. (NeurIPS 2022) says decides who pruning hurts:

- the group's mean cross-entropy J_a and the norm of its gradient g_a;
- the curvature of J_a: the Hessian trace (Hutchinson's estimator, with its standard error) and
  the dominant eigenvalue (power iteration on Hessian-vector products);
- boundary proxies from the softmax output: 1 − Σ_k p_k² (the trace of the per-sample logit
  Hessian), the probability margin p_(1) − p_(2) and the logit margin z_(1) − z_(2);

and, for a mask set, the Taylor-predicted excess loss R(a) ≈ −g_aᵀ w_P + ½ w_Pᵀ H_a w_P with
the paper's bound ‖g_a‖·‖w_P‖ + ½ λ_max·‖w_P‖². `rank_agreement` measures how well any such
prediction ranked the groups' measured damage — the diagnostics are evidence to validate per
model, not a verdict (science.md §6).

Cost model: each group's samples are read by the group's own passes only, never the whole data
set. Pass 0 computes the loss, the proxies, the gradient and every Hutchinson probe at once (one
forward and one create-graph backward per batch, then one extra backward per probe on the same
graph); each power iteration is one further pass. Predicting a mask set costs one pass (one HVP)
per group, reusing the gradients kept from `diagnose`.

HVPs use double backward (`torch.autograd.grad` with `create_graph=True`). Measured on CPU
(2 threads, torch 2.13) for a 2-conv BatchNorm CNN, 512 images 3×32×32, batch 256, best of 5:
eval pass 36 ms, gradient pass 70 ms, HVP by double backward 214–268 ms, by torch.func
forward-over-reverse (jvp of grad) 253–333 ms, the quadratic form vᵀHv by forward-over-forward
277–373 ms. Ten Hutchinson probes: 2.27 s as ten separate passes, 1.56 s sharing one graph per
batch, 4.28 s with `is_grads_batched` (vmap) — hence one shared graph per batch.

The code is split by responsibility; this module re-exports the public names so callers keep
importing from `equiprune.engine.diagnostics`:

- `diagnostics_types`: `DiagnosticsConfig` and the result dataclasses;
- `diagnostics_hessian`: the objective, Hessian-vector products, Hutchinson probes and power
  iteration (the estimators);
- `diagnostics_dense`: `diagnose`, per group at θ*;
- `diagnostics_prediction`: `predict_excess_loss` for a mask set.
"""

from __future__ import annotations

from equiprune.engine.diagnostics_dense import diagnose
from equiprune.engine.diagnostics_prediction import predict_excess_loss
from equiprune.engine.diagnostics_types import (
    Diagnostics,
    DiagnosticsConfig,
    GroupDiagnostics,
    PredictedExcessLoss,
    Vector,
)

__all__ = [
    "Diagnostics",
    "DiagnosticsConfig",
    "GroupDiagnostics",
    "PredictedExcessLoss",
    "Vector",
    "diagnose",
    "predict_excess_loss",
]
