"""Text both command lines print: `equiprune` (the client) and `equiprune-engine` (the engine).

Standard library only, so the torch-free client and the protobuf-free engine may both import
it: one set of words, numbers and tables for either CLI.

Modules: formats (percentages, points, yes/no, columns; reads a proto message, a dataclass or
a dict alike), tolerance (ε as the CLIs take it: percentage points), reports (per-group
comparisons, the budget search's probes and shortfall, diagnostics).
"""
