"""Tenants over real gRPC (issue #11): a second tenant's token never sees, changes or learns of
the first tenant's resources through any RPC; no token is UNAUTHENTICATED everywhere; quotas
are RESOURCE_EXHAUSTED naming the quota; a revoked token stops working.

The isolation table has a row for every RPC of every equiprune service, and the test fails if
an RPC is added without one (`test_every_rpc_has_an_isolation_row`).
"""

from __future__ import annotations

import hashlib
import socket
import subprocess

import grpc
import pytest
from google.protobuf import message_factory
import torch

from equiprune.client import specs
from equiprune.client.credentials import open_channel
from equiprune.client.errors import EquipruneError
from equiprune.client.sdk import EquipruneClient
from equiprune.client.tenants import quotas_message
from equiprune.engine.demo_data import digits_group_dataset
from equiprune.engine.finetune.config import FinetuneConfig
from equiprune.engine.finetune.loop import finetune
from equiprune.engine.models.io import save_safetensors
from equiprune.engine.models.registry import ArchitectureSpec, build_model
from equiprune.v1 import (artifacts_pb2, artifacts_pb2_grpc, jobs_pb2, jobs_pb2_grpc, serving_pb2,
                          serving_pb2_grpc, tenants_pb2, tenants_pb2_grpc)

DIGITS_CNN = ArchitectureSpec("small_cnn", {"num_classes": 10, "in_channels": 1, "input_size": 8, "channels": [8]})
SERVICES = (artifacts_pb2.DESCRIPTOR.services_by_name["ArtifactService"],
            jobs_pb2.DESCRIPTOR.services_by_name["JobService"],
            serving_pb2.DESCRIPTOR.services_by_name["ServingService"],
            tenants_pb2.DESCRIPTOR.services_by_name["TenantService"])
OTHER_JOB, OTHER_ARTIFACT, OTHER_UPLOAD = "job-0123456789abcdef", "art-0123456789abcdef", "upl-0123456789abcdef"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tenant-model")
    dataset = digits_group_dataset()
    torch.manual_seed(0)
    model = build_model(DIGITS_CNN)
    finetune(model, {}, dataset.select(("cohort",), split="train", min_group_size=0),
             FinetuneConfig(method="naive", epochs=3, lr=0.05))
    save_safetensors(model.eval(), DIGITS_CNN, folder / "m.safetensors")
    return folder / "m.safetensors"


@pytest.fixture(scope="module")
def world(server, model_file):
    """Tenants alpha (with one of everything) and beta, and their clients."""
    admin = EquipruneClient(server.target, timeout=120)
    tokens = {}
    for name in ("alpha", "beta"):
        admin.create_tenant(name, quotas=quotas_message(max_upload_sessions=3, max_concurrent_jobs=2))
        tokens[name] = admin.create_token(name, f"{name} in the isolation test").secret
    a = EquipruneClient(server.target, timeout=120, token=tokens["alpha"])
    b = EquipruneClient(server.target, timeout=120, token=tokens["beta"])
    dataset = a.import_uri("sample:digits", kind="dataset")
    model = a.upload_file(model_file, "model")
    job = a.wait_job(a.create_job(specs.evaluate_spec(model=model.artifact_id, dataset=dataset.artifact_id,
                                                      group_by="cohort"), request_id="alpha-eval").job_id, timeout=300)
    assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED, job.error
    a.deploy_model("digits", model.artifact_id, ["cohort"], reference_job_id=job.job_id)
    a.deploy_model("alpha-only", model.artifact_id, ["cohort"], reference_job_id=job.job_id)
    prediction = a.predict("digits", [([0.0] * 64, {"cohort": "minority"})])[0]
    upload = a._unary(a._artifacts.StartUpload, artifacts_pb2.StartUploadRequest(
        kind=artifacts_pb2.ARTIFACT_KIND_MODEL, display_name="open.bin", size_bytes=10,
        sha256=hashlib.sha256(b"0123456789").hexdigest()))
    # beta serves a model under the same name, from the same bytes, uploaded by itself.
    b_model = b.upload_file(model_file, "model")
    b.deploy_model("digits", b_model.artifact_id, ["cohort"], reference_accuracy={"minority": 0.9, "majority": 0.9},
                   input_shape=[1, 8, 8])
    yield {"admin": admin, "a": a, "b": b, "tokens": tokens, "dataset": dataset.artifact_id,
           "model": model.artifact_id, "b_model": b_model.artifact_id, "job": job.job_id,
           "prediction": prediction.prediction_id, "upload": upload.upload_id}
    for client in (admin, a, b):
        client.close()


def _stubs(channel):
    return (artifacts_pb2_grpc.ArtifactServiceStub(channel), jobs_pb2_grpc.JobServiceStub(channel),
            serving_pb2_grpc.ServingServiceStub(channel), tenants_pb2_grpc.TenantServiceStub(channel))


def _code(call):
    """The status code of a call (draining a stream), or OK."""
    try:
        result = call()
        if hasattr(result, "__iter__") and not hasattr(result, "ListFields"):
            list(result)
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as err:
        return err.code(), err.details()


def _isolation_rows(w, own: str):
    """RPC name → (request as beta on alpha's resource, the same request on a resource that
    does not exist or None, and what beta must get). `own` is alpha's resource id or name."""
    art, job, upl = w["model"], w["job"], w["upload"]
    spec_on = lambda dataset: specs.evaluate_spec(model=w["b_model"], dataset=dataset, group_by="cohort")  # noqa: E731
    deploy = lambda **kw: serving_pb2.DeployModelRequest(name="stolen", group_by=["cohort"], **kw)  # noqa: E731
    nf = grpc.StatusCode.NOT_FOUND
    instance = serving_pb2.Instance(values=[0.0] * 64, groups={"cohort": "minority"})
    record = serving_pb2.EvaluationRecord(label=1, predicted_class=1, groups={"cohort": "minority"})
    return {
        "StartUpload": None,  # creates beta's own session: covered by the quota test
        "PutUploadChunk": (artifacts_pb2.PutUploadChunkRequest(upload_id=upl, offset=0, data=b"01234"),
                           artifacts_pb2.PutUploadChunkRequest(upload_id=OTHER_UPLOAD, offset=0, data=b"01234"), nf),
        "GetUpload": (artifacts_pb2.GetUploadRequest(upload_id=upl), artifacts_pb2.GetUploadRequest(upload_id=OTHER_UPLOAD), nf),
        "FinishUpload": (artifacts_pb2.FinishUploadRequest(upload_id=upl),
                         artifacts_pb2.FinishUploadRequest(upload_id=OTHER_UPLOAD), nf),
        "ImportArtifact": None,  # beta's import of the same content gets its own id: checked below
        "GetArtifact": (artifacts_pb2.GetArtifactRequest(artifact_id=art),
                        artifacts_pb2.GetArtifactRequest(artifact_id=OTHER_ARTIFACT), nf),
        "ListArtifacts": None,  # lists: checked below, alpha's ids never appear
        "DownloadArtifact": (artifacts_pb2.DownloadArtifactRequest(artifact_id=art),
                             artifacts_pb2.DownloadArtifactRequest(artifact_id=OTHER_ARTIFACT), nf),
        "CreateJob": (jobs_pb2.CreateJobRequest(spec=spec_on(w["dataset"])),
                      jobs_pb2.CreateJobRequest(spec=spec_on(OTHER_ARTIFACT)), nf),
        "GetJob": (jobs_pb2.GetJobRequest(job_id=job), jobs_pb2.GetJobRequest(job_id=OTHER_JOB), nf),
        "ListJobs": None,
        "CancelJob": (jobs_pb2.CancelJobRequest(job_id=job), jobs_pb2.CancelJobRequest(job_id=OTHER_JOB), nf),
        "WaitJob": (jobs_pb2.WaitJobRequest(job_id=job), jobs_pb2.WaitJobRequest(job_id=OTHER_JOB), nf),
        "WatchJob": (jobs_pb2.WatchJobRequest(job_id=job), jobs_pb2.WatchJobRequest(job_id=OTHER_JOB), nf),
        "DeployModel": (deploy(artifact_id=art, reference_job_id=w["job"]),
                        deploy(artifact_id=OTHER_ARTIFACT, reference_job_id=w["job"]), nf),
        "UndeployModel": (serving_pb2.UndeployModelRequest(name=own), serving_pb2.UndeployModelRequest(name="absent"), nf),
        "ListServedModels": None,
        "Predict": (serving_pb2.PredictRequest(model=own, instances=[instance]),
                    serving_pb2.PredictRequest(model="absent", instances=[instance]), nf),
        "ReportOutcomes": None,  # checked below: alpha's prediction id is "unknown" to beta and stays pending
        "RecordEvaluations": (serving_pb2.RecordEvaluationsRequest(model=own, records=[record]),
                              serving_pb2.RecordEvaluationsRequest(model="absent", records=[record]), nf),
        "GetModelMetrics": (serving_pb2.GetModelMetricsRequest(model=own),
                            serving_pb2.GetModelMetricsRequest(model="absent"), nf),
        **{name: "admin-only" for name in ("CreateTenant", "ListTenants", "UpdateTenantQuotas", "CreateToken",
                                           "RevokeToken", "ListTokens")},
        "WhoAmI": None,  # says beta
    }


def test_every_rpc_has_an_isolation_row(world):
    rpcs = {m.name for service in SERVICES for m in service.methods}
    assert rpcs == set(_isolation_rows(world, "alpha-only")), "a new RPC needs a row in _isolation_rows"


def test_another_tenant_gets_not_found_exactly_as_for_nothing(server, world):
    with server.channel(world["tokens"]["beta"]) as channel:
        stubs = _stubs(channel)  # in the order of SERVICES
        by_rpc = {m.name: stubs[i] for i, service in enumerate(SERVICES) for m in service.methods}
        for rpc, row in _isolation_rows(world, "alpha-only").items():
            if row is None or row == "admin-only":
                continue
            theirs, absent, expected = row
            method = getattr(by_rpc[rpc], rpc)
            code, details = _code(lambda: method(theirs, timeout=60))
            absent_code, absent_details = _code(lambda: method(absent, timeout=60))
            assert code == expected, (rpc, code, details)
            # No existence leak: the same words as for a resource nobody has, but for its id.
            for own_id, other in ((world["model"], OTHER_ARTIFACT), (world["dataset"], OTHER_ARTIFACT),
                                  (world["job"], OTHER_JOB),
                                  (world["upload"], OTHER_UPLOAD), ("'alpha-only'", "'absent'")):
                details = details.replace(own_id, other)
            assert (code, details) == (absent_code, absent_details), rpc
        for rpc, row in _isolation_rows(world, "digits").items():
            if row == "admin-only":
                code, details = _code(lambda: getattr(by_rpc[rpc], rpc)(_empty_request(rpc), timeout=30))
                assert code == grpc.StatusCode.PERMISSION_DENIED, (rpc, code)

    a = world["a"]
    # Nothing of alpha's changed: its upload is still open, its job done, its model served.
    assert a.get_job(world["job"]).state == jobs_pb2.JOB_STATE_SUCCEEDED
    assert sorted(m.name for m in a.list_served_models()) == ["alpha-only", "digits"]
    assert a._unary(a._artifacts.GetUpload, artifacts_pb2.GetUploadRequest(upload_id=world["upload"])).upload


def _empty_request(rpc: str):
    for service in SERVICES:
        if rpc in service.methods_by_name:
            return message_factory.GetMessageClass(service.methods_by_name[rpc].input_type)()
    raise KeyError(rpc)


def test_lists_imports_and_served_names_are_per_tenant(world):
    a, b = world["a"], world["b"]
    alpha_ids = {x.artifact_id for x in a.list_artifacts()}
    beta_ids = {x.artifact_id for x in b.list_artifacts()}
    assert world["model"] in alpha_ids and not alpha_ids & beta_ids
    assert world["job"] not in {j.job_id for j in b.list_jobs()}
    # The same content imported by beta: its own artifact, not alpha's id (which would say who holds what).
    assert b.import_uri("sample:digits", kind="dataset").artifact_id not in alpha_ids
    # The same request id: beta's own job.
    own = b.create_job(specs.evaluate_spec(model=world["b_model"], dataset=b.import_uri("sample:digits", "dataset")
                                           .artifact_id, group_by="cohort"), request_id="alpha-eval")
    assert own.job_id != world["job"]
    # The same served name: each sees its own.
    assert [(m.name, m.artifact_id) for m in b.list_served_models()] == [("digits", world["b_model"])]
    assert {(m.name, m.artifact_id) for m in a.list_served_models()} == {("digits", world["model"]),
                                                                          ("alpha-only", world["model"])}
    before = a.get_model_metrics("digits").totals
    b.predict("digits", [([0.0] * 64, {"cohort": "minority"})])
    b.record_evaluations("digits", [{"label": 1, "predicted_class": 1, "groups": {"cohort": "minority"}}])
    after = a.get_model_metrics("digits")
    assert after.model.artifact_id == world["model"] and after.totals == before  # beta's traffic is beta's

    # Beta's own model with alpha's job as reference, or alpha's model as shadow: NOT_FOUND, naming the field.
    for extra, field in (({"reference_job_id": world["job"]}, "reference_job_id"),
                         ({"shadow_artifact_id": world["model"], "reference_accuracy": {"minority": 0.9},
                           "input_shape": [1, 8, 8]}, "shadow_artifact_id")):
        with pytest.raises(EquipruneError) as caught:
            b.deploy_model("borrowed", world["b_model"], ["cohort"], **extra)
        assert caught.value.code == grpc.StatusCode.NOT_FOUND and caught.value.field == field, caught.value


def test_outcomes_for_another_tenants_prediction_change_nothing(world):
    a, b = world["a"], world["b"]
    counts = b.report_outcomes([(world["prediction"], 3)])
    assert counts["unknown"] == 1 and counts["joined"] == 0
    assert b.report_outcomes([("alpha/digits.000000000000000000000000", 3)])["unknown"] == 1
    # Alpha's prediction is still pending: alpha's own outcome joins it.
    assert a.report_outcomes([(world["prediction"], 3)])["joined"] == 1


def test_no_token_or_a_bad_one_is_unauthenticated_on_every_rpc(server):
    for token in (None, "ept_not-a-real-token", "Bearer"):
        with open_channel(server.target, [], token=token) as channel:
            for service in SERVICES:
                for method in service.methods:
                    path = f"/{service.full_name}/{method.name}"
                    call = (channel.unary_stream if method.server_streaming else channel.unary_unary)(
                        path, request_serializer=lambda m: m.SerializeToString(), response_deserializer=lambda b: b)
                    code, details = _code(lambda: call(_empty_request(method.name), timeout=30))
                    assert code == grpc.StatusCode.UNAUTHENTICATED, (path, token, code, details)
                    assert "Bearer" in details


def test_quotas_are_resource_exhausted_naming_the_quota(world):
    admin, b = world["admin"], world["b"]
    admin.update_tenant_quotas("beta", quotas_message(max_upload_sessions=1))
    start = lambda: b._unary(b._artifacts.StartUpload, artifacts_pb2.StartUploadRequest(  # noqa: E731
        kind=artifacts_pb2.ARTIFACT_KIND_DATASET, display_name="x.bin", size_bytes=4,
        sha256=hashlib.sha256(b"abcd").hexdigest()))
    start()
    with pytest.raises(EquipruneError) as caught:
        start()
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and caught.value.field == "quotas.max_upload_sessions"
    admin.update_tenant_quotas("beta", quotas_message(max_upload_sessions=5, max_stored_bytes=1024))
    with pytest.raises(EquipruneError) as caught:
        start()
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and caught.value.field == "quotas.max_stored_bytes"
    usage = b.whoami()
    assert usage.tenant.name == "beta" and usage.usage.open_upload_sessions == 1 and usage.usage.stored_bytes > 1024


def test_concurrent_jobs_quota_and_a_revoked_token(server, world):
    admin = world["admin"]
    admin.create_tenant("gamma", quotas=quotas_message(max_concurrent_jobs=1))
    reply = admin.create_token("gamma")
    c = EquipruneClient(server.target, timeout=120, token=reply.secret, retries=0)
    dataset = c.import_uri("sample:digits", kind="dataset").artifact_id
    spec = specs.train_spec(dataset=dataset, group_by="cohort", architecture="small_cnn", epochs=200,
                            architecture_kwargs={"num_classes": 10, "in_channels": 1, "input_size": 8})
    first = c.create_job(spec)
    with pytest.raises(EquipruneError) as caught:
        c.create_job(spec)
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert caught.value.field == "quotas.max_concurrent_jobs"
    c.cancel_job(first.job_id)
    admin.revoke_token(reply.token.token_id)
    with pytest.raises(EquipruneError) as caught:
        c.whoami()
    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
    c.close()


def test_the_grpc_port_listens_on_loopback_only(server):
    port = int(server.target.rsplit(":", 1)[1])
    listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout
    assert listening.strip(), "nothing listens on the gRPC port"
    for line in listening.splitlines():
        local = line.split()[3]
        assert local.startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:", "[::1]:")), local
    # And no other address of this machine answers on it.
    others = {a for a in socket.gethostbyname_ex(socket.gethostname())[2] if not a.startswith("127.")}
    for address in others:
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex((address, port)) != 0, address


def test_the_embedded_rays_ports_refuse_a_client_without_its_token(server):
    """Ray's GCS of the embedded default requires the token in <data dir>/ray.token."""
    import glob
    import os
    import sys

    (port_file,) = glob.glob(os.path.join(server.ray_tmp, "ray", "session_latest", "gcs_server_port_*"))
    address = f"127.0.0.1:{open(port_file).read().strip()}"
    probe = ("import sys, ray\n"
             "try:\n    ray.init(address=sys.argv[1], log_to_driver=False)\nexcept Exception as e:\n"
             "    print('REFUSED', type(e).__name__); sys.exit(0)\nprint('CONNECTED')")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    for mode in ("disabled", "token"):  # no token at all; token mode with a wrong token
        run_env = {**env, "RAY_AUTH_MODE": mode, "RAY_AUTH_TOKEN": "0" * 64, "RAY_TMPDIR": server.ray_tmp}
        out = subprocess.run([sys.executable, "-c", probe, address], capture_output=True, text=True, timeout=120,
                             env=run_env).stdout
        assert "REFUSED" in out and "CONNECTED" not in out, (mode, out)
