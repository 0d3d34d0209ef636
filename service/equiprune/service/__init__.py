"""The equiprune service: thin adapters that put the engine behind gRPC on Ray Serve.

The ingress maps proto ↔ domain types, the job manager keeps job state in a store and runs
jobs as Ray tasks (or Ray Train for data-parallel fine-tuning), the runner calls the engine.
None of them holds science: that is the engine's.
"""
