"""Datasets in object storage: a real S3 API (moto's server on 127.0.0.1, over HTTP through s3fs),
the same pixels as from a local copy, concurrent fetches, and every store fault as a message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("s3fs", reason="the s3 extra: pip install -e '.[s3]'")
pytest.importorskip("moto", reason="moto[server] is in the dev extra")

from mlflow.tracking import MlflowClient  # noqa: E402

from helpers import free_ports  # noqa: E402
from loaderlab import PROJECT_ROOT  # noqa: E402
from loaderlab.benchmark import DECODE_LIMIT, BenchmarkConfig, run_benchmark  # noqa: E402
from loaderlab.benchmark.object_store import DUMMY_CREDENTIALS, LatencyS3Server  # noqa: E402
from loaderlab.data import DatasetError  # noqa: E402
from loaderlab.data.folder import folder_manifest  # noqa: E402
from loaderlab.data.storage import Storage, StoreError  # noqa: E402
from loaderlab.data.table import csv_manifest  # noqa: E402
from loaderlab.loaders import BadImageError, ImageDecoder, ImageSpec  # noqa: E402
from test_loaders import LOADER_NAMES, collect, make_loader  # noqa: E402

BUCKET = "photos"
SPEC = ImageSpec(32, 32, 3)


@pytest.fixture(scope="module")
def s3(tiny_root: Path):
    """The server, with the tiny dataset at s3://photos/tiny/ and a CSV of it at s3://photos/tables/."""
    import boto3

    saved = {k: os.environ.get(k) for k in DUMMY_CREDENTIALS}
    os.environ.update(DUMMY_CREDENTIALS)
    with LatencyS3Server() as server:
        client = boto3.client("s3", endpoint_url=server.endpoint_url, region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        rows = ["path,label"]
        for path in sorted(tiny_root.rglob("*.jpg")):
            key = f"tiny/{path.relative_to(tiny_root).as_posix()}"
            client.upload_file(str(path), BUCKET, key)
            rows.append(f"../{key},{path.parent.name}")
        client.put_object(Bucket=BUCKET, Key="tables/train.csv", Body="\n".join(rows).encode())
        server.client = client
        yield server
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def storage(server: LatencyS3Server, **options) -> Storage:
    return Storage({"endpoint_url": server.endpoint_url, **options})


def relative(paths, root: str) -> list[str]:
    return [str(p)[len(root) :].lstrip("/") for p in paths]


def test_a_bucket_lists_as_the_same_manifest_as_the_local_copy(s3, tiny_root: Path) -> None:
    options = {"endpoint_url": s3.endpoint_url}
    s3.reset_counts()
    remote = folder_manifest(f"s3://{BUCKET}/tiny", storage_options=options)
    assert s3.requests <= 3  # one paginated listing, not a request per object
    local = folder_manifest(str(tiny_root))
    assert remote.class_names == local.class_names
    assert relative(remote.train.paths, f"s3://{BUCKET}/tiny") == relative(local.train.paths, str(tiny_root))
    assert remote.train.labels.tolist() == local.train.labels.tolist()
    table = csv_manifest(f"s3://{BUCKET}/tables/train.csv", storage_options=options)
    assert sorted(table.train.paths + table.val.paths) == sorted(remote.train.paths + remote.val.paths)


def test_a_scheme_alias_lists_the_same_class_names(s3, tiny_root: Path) -> None:
    """s3a:// lists as s3://: class names come from the paths, not from the length of the user's root."""
    alias = folder_manifest(f"s3a://{BUCKET}/tiny/", storage_options={"endpoint_url": s3.endpoint_url})
    assert alias.class_names == folder_manifest(str(tiny_root)).class_names


@pytest.mark.parametrize(
    ("root", "listed"),
    [
        ("az://box/photos", "abfs://box/photos/cat/1.jpg"),
        ("s3a://bucket/photos/", "s3://bucket/photos/cat/1.jpg"),
        ("gcs://bucket/photos", "gs://bucket/photos/cat/1.jpg"),
        ("abfs://box/photos", "abfs://box/photos/cat/1.jpg"),
    ],
)
def test_paths_under_a_root_ignore_the_scheme_alias(root: str, listed: str) -> None:
    from loaderlab.data.folder import below

    assert below(root, listed) == "cat/1.jpg"
    with pytest.raises(DatasetError, match="not under it"):
        below(root, listed.replace("photos", "other"))


def test_a_missing_object_named_like_a_status_code_is_missing_not_refused(s3) -> None:
    from loaderlab.data.storage import explain

    url = f"s3://{BUCKET}/tiny/no-such-class/20240403.jpg"
    [error] = storage(s3).read_many([url])
    assert isinstance(error, FileNotFoundError)
    assert explain(url, error) == f"{url}: no such object (deleted, or a wrong prefix)."
    assert "no such object" in explain(url, FileNotFoundError(f"{url} 403 401"))


@pytest.mark.parametrize("name", LOADER_NAMES)
def test_every_loader_reads_the_store_with_the_local_pixels(s3, tiny_root: Path, name: str) -> None:
    """packed too: its shards stay local, the sources it packs are read from the store."""
    remote = folder_manifest(f"s3://{BUCKET}/tiny", storage_options={"endpoint_url": s3.endpoint_url}).val
    local = folder_manifest(str(tiny_root)).val
    got = []
    for split in (remote, local):
        loader = make_loader(name, deterministic=True) if name == "tfdata" else make_loader(name)
        with loader.feed(split, ImageDecoder(SPEC, storage=storage(s3)), 8, training=False) as feed:
            got.append(collect(feed))
    np.testing.assert_array_equal(got[0][1], got[1][1])
    np.testing.assert_array_equal(got[0][0], got[1][0])


def test_a_batch_is_fetched_concurrently_up_to_the_knob(s3) -> None:
    options = {"endpoint_url": s3.endpoint_url}
    urls = folder_manifest(f"s3://{BUCKET}/tiny", storage_options=options).train.paths
    s3.latency_s = 0.05
    try:
        for limit, expected in ((1, 1), (16, 16)):
            s3.reset_counts()
            fetched = Storage(options, limit).read_many(urls[:32])
            assert all(isinstance(data, bytes) for data in fetched)
            assert s3.max_in_flight == expected if limit == 1 else 4 <= s3.max_in_flight <= expected
    finally:
        s3.latency_s = 0.0


def test_store_faults_name_the_url_and_what_to_change_never_the_credentials(s3) -> None:
    options = {"endpoint_url": s3.endpoint_url}
    with pytest.raises(StoreError, match=r"s3://no-such-bucket/x: the bucket 'no-such-bucket' does not"):
        folder_manifest("s3://no-such-bucket/x", storage_options=options)
    with pytest.raises(DatasetError, match=r"s3://photos/empty has no class folders.*data.root"):
        folder_manifest(f"s3://{BUCKET}/empty", storage_options=options)

    # A deleted object and a truncated one are bad images: the policy applies, the message names them.
    body = s3.client.get_object(Bucket=BUCKET, Key=first_key(s3))["Body"].read()
    s3.client.put_object(Bucket=BUCKET, Key="faults/a/gone.jpg", Body=body)
    s3.client.put_object(Bucket=BUCKET, Key="faults/a/cut.jpg", Body=body[: len(body) // 2])
    faults = f"s3://{BUCKET}/faults"
    split = folder_manifest(faults, val_root=faults, storage_options=options)
    s3.client.delete_object(Bucket=BUCKET, Key="faults/a/gone.jpg")  # deleted after the listing
    decoder = ImageDecoder(SPEC, storage=storage(s3))
    with pytest.raises(BadImageError, match=r"s3://photos/faults/a/cut.jpg.*truncated JPEG"):
        decoder.decode(f"s3://{BUCKET}/faults/a/cut.jpg")
    with pytest.raises(BadImageError, match=r"s3://photos/faults/a/gone.jpg.*object does not exist"):
        decoder.decode(f"s3://{BUCKET}/faults/a/gone.jpg")
    skipping = ImageDecoder(SPEC, "skip", storage=storage(s3))
    images, labels = skipping.batch(list(split.train.paths), split.train.labels)
    assert len(images) == len(labels) == 0 and len(skipping.skipped) == 2

    wrong = {"endpoint_url": s3.endpoint_url, "key": "AKIDWRONG", "secret": "not-the-secret-123"}
    refused_credentials = pytest.raises(StoreError, match="refused the credentials.*AWS_ACCESS_KEY_ID")
    with s3.checking_credentials(), refused_credentials as refused:
        folder_manifest(f"s3://{BUCKET}/tiny", storage_options=wrong)
    assert "not-the-secret-123" not in str(refused.value) and "AKIDWRONG" not in str(refused.value)
    assert refused.value.__cause__ is None and refused.value.__suppress_context__  # no botocore traceback


def first_key(s3) -> str:
    return s3.client.list_objects_v2(Bucket=BUCKET, Prefix="tiny/")["Contents"][0]["Key"]


def test_a_sweep_from_the_bucket_logs_no_secret_whatever_the_override_form(s3, tmp_path: Path) -> None:
    """The README's one-dict override in a sweep, so that Hydra's own record of it (.hydra/), the
    job's and the parent's hydra_overrides tags and the launcher's console line are all checked;
    only values under known-safe keys are shown."""
    secrets = ["s3cr3t-never-logged-7f1", "session-token-never-logged-9c2"]
    options = (
        f"{{key: testing, secret: {secrets[0]}, token: {secrets[1]}, "
        f"endpoint_url: '{s3.endpoint_url}', client_kwargs: {{region_name: us-east-1}}}}"
    )
    command = bucket_command(
        tmp_path,
        f"+data.storage_options={options}",
        "trainer.seed=0",  # with -m, a sweep of one job: its parent run and the launcher's line
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )
    command.insert(2, "-m")  # before the overrides: argparse takes no option between positionals
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert secrets[0] in (tmp_path / "sweep" / "0" / ".hydra" / "overrides.yaml").read_text()  # Hydra's copy
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("loaderlab").experiment_id])
    [parent] = [r for r in runs if r.data.tags.get("role") == "sweep"]
    jobs = [r for r in runs if r is not parent]
    assert len(jobs) == 1 and {r.info.status for r in runs} == {"FINISHED"}
    params = jobs[0].data.params
    assert params["data.storage_options.secret"] == params["data.storage_options.key"] == "***"
    assert params["data.storage_options.client_kwargs.region_name"] == "us-east-1"  # a safe key, shown
    assert params["data.storage_options.endpoint_url"] == s3.endpoint_url
    assert "secret: ***" in parent.data.tags["hydra_overrides"]
    everything = done.stdout + done.stderr
    for run in runs:
        everything += str(run.data.params) + str(run.data.tags)
        folder = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / run.info.run_id)))
        logged = [p for p in folder.rglob("*") if p.is_file()]
        everything += "".join(p.read_text(errors="replace") for p in logged if p.suffix != ".keras")
        if run is not parent:
            assert {".hydra", "train.log"} <= {p.relative_to(folder).parts[0] for p in logged}
    assert "#0 : " in everything  # the launcher's console line is among what was searched
    assert not [s for s in secrets if s in everything]


def test_storage_options_show_only_known_safe_keys_in_every_form() -> None:
    from loaderlab.data.storage import redact, redact_overrides, secret_values

    options = {
        "key": "AKIA1", "secret": "S1", "token": "T1", "aws_access_key_id": "AKIA2",
        "connection_string": "AccountName=a;AccountKey=K1", "sas_token": "sv=1&sig=X1",
        "client_kwargs": {"region_name": "eu-west-1", "aws_secret_access_key": "S2"},
        "endpoint_url": "http://alice:pw1@minio:9000", "anon": False,
    }  # fmt: skip
    shown = redact(options)
    assert shown["client_kwargs"] == {"region_name": "eu-west-1", "aws_secret_access_key": "***"}
    assert shown["endpoint_url"] == "http://***@minio:9000" and shown["anon"] is False
    hidden = ["AKIA1", "S1", "T1", "AKIA2", "AccountName=a;AccountKey=K1", "sv=1&sig=X1", "S2", "alice:pw1"]
    assert sorted(secret_values(options)) == sorted(hidden)
    assert not [s for s in hidden if s in str(shown)]
    overrides = [
        "+data.storage_options={key: AKIA1, secret: S1, endpoint_url: 'http://alice:pw1@minio:9000'}",
        "data.storage_options.connection_string='AccountName=a;AccountKey=K1'",
        "++data.storage_options.client_kwargs.aws_access_key_id=AKIA2",
        "+data.storage_options.client_kwargs={region_name: eu-west-1, aws_secret_access_key: S2}",
        "data.storage_options.region_name=eu-west-1",
        "data.storage_options.token=T1,T2",  # a sweep over secrets
        "data.storage_options.key={unparseable",
        "loader=tfdata",
    ]
    redacted = " ".join(redact_overrides(overrides))
    assert not [s for s in [*hidden, "T2"] if s in redacted]
    assert "region_name: eu-west-1" in redacted and "data.storage_options.region_name=eu-west-1" in redacted
    assert "minio:9000" in redacted and "loader=tfdata" in redacted


@pytest.mark.slow
def test_two_workers_train_from_the_bucket_each_reading_its_own_shard(s3, tmp_path: Path) -> None:
    """strategy=multiworker with no local copy: each training object is read once an epoch, by one worker."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "AWS_ENDPOINT_URL": s3.endpoint_url}
    s3.reset_counts()
    jobs, logs = [], []
    for index in range(2):
        folder = tmp_path / "run" / f"worker{index}"
        folder.mkdir(parents=True)
        task = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        logs.append(tmp_path / f"worker{index}.out")
        with open(logs[-1], "w") as out:
            command = bucket_command(tmp_path, "strategy=multiworker", "batch.train=8", "batch.val=8")
            jobs.append(
                subprocess.Popen(
                    [*command, f"hydra.run.dir={folder}"],
                    env={**env, "TF_CONFIG": json.dumps(task)},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
    try:
        codes = [job.wait(timeout=600) for job in jobs]
    finally:
        for job in jobs:
            if job.poll() is None:
                job.kill()
    assert codes == [0, 0], "".join(log.read_text()[-3000:] for log in logs)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("loaderlab").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["strategy.workers"] == "2"
    train = folder_manifest(f"s3://{BUCKET}/tiny", storage_options={"endpoint_url": s3.endpoint_url}).train
    reads = [s3.gets[url.removeprefix("s3:/")] for url in train.paths]
    trained = int(run.data.params["strategy.steps_per_epoch"]) * 2 * 8
    assert max(reads) == 1 and sum(reads) >= trained  # no object read by both workers; every step's read


def bucket_command(outputs: Path, *overrides: str) -> list[str]:
    """train.py on the tiny dataset in the bucket, one small epoch; endpoint and keys from the environment."""
    return [
        sys.executable,
        str(PROJECT_ROOT / "src" / "train.py"),
        f"paths.outputs={outputs}",
        "data=folder",
        f"data.root=s3://{BUCKET}/tiny",
        "model.input_size=32",
        "trainer.epochs=1",
        "trainer.verbose=2",
        *overrides,
    ]


def test_the_benchmark_reads_a_bucket_like_a_folder(
    s3, tmp_path: Path, tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint_url)  # the entries' processes find the store so
    s3.reset_counts()
    cfg = BenchmarkConfig(
        root=f"s3://{BUCKET}/tiny",
        input_size=32,
        batch_size=16,
        passes=1,
        rounds=1,
        entries=[DECODE_LIMIT, "tfdata"],
        tracking_uri=tracking_uri,
        artifact_location=str(tmp_path / "artifacts"),
        out=str(tmp_path / "results.json"),
        progress=False,
    )
    report = run_benchmark(cfg)
    assert not report.failures and [r.entry for r in report.results] == [DECODE_LIMIT, "tfdata"]
    assert all(r.images_per_pass == 96 for r in report.results)
    assert report.results[0].params["limit_reads"] == "fetched beforehand"
    assert set(s3.methods) <= {"GET", "HEAD"}  # the bucket was only read
