"""Re-estimate BatchNorm running statistics after pruning, without changing any weight.

Pruning shifts every activation distribution, but BatchNorm keeps normalising with the dense
model's running mean and variance. Measured on this project's faces (science brief, section 6)
that alone collapsed every model at sparsity >= 0.8 to a single class; recomputing the
statistics on training images restored them. So recalibration is cheap and should be default.

How: reset the running statistics, set ``momentum=None`` (PyTorch then keeps an equal-weight
cumulative average over batches rather than an exponential one), and run the data through
with only the BatchNorm layers in train mode: dropout and the like stay in eval mode so the
statistics match what inference will see. Batches are cut into near-equal chunks so the
equal per-batch weighting is an (almost) exact average over samples. Afterwards momentum and
every module's train/eval flag are put back as they were.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import InvalidConfigError, InvalidDatasetError, UnsupportedOperationError


def recalibrate_batchnorm(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    batch_size: int = 256,
    max_samples: int | None = None,
) -> int:
    """Recompute running statistics of every BatchNorm layer from `inputs`; returns how many.

    Uses the first `max_samples` rows of `inputs` when given (shuffle beforehand if the rows are
    ordered). A model without BatchNorm is left untouched and 0 is returned.
    """
    _refuse_exported_batchnorm(model)
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not layers:
        return 0
    _validate_options(batch_size, max_samples)
    if max_samples is not None and isinstance(inputs, torch.Tensor):
        inputs = inputs[:max_samples]
    _validate_inputs(inputs)

    flags = {module: module.training for module in model.modules()}
    momenta = {layer: layer.momentum for layer in layers}
    saved = _running_stats(layers)
    try:
        model.eval()
        for layer in layers:
            layer.reset_running_stats()
            layer.momentum = None
            layer.train()
        device = _device_of(model, inputs)
        n = inputs.shape[0]
        # At most batch_size rows each, at least two (train-mode BatchNorm needs two values).
        chunks = min(-(-n // batch_size), n // 2)
        with torch.no_grad():
            for batch in torch.tensor_split(inputs, chunks):
                model(batch.to(device))
    except BaseException:
        # Half-estimated statistics are worse than the old ones: put those back.
        _restore_running_stats(saved)
        raise
    finally:
        for layer, momentum in momenta.items():
            layer.momentum = momentum
        for module, training in flags.items():
            module.training = training
    return len(layers)


def _running_stats(layers: list[_BatchNorm]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    names = ("running_mean", "running_var", "num_batches_tracked")
    return [
        (buffer, buffer.detach().clone())
        for layer in layers
        for buffer in (getattr(layer, name) for name in names)
        if buffer is not None
    ]


def _restore_running_stats(saved: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    with torch.no_grad():
        for buffer, value in saved:
            buffer.copy_(value)


def _refuse_exported_batchnorm(model: nn.Module) -> None:
    # An exported graph has no BatchNorm modules to switch to train mode: its batch_norm calls
    # run with the mode fixed at export. Saying nothing would hand back a collapsed model.
    if not isinstance(model, torch.fx.GraphModule):
        return
    if any("batch_norm" in str(node.target) for node in model.graph.nodes if node.op == "call_function"):
        raise UnsupportedOperationError(
            "pruning.recalibrate_batchnorm",
            "BatchNorm statistics of a torch.export .pt2 model cannot be re-estimated (its graph "
            "fixes the train/eval mode); submit safetensors + architecture instead",
        )


def _validate_options(batch_size: int, max_samples: int | None) -> None:
    # Train-mode BatchNorm cannot estimate a variance from one value per channel: 2 is the floor.
    if not _is_int_at_least(batch_size, 2):
        raise InvalidConfigError(
            "pruning.recalibrate_batchnorm.batch_size", f"expected an integer >= 2, got {batch_size!r}"
        )
    if max_samples is not None and not _is_int_at_least(max_samples, 2):
        raise InvalidConfigError(
            "pruning.recalibrate_batchnorm.max_samples",
            f"expected an integer >= 2 or None, got {max_samples!r}",
        )


def _validate_inputs(inputs: torch.Tensor) -> None:
    if not isinstance(inputs, torch.Tensor) or inputs.dim() < 1 or inputs.shape[0] < 2:
        shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise InvalidDatasetError(
            "dataset.inputs", f"BatchNorm recalibration needs a tensor of at least two samples, got {shape}"
        )


def _is_int_at_least(value: object, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _device_of(model: nn.Module, inputs: torch.Tensor) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return inputs.device
