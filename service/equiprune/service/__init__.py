"""The equiprune service: the engine behind gRPC on Ray Serve.

Three products, each a folder with a protocol-neutral plane: `artifacts/` (uploads, imports,
reads), `jobs/` (the job manager runs each job as a Ray task, or Ray Train for data-parallel
fine-tuning, through the engine's job API), `serving/` (model server and monitor). `rpc/` is the
thin gRPC edge over them. None of them holds science: that is the engine's.
"""
