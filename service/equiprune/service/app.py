"""The Serve application: the gRPC ingress bound to the job manager, the model server and
the monitor.

`build_app(settings)` is what the launcher runs; `app_builder` is the import path a Serve
config file names (deploy/serve.yaml), so `serve run` / `serve deploy` run the very same
application. Serve's gRPC proxy must import the servicer functions below, which is why the
package has to be installed (`pip install -e .`), not merely on the driver's sys.path.
"""

from __future__ import annotations

from ray.serve import Application

from equiprune.service.rpc.ingress import Ingress
from equiprune.service.jobs.manager import JobManager
from equiprune.service.serving.monitoring import MonitorService
from equiprune.service.serving.model_server import ModelServer
from equiprune.service.factory import prepare_data_dir
from equiprune.service.settings import ServerSettings

GRPC_SERVICER_FUNCTIONS = [
    "equiprune.service.rpc.servicers.add_ArtifactServiceServicer_to_server",
    "equiprune.service.rpc.servicers.add_JobServiceServicer_to_server",
    "equiprune.service.rpc.servicers.add_ServingServiceServicer_to_server",
    "equiprune.service.rpc.servicers.add_TenantServiceServicer_to_server",
    "equiprune.service.rpc.servicers.add_HealthServicer_to_server",
    # Last: reflection lists what is registered, and it guards against Serve's own.
    "equiprune.service.rpc.servicers.add_ServerReflectionServicer_to_server",
]


def build_app(settings: ServerSettings) -> Application:
    prepare_data_dir(settings)
    as_json = settings.model_dump(mode="json")
    return Ingress.bind(JobManager.bind(as_json), as_json, ModelServer.bind(as_json), MonitorService.bind(as_json))


def app_builder(args: dict) -> Application:
    """For Serve config files: `args` are ServerSettings fields (data_dir at least). As with
    `equiprune serve`, the first build creates the admin token, in `<data_dir>/admin.token`
    (docs/tenants.md)."""
    from equiprune.service.tenants.bootstrap import prepare_admin_token

    settings = ServerSettings.model_validate(args)
    prepare_admin_token(settings)
    return build_app(settings)
