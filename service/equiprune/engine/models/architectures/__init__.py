"""Built-in architectures. Importing this package registers them all with the registry.

Every architecture uses only standard ``nn.Conv2d`` / ``nn.BatchNorm2d`` / ``nn.Linear``
layers (pruning and diagnostics find prunable layers by type), starts with a Conv2d (the MLP
with a Linear) and ends with an ``nn.Linear`` classifier, and uses no in-place operations,
so that ``torch.func`` can take Hessian-vector products through it.
"""

from equiprune.engine.models.architectures import cnn, mlp, mobilenet_v2, resnet, resnet_cifar

__all__ = ["cnn", "mlp", "mobilenet_v2", "resnet", "resnet_cifar"]
