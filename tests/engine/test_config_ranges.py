"""Every engine config refuses out-of-range, non-finite and absurd values, naming the field:
what a client may send through any adapter is bounded here, once."""

from __future__ import annotations

import math

import pytest

from equiprune.engine.budget import BudgetConfig
from equiprune.engine.diagnostics import DiagnosticsConfig
from equiprune.engine.errors import InvalidConfigError
from equiprune.engine.finetune.config import FinetuneConfig
from equiprune.engine.prune import PruningConfig


@pytest.mark.parametrize(("build", "field"), [
    (lambda: FinetuneConfig(lr=1e308), "finetune.lr"),
    (lambda: FinetuneConfig(lr=math.inf), "finetune.lr"),
    (lambda: FinetuneConfig(lr=math.nan), "finetune.lr"),
    (lambda: FinetuneConfig(dual_lr=1e9), "finetune.dual_lr"),
    (lambda: FinetuneConfig(momentum=1.0), "finetune.momentum"),
    (lambda: FinetuneConfig(weight_decay=5.0), "finetune.weight_decay"),
    (lambda: FinetuneConfig(epochs=2**31), "finetune.epochs"),
    (lambda: FinetuneConfig(batch_size=2**40), "finetune.batch_size"),
    (lambda: BudgetConfig(resolution=math.inf), "budget.resolution"),
    (lambda: BudgetConfig(resolution=math.nan), "budget.resolution"),
    (lambda: BudgetConfig(max_probes=10**9), "budget.max_probes"),
    (lambda: BudgetConfig(tolerance=math.nan), "budget.tolerance"),
    (lambda: DiagnosticsConfig(probes=10**9), "diagnostics.probes"),
    (lambda: PruningConfig(kind="n_m", n=2, m=0), "pruning.n"),
    (lambda: PruningConfig(kind="n_m", n=2, m=10**6), "pruning.m"),
    (lambda: PruningConfig(gradual_steps=10**6, schedule="gradual"), "pruning.gradual_steps"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_absurd_values_are_refused_with_their_field(build, field) -> None:
    with pytest.raises(InvalidConfigError) as info:
        build()
    assert info.value.field == field
