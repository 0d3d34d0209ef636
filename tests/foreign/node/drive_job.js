#!/usr/bin/env node
// A foreign client: drives a whole equiprune job over gRPC from Node alone (@grpc/grpc-js +
// @grpc/proto-loader loading the .proto files as they are), to prove the contract is usable
// without the Python SDK. Prints one JSON summary on stdout; tests/service/test_contract_e2e.py
// runs it against a real server and checks the summary.
//
//   node drive_job.js --target 127.0.0.1:50051 --proto-root ../../../proto \
//        --google-protos <dir holding google/rpc/status.proto> [--fallback-model <artifact id>]
//
// --google-protos: googleapis-common-protos ships google/rpc/*.proto inside its Python
// package (site-packages); the test passes that folder. --fallback-model: a model to evaluate
// when training does not succeed, so the rest of the flow is still exercised (the summary
// says so; the test still fails on the training part).
'use strict';

const fs = require('fs');
const path = require('path');
const protobuf = require('protobufjs');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

function args() {
  const out = {};
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) out[argv[i].replace(/^--/, '')] = argv[i + 1];
  for (const need of ['target', 'proto-root', 'google-protos']) {
    if (!out[need]) throw new Error(`missing --${need}`);
  }
  return out;
}

const opts = args();
// keepCase: field names as in the .proto; enums as names; every field present (defaults).
const LOAD = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true,
  includeDirs: [opts['proto-root'], opts['google-protos'], path.join(__dirname, 'protos')] };
const services = grpc.loadPackageDefinition(protoLoader.loadSync(
  ['equiprune/v1/artifacts.proto', 'equiprune/v1/jobs.proto', 'grpc/health/v1/health.proto'], LOAD));

const creds = grpc.credentials.createInsecure();
const artifacts = new services.equiprune.v1.ArtifactService(opts.target, creds);
const jobs = new services.equiprune.v1.JobService(opts.target, creds);
const health = new services.grpc.health.v1.Health(opts.target, creds);

// Every API call carries `authorization: Bearer <token>` (the token comes in EQUIPRUNE_TOKEN).
function call(client, method, request, timeoutS = 120, token = process.env.EQUIPRUNE_TOKEN) {
  const metadata = new grpc.Metadata();
  if (token) metadata.add('authorization', `Bearer ${token}`);
  return new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline: Date.now() + timeoutS * 1000 },
      (err, res) => (err ? reject(err) : resolve(res)));
  });
}

// google.rpc.Status from an error's trailer, with BadRequest / ErrorInfo details unpacked.
function structured(err) {
  const raw = err.metadata && err.metadata.get('grpc-status-details-bin')[0];
  if (!raw) return null;
  const status = messageType('google.rpc.Status').decode(raw);
  const out = { code: status.code, message: status.message, field_violations: [], reasons: [] };
  for (const any of status.details) {
    const name = any.type_url.split('/').pop();
    if (name === 'google.rpc.BadRequest') {
      const bad = messageType(name).decode(any.value);
      for (const v of bad.field_violations || bad.fieldViolations || []) {
        out.field_violations.push({ field: v.field, description: v.description });
      }
    } else if (name === 'google.rpc.ErrorInfo') {
      out.reasons.push(messageType(name).decode(any.value).reason);
    }
  }
  return out;
}

// The error-detail messages as protobufjs types (proto-loader's definitions carry no decoder
// for bytes that are not a call's message), resolved through the same include folders.
const rpcRoot = new protobuf.Root();
rpcRoot.resolvePath = (origin, target) => {
  const dir = LOAD.includeDirs.find((d) => fs.existsSync(path.join(d, target)));
  return dir ? path.join(dir, target) : target;
};
rpcRoot.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto'], { keepCase: true });
function messageType(name) { return rpcRoot.lookupType(name); }

function failure(err) {
  return { code: grpc.status[err.code], details: err.details, status: structured(err) };
}

async function waitDone(jobId) {
  for (;;) {
    const { job } = await call(jobs, 'WaitJob', { job_id: jobId, timeout: { seconds: 60 } }, 90);
    if (job.done) return job;
  }
}

async function main() {
  const summary = {};
  const { artifact: dataset } = await call(artifacts, 'ImportArtifact',
    { kind: 'ARTIFACT_KIND_DATASET', source: { uri: 'sample:digits' } });
  summary.dataset = { artifact_id: dataset.artifact_id, sha256: dataset.sha256 };

  // Train: the kwargs travel as JSON text (jobs.proto, TrainOptions.architecture_kwargs).
  const kwargs = { num_classes: 10, in_channels: 1, input_size: 8 };
  let model = null;
  try {
    const { job } = await call(jobs, 'CreateJob', { spec: { kind: 'JOB_KIND_TRAIN', dataset: { artifact_id: dataset.artifact_id },
      train: { architecture: 'small_cnn', architecture_kwargs: JSON.stringify(kwargs), epochs: 2 } } });
    const done = await waitDone(job.job_id);
    const out = (done.result && done.result.outputs || []).find((o) => o.artifact.kind === 'ARTIFACT_KIND_MODEL');
    summary.train = { job_id: done.job_id, state: done.state, error: done.error,
      sent_kwargs: kwargs, echoed_kwargs: done.spec.train.architecture_kwargs,
      model: out ? out.artifact.artifact_id : null };
    model = out ? out.artifact.artifact_id : null;
  } catch (err) {
    summary.train = { rpc_error: failure(err) };
  }
  if (!model && opts['fallback-model']) {
    model = opts['fallback-model'];
    summary.used_fallback_model = true;
  }

  if (model) {
    const { job } = await call(jobs, 'CreateJob', { spec: { kind: 'JOB_KIND_EVALUATE', model: { artifact_id: model },
      dataset: { artifact_id: dataset.artifact_id }, data: { group_by: ['cohort'] } } });
    const done = await waitDone(job.job_id);
    const reports = (done.result && done.result.reports) || [];
    const report = reports.length ? reports[0].report : null;
    summary.evaluate = { job_id: done.job_id, state: done.state, error: done.error, stages: reports.map((r) => r.stage),
      overall_accuracy: report && report.overall ? report.overall.accuracy : null,
      groups: report ? (report.groups || []).map((g) => g.group) : [] };
  }

  const check = await call(health, 'Check', { service: 'equiprune.v1.JobService' });
  summary.health = check.status;

  // A bad request: its google.rpc.Status must decode here, in Node.
  try {
    await call(jobs, 'GetJob', { job_id: 'not-a-job' });
    summary.bad_request = { unexpectedly_ok: true };
  } catch (err) {
    summary.bad_request = failure(err);
  }
  // What an old JS client sent for the Struct: a plain object, now "[object Object]" text.
  try {
    await call(jobs, 'CreateJob', { spec: { kind: 'JOB_KIND_TRAIN', dataset: { artifact_id: dataset.artifact_id },
      train: { architecture: 'small_cnn', architecture_kwargs: kwargs, epochs: 1 } } });
    summary.object_kwargs = { unexpectedly_ok: true };
  } catch (err) {
    summary.object_kwargs = failure(err);
  }
  // No token: UNAUTHENTICATED, with its google.rpc.Status.
  try {
    await call(jobs, 'ListJobs', {}, 30, '');
    summary.no_token = { unexpectedly_ok: true };
  } catch (err) {
    summary.no_token = failure(err);
  }
  process.stdout.write(JSON.stringify(summary) + '\n');
}

main().then(() => process.exit(0), (err) => {
  process.stderr.write(`drive_job failed: ${err.stack || err}\n`);
  process.exit(1);
});
