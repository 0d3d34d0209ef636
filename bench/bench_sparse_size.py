"""Size of the compact sparse artifact against the dense safetensors file.

    python bench/bench_sparse_size.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from _common import write_results
from equiprune.engine.models.io import save_safetensors
from equiprune.engine.models.registry import ArchitectureSpec, build_model
from equiprune.engine.models.sparse import load_sparse, save_sparse
from equiprune.engine.prune import PruningConfig, prune

MODELS = {
    "resnet20": {"num_classes": 10, "in_channels": 3, "input_size": 32},
    "resnet18": {"num_classes": 10, "in_channels": 3, "input_size": 32},
    "mobilenet_v2": {"num_classes": 10, "in_channels": 3, "input_size": 32},
}


def main():
    results, lines = {}, ["| model | sparsity (measured) | dense bytes | sparse bytes | sparse / dense |",
                          "| --- | ---: | ---: | ---: | ---: |"]
    with tempfile.TemporaryDirectory() as tmp:
        for arch, kwargs in MODELS.items():
            torch.manual_seed(0)
            spec = ArchitectureSpec(arch, kwargs)
            dense = build_model(spec)
            dense_path = Path(tmp) / f"{arch}.safetensors"
            save_safetensors(dense, spec, dense_path)
            for sparsity in (0.5, 0.8, 0.9, 0.95):
                outcome = prune(dense, PruningConfig(sparsity=sparsity, scope="global"))
                sparse_path = Path(tmp) / f"{arch}-{sparsity}.sparse.safetensors"
                save_sparse(outcome.module, spec, sparse_path)
                restored, _ = load_sparse(sparse_path)
                exact = all(torch.equal(restored[k], v) for k, v in outcome.module.state_dict().items())
                d, s = dense_path.stat().st_size, sparse_path.stat().st_size
                measured = outcome.sparsity.total_sparsity
                results.setdefault(arch, {})[str(sparsity)] = {"measured_total_sparsity": measured, "dense_bytes": d,
                                                             "sparse_bytes": s, "ratio": s / d, "round_trip_exact": exact}
                lines.append(f"| {arch} | {sparsity} ({measured:.3f} of all params) | {d:,} | {s:,} | {s / d:.3f} |")
    lines += ["", "Global magnitude pruning of conv/linear weights, first conv and last linear dense; "
              "'measured' counts zeros over every parameter, biases and norms included. Round trips were bit-exact: "
              + str(all(v["round_trip_exact"] for r in results.values() for v in r.values()))]
    write_results("sparse_size", "python bench/bench_sparse_size.py", results, lines)


if __name__ == "__main__":
    main()
