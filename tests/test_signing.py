"""Signed payloads: an object in storage that does not carry this deployment's MAC is never
unpickled, on the worker or on the host, and the call fails with ``IntegrityError`` naming the
object's key.  Each forged pickle would create a marker file when unpickled; the tests check that
the marker never appears.  Both backends: the local pool, and AWS through the stand-in."""

import os
import pickle
import stat

import pytest
import yaml

import dask_wren
from dask_wren import executor as executor_module
from dask_wren.config import make_storage
from dask_wren.signing import local_key
from lambda_worker import protocol
from lambda_worker.signing import KEY_VARIABLE, MAC_BYTES, SigningKey
from lambda_worker.storage import storage_from_spec
from tests.test_aws_backend import FakeLambda, make
from tests.test_deploy import aws, aws_env, run  # noqa: F401  (fixtures)

pytestmark = pytest.mark.timeout(120)


class Forged:
    """Unpickling this creates ``path``: the proof that forged bytes were (or were not) unpickled."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def forged(marker):
    return pickle.dumps(Forged(marker))


class Tampering:
    """The executor's store, with a bucket writer in between: ``put`` of a key containing ``part``
    stores ``tamper(bytes)`` instead; ``get`` of such a key returns ``tamper(bytes)`` (a record
    changed after the worker wrote it).  Workers reach the real store (the same spec)."""

    def __init__(self, store, part, tamper, *, on_put=True):
        self.store, self.part, self.tamper, self.on_put = store, part, tamper, on_put

    def __getattr__(self, name):
        return getattr(self.store, name)

    def put(self, key, data):
        self.store.put(key, self.tamper(data) if self.on_put and self.part in key else data)

    def get(self, key):
        data = self.store.get(key)
        return self.tamper(data) if not self.on_put and self.part in key else data

    def get_range(self, key, start, length):
        if self.on_put or self.part not in key:
            return self.store.get_range(key, start, length)
        return self.get(key)[start : start + length]


def identity(x):
    return x


def make_executor(settings, storage_wrapper):
    settings = dask_wren.Settings.from_config(timeout=60, **settings)
    return dask_wren.Executor(settings, storage=storage_wrapper(make_storage(settings)))


# -- the worker side: the job's objects --------------------------------------------------------


WORKER_OBJECTS = {  # object -> the part of its key the tampering targets
    "function": "/func.pkl",
    "argument": "/args/",
    "call list": "/calls/",
    "extra_env": "/env.json",
}


@pytest.mark.parametrize("how", ["tampered", "unsigned"])
@pytest.mark.parametrize("what", list(WORKER_OBJECTS))
def test_a_forged_job_object_fails_the_call_and_never_runs(backend_settings, tmp_path, monkeypatch, what, how):
    marker = tmp_path / f"ran-{what}-{how}".replace(" ", "-")
    if what in ("call list", "extra_env"):
        monkeypatch.setattr(executor_module, "MAX_EVENT_BYTES", 1200)  # to storage: 16 calls' list, a 2 kB extra_env
    if how == "tampered":  # the object's own MAC, forged bytes after it
        def tamper(data):
            return data[:MAC_BYTES] + forged(marker) if what != "argument" else forged(marker) + data

        if what == "call list":  # JSON: the worker reads call ids from it; change an argument range
            def tamper(data):
                return data[:MAC_BYTES] + data[MAC_BYTES:].replace(b'"range": [0, ', b'"range": [1, ')
    else:
        def tamper(data):
            return forged(marker) if what != "call list" else data[MAC_BYTES:]

    extra_env = {"BIG": "x" * 2000} if what == "extra_env" else None
    with make_executor(backend_settings, lambda s: Tampering(s, WORKER_OBJECTS[what], tamper)) as ex:
        futures = ex.map(identity, range(16), extra_env=extra_env, chunksize=16)
        for f in futures:
            with pytest.raises(dask_wren.IntegrityError, match=WORKER_OBJECTS[what]) as raised:
                f.result(timeout=60)
            assert "Nothing in it was unpickled" in str(raised.value)
            assert "another host or deployment with a different key" in str(raised.value)
            assert f.header["error"]["kind"] == protocol.FAIL_INTEGRITY
    assert not marker.exists()


def test_a_forged_input_record_fails_a_reduce_on_the_worker(backend_settings, tmp_path):
    marker = tmp_path / "ran-input"
    with dask_wren.default_executor(timeout=60, **backend_settings) as ex:
        inputs = ex.map(identity, [1, 2])
        assert dask_wren.get_all_results(inputs) == [1, 2]
        store = storage_from_spec(ex.storage.spec())
        record = store.get(inputs[1].key)
        header, start = protocol.decode_header(record, key=ex.signing_key, storage_key=inputs[1].key)
        store.put(inputs[1].key, record[:start] + forged(marker))  # the header's MAC still holds
        with pytest.raises(dask_wren.IntegrityError, match=inputs[1].key):
            ex.reduce(sum, inputs).result(timeout=60)
    assert not marker.exists()


# -- the host side: result records -------------------------------------------------------------


def big(n):
    return b"r" * n


@pytest.mark.parametrize("how", ["payload", "header", "unsigned"])
@pytest.mark.parametrize("size", ["small", "large"])
def test_a_forged_result_record_raises_on_the_host_and_is_never_unpickled(backend_settings, tmp_path, how, size):
    marker = tmp_path / f"ran-{how}-{size}"
    n = 100 if size == "small" else 2 << 20  # large: past the inline limit, the payload loads at result()

    def tamper(record):
        start = protocol.header_length(record)
        if how == "payload":  # a valid header, a forged payload
            return record[:start] + forged(marker)
        if how == "header":  # a forged header (status ok, no payload MAC), its old MAC
            head = record[8 : start - MAC_BYTES].replace(b'"payload_mac"', b'"payload_max"')
            return b"WREN" + len(head).to_bytes(4, "big") + head + record[start - MAC_BYTES : start] + forged(marker)
        return forged(marker)  # no record header at all

    with make_executor(backend_settings, lambda s: Tampering(s, "/r/", tamper, on_put=False)) as ex:
        future = ex.call_async(big, n)
        with pytest.raises(dask_wren.IntegrityError, match=future.key):
            future.result(timeout=60)
    assert not marker.exists()


def test_a_pickled_future_needs_its_key_where_it_is_loaded(tmp_path):
    with dask_wren.local_executor(storage_dir=str(tmp_path / "store"), workers=1, timeout=60) as ex:
        future = ex.call_async(identity, 5)
        assert future.result(timeout=60) == 5
        blob = pickle.dumps(future)
        assert local_key().text().encode() not in blob  # a pickled future names its key's id only
        assert pickle.loads(blob).result(timeout=10) == 5
        stranger = pickle.loads(blob)
        stranger.signing_key = None  # as loaded in a process without the key
        with pytest.raises(dask_wren.IntegrityError, match="holds no dask-wren signing key"):
            stranger.result(timeout=10)


# -- keys: the AWS preflight, deploy and the settings file -------------------------------------


def square(x):
    return x * x


def test_an_aws_host_without_a_key_is_told_to_deploy():
    with pytest.raises(dask_wren.ConfigError, match="wren.aws.signing-key is not set.*dask-wren deploy"):
        dask_wren.default_executor(backend="aws", storage="s3", bucket="b", signing_key=None)


@pytest.mark.parametrize(
    "function_key, words",
    [("", "has no signing key .*redeploy with `dask-wren deploy`"), (SigningKey.generate().text(), "holds another signing key")],
)
def test_the_preflight_refuses_a_function_without_the_hosts_key(tmp_path, function_key, words):
    ex, _ = make(tmp_path, FakeLambda(recorded={KEY_VARIABLE: function_key}))
    with ex, pytest.raises(dask_wren.BackendError, match=words):
        ex.map(square, [1])


def test_the_stand_in_runs_signed_jobs_and_refuses_a_host_with_another_key(standin):
    settings = standin.ensure_bucket().settings_overrides
    with dask_wren.default_executor(**settings) as ex:
        assert dask_wren.get_all_results(ex.map(square, [1, 2, 3])) == [1, 4, 9]
    other = dict(settings, signing_key=SigningKey.generate().text())
    with dask_wren.default_executor(**other) as ex, pytest.raises(dask_wren.BackendError, match="holds another signing key"):
        ex.map(square, [1])


def test_deploy_makes_a_key_once_and_writes_it_to_a_private_settings_file(aws, tmp_path, capsys):  # noqa: F811
    from tests.test_deploy import FN, make_layer_zip

    config_file = tmp_path / "dask" / "wren.yaml"
    argv = ["deploy", "--function-name", FN, "--layer-zip", str(make_layer_zip(tmp_path / "layer.zip")), "--config-file", str(config_file)]
    assert run(capsys, argv)[0] == 0
    env = aws["lambda"].get_function_configuration(FunctionName=FN)["Environment"]["Variables"]
    key = env[KEY_VARIABLE]
    assert SigningKey.from_text(key, "test")  # 32 random bytes, hex
    assert yaml.safe_load(config_file.read_text())["wren"]["aws"]["signing-key"] == key
    assert stat.S_IMODE(os.stat(config_file).st_mode) == 0o600

    config_file.unlink()  # a re-deploy (here from a machine without the settings file) keeps the key
    assert run(capsys, argv)[0] == 0
    assert aws["lambda"].get_function_configuration(FunctionName=FN)["Environment"]["Variables"][KEY_VARIABLE] == key
    assert yaml.safe_load(config_file.read_text())["wren"]["aws"]["signing-key"] == key
    assert stat.S_IMODE(os.stat(config_file).st_mode) == 0o600


def test_a_signing_key_never_shows_in_reprs(standin):
    settings = dask_wren.Settings.from_config(**standin.settings_overrides)
    assert standin.signing_key not in repr(settings) + repr(standin)
    assert standin.signing_key not in repr(SigningKey.from_text(standin.signing_key, "test"))


def _key_in_new_process(config_home, n=1):
    """The local key ids that ``n`` concurrent fresh processes (no key in their environment) use."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != KEY_VARIABLE}
    env["XDG_CONFIG_HOME"] = str(config_home)
    code = "from dask_wren.signing import local_key; print(local_key().id)"
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True) for _ in range(n)]
    return [p.communicate(timeout=60)[0].strip() for p in procs]


def test_the_local_key_outlives_its_host(tmp_path):
    """A local host's key is kept in the user's key file (0600), so another process of the same
    user (``dask-wren job``, ``attach``) verifies a dead host's records; concurrent first uses agree."""
    ids = _key_in_new_process(tmp_path, n=4)
    assert len(set(ids)) == 1 and ids[0]
    path = tmp_path / "dask-wren" / "local-signing-key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert _key_in_new_process(tmp_path) == ids[:1]
    assert SigningKey.from_text(path.read_text(), "test").id == ids[0]
    assert sorted(os.listdir(path.parent)) == ["local-signing-key"]  # no temporary files left


def test_an_unwritable_key_file_leaves_the_host_its_own_key(tmp_path):
    """Where the key file cannot be made (here the config "directory" is a file), the host still
    works, with a key of its own."""
    not_a_dir = tmp_path / "config"
    not_a_dir.write_text("")
    (first,) = _key_in_new_process(not_a_dir)
    (second,) = _key_in_new_process(not_a_dir)
    assert first and second and first != second
