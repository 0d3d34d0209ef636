"""The equiprune client: SDK and CLI. Imports neither torch nor ray (nor numpy).

    from equiprune.client import EquipruneClient, specs

    with EquipruneClient("127.0.0.1:9000") as client:
        job = client.create_job(specs.prune_and_finetune_spec(
            model="art-…", dataset="sample:digits", group_by=["cohort"], sparsity=0.9))
        job = client.wait_job(job.job_id)

Modules: sdk (EquipruneClient), serving (its deploy/predict/outcomes/metrics calls), specs
(job spec builders), errors (EquipruneError), retry (the retry policy), transfers (resumable
uploads and downloads), tables and progress (text output), plots (the optional matplotlib
PNG), runner, demo, serving_commands and cli (the `equiprune` command).
"""

from . import specs
from .errors import EquipruneError
from .retry import RetryPolicy
from .sdk import DEFAULT_TARGET, EquipruneClient
from .specs import SpecError

__all__ = ["DEFAULT_TARGET", "EquipruneClient", "EquipruneError", "RetryPolicy", "SpecError", "specs"]
