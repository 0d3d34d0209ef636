"""The sandbox: every parse, validation and load of a client's model or dataset, and every
single-worker job, runs in a disposable, unprivileged, resource-limited process without
network (docs/security.md says what it does and does not stop).

    sandbox = sandbox_from_settings(settings)
    description = sandbox.run("describe", {"kind": "model"}, {"content": path}, purpose="validation")
"""

from __future__ import annotations

from equiprune.service.sandbox.confine import Limits
from equiprune.service.sandbox.process import Sandbox, SandboxConfig, SandboxFailure, ServedModelProcess

__all__ = ["Limits", "Sandbox", "SandboxConfig", "SandboxFailure", "ServedModelProcess", "sandbox_from_settings"]


def sandbox_from_settings(settings) -> Sandbox:
    """The sandbox the settings describe (one definition, used by every replica and task)."""
    s = settings
    file_limit = 4 * s.max_upload_bytes  # a job's outputs and checkpoint; validation writes nothing big
    limits = {
        "validation": Limits(memory_bytes=s.sandbox_validation_memory_bytes, cpu_seconds=s.sandbox_validation_cpu_seconds,
                             file_size_bytes=64 * 2**20),
        "job": Limits(memory_bytes=s.sandbox_job_memory_bytes, cpu_seconds=s.sandbox_job_cpu_seconds,
                      file_size_bytes=file_limit, tmp_bytes=2**30),
        "serving": Limits(memory_bytes=s.sandbox_serving_memory_bytes, cpu_seconds=s.sandbox_serving_cpu_seconds,
                          file_size_bytes=64 * 2**20),
    }
    model_limits = None
    if any(v is not None for v in (s.max_model_parameters, s.max_model_input_elements, s.max_model_activation_elements)):
        from equiprune.engine.models.footprint import ModelLimits

        machine = ModelLimits.for_machine()
        model_limits = {
            "max_parameters": s.max_model_parameters or machine.max_parameters,
            "max_input_elements": s.max_model_input_elements or machine.max_input_elements,
            "max_activation_elements": s.max_model_activation_elements or machine.max_activation_elements,
        }
    return Sandbox(SandboxConfig(limits=limits, uid_base=s.sandbox_uid_base,
                                 require_full_isolation=s.sandbox_isolation == "full", model_limits=model_limits,
                                 max_dataset_bytes=s.max_dataset_bytes, work_root=str(s.data_dir / "sandbox")))
