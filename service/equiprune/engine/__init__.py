"""The equiprune engine: plain PyTorch, no Ray, gRPC or protobuf.

It loads models and group-labelled data, prunes, measures per-group damage, diagnoses why a
group is hurt, repairs the damage with fair fine-tuning and searches for the largest safe
sparsity. Everything it returns is a frozen dataclass; adapters (service, CLI) translate.

Importing this package is cheap on purpose: submodules are imported by whoever needs them.
"""
