"""Nothing lost, nothing silent: atomic checkpoints, resume after SIGKILL, training stops at the first NaN."""

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pinn_adapters as pa
from pinn_adapters.app import _checkpoint
from pinn_adapters.app._train import NonFiniteError, _keys_at

# A tiny two-block problem, defined once as source so the killed subprocess trains exactly the same thing.
TINY = textwrap.dedent(
    """
    import types
    import jax, jax.numpy as jnp, optax
    import pinn_adapters as pa

    def _res(p, x):
        return jnp.tanh(x @ p["W"] + p["b"]) @ p["v"] - jnp.sin(3 * x[:, 0])

    TINY_PROBLEM = types.SimpleNamespace(
        name="tiny", layers=(1, 4, 1),
        blocks=pa.ResidualBlocks({"a": _res, "b": lambda p, x: 0.5 * _res(p, x)}),
        init_params=lambda k: {"W": jax.random.normal(k, (1, 4)), "b": jnp.zeros(4), "v": jnp.ones(4) / 4},
        sample_batch=lambda k: {"a": jax.random.uniform(k, (6, 1)),
                                "b": jax.random.uniform(jax.random.fold_in(k, 1), (3, 1))},
    )
    TINY_KW = dict(seed=0, optimizer=optax.adam(1e-2), progress=False, log_every=10**6)
    """
)
_ns: dict = {}
exec(TINY, _ns)  # noqa: S102 - our own source, shared with the subprocess
PROBLEM, KW = _ns["TINY_PROBLEM"], _ns["TINY_KW"]

CHILD = TINY + textwrap.dedent(
    """
    import os, sys
    path = sys.argv[1]
    pa.train(TINY_PROBLEM, steps=10**7, checkpoint=path, checkpoint_every=1,
             resume=path if os.path.exists(path) else None, **TINY_KW)
    """
)


def _assert_same_bits(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


def _mtime(path):
    try:
        return os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return None


def _run_until_new_write_then_kill(cmd, env, path, delay, timeout=120):
    """Start the child, wait until it has rewritten the checkpoint, wait ``delay`` s more, SIGKILL it."""
    before = _mtime(path)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.monotonic()
    try:
        while _mtime(path) == before:
            if proc.poll() is not None:
                raise AssertionError(f"the training subprocess exited early: {proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() - t0 > timeout:
                raise AssertionError("the training subprocess wrote no checkpoint in time")
            time.sleep(0.005)
        time.sleep(delay)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()


def test_sigkill_at_random_moments_always_resumes_from_a_complete_checkpoint_bit_for_bit(tmp_path):
    """10 SIGKILLs of a process checkpointing every step; each time the file is complete and
    equal, bit for bit, to the state of an uninterrupted run at the same step."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    path = str(tmp_path / "run.ckpt")
    env = dict(
        os.environ,
        JAX_ENABLE_X64="1",
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    rng = np.random.default_rng(15)
    ref = pa.train(PROBLEM, steps=0, **KW)
    like = ref.state
    steps_seen = []
    for delay in rng.uniform(0.0, 0.25, size=10):
        _run_until_new_write_then_kill([sys.executable, str(script), path], env, path, float(delay))
        state = pa.load_checkpoint(path, like)  # complete and readable after every kill
        s = int(state.step)
        assert s > (steps_seen[-1] if steps_seen else 0)  # progress, and never an older or partial file
        steps_seen.append(s)
        ref = pa.train(PROBLEM, steps=s, resume=ref.state, **KW)  # uninterrupted reference (resume is exact)
        _assert_same_bits(state, ref.state)
    # and the last checkpoint resumes bit for bit
    more = pa.train(PROBLEM, steps=steps_seen[-1] + 3, resume=path, **KW)
    _assert_same_bits(more.state, pa.train(PROBLEM, steps=steps_seen[-1] + 3, resume=ref.state, **KW).state)


def test_interrupted_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.ckpt"
    first = pa.train(PROBLEM, steps=2, checkpoint=path, **KW)
    before = path.read_bytes()

    def fail(*a, **k):
        raise KeyboardInterrupt  # e.g. Ctrl-C between writing the temporary file and renaming it

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(KeyboardInterrupt):
        pa.save_checkpoint(path, pa.train(PROBLEM, steps=4, resume=first.state, **KW).state)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.ckpt"]  # no temporary file left behind
    _assert_same_bits(pa.load_checkpoint(path, first.state), first.state)


def _poisoned(prob, seed, k, block):
    """``prob`` whose batch for step ``k`` (1-based) has a NaN point in ``block``."""
    target = jax.random.key_data(_keys_at(jax.random.key_data(jax.random.key(seed)), k - 1)[0])

    def sample_batch(key):
        b = dict(prob.sample_batch(key))
        hit = jnp.all(jax.random.key_data(key) == target)
        b[block] = b[block].at[0, 0].set(jnp.where(hit, jnp.nan, b[block][0, 0]))
        return b

    if dataclasses.is_dataclass(prob):
        return dataclasses.replace(prob, sample_batch=sample_batch)
    return types.SimpleNamespace(**{**vars(prob), "sample_batch": sample_batch})


@pytest.mark.parametrize("k", [3, 7])
def test_a_poisoned_point_stops_training_at_its_step_and_the_checkpoint_stays_finite(k, tmp_path):
    path = tmp_path / "c.ckpt"
    bad = _poisoned(PROBLEM, 0, k, "b")
    with pytest.raises(NonFiniteError, match=rf"step {k} in block 'b'") as info:
        pa.train(bad, steps=30, checkpoint=path, checkpoint_every=1, **KW)  # log_every=10**6: no host reads
    assert info.value.step == k and info.value.block == "b"
    assert int(info.value.state.step) == k - 1
    saved = pa.load_checkpoint(path, info.value.state)
    assert int(saved.step) == k - 1
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(saved) if np.asarray(x).dtype.kind == "f")
    # the flagged state equals the uninterrupted run's state after step k - 1
    _assert_same_bits(saved, info.value.state)
    _assert_same_bits(info.value.state.params, pa.train(PROBLEM, steps=k - 1, **KW).params)


def test_nan_is_found_at_its_step_without_checkpoints_or_log_steps():
    k = 5
    with pytest.raises(NonFiniteError, match=rf"step {k} in block 'a'"):
        pa.train(_poisoned(PROBLEM, 0, k, "a"), steps=40, **KW)


def test_infinite_gradient_with_finite_loss_names_the_block():
    blocks = pa.ResidualBlocks(
        {
            "smooth": lambda p, x: p["s"] * x[:, 0],
            "kink": lambda p, x: jnp.sqrt(jnp.abs(p["s"] - 1.0)) * x[:, 0],  # infinite gradient at s = 1
        }
    )
    prob = types.SimpleNamespace(
        name="kink",
        blocks=blocks,
        init_params=lambda k: {"s": jnp.asarray(1.0)},
        sample_batch=lambda k: {"smooth": jnp.ones((2, 1)), "kink": jnp.ones((2, 1))},
    )
    with pytest.raises(NonFiniteError, match="step 1 in block 'kink'") as info:
        pa.train(prob, steps=3, optimizer=optax.sgd(0.1), progress=False)
    assert "gradient" in str(info.value)


def test_save_checkpoint_refuses_non_finite_state(tmp_path):
    state = pa.train(PROBLEM, steps=1, **KW).state
    bad = state._replace(params=jax.tree.map(lambda x: x * jnp.nan, state.params))
    with pytest.raises(ValueError, match="non-finite"):
        pa.save_checkpoint(tmp_path / "c.ckpt", bad)
    assert not (tmp_path / "c.ckpt").exists()


# ---------------------------------------------------------------------------- mismatch and corrupt files


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "c.ckpt"
    pa.train(PROBLEM, steps=2, checkpoint=path, **KW)
    return path


def test_resume_refuses_another_architecture(saved):
    wide = types.SimpleNamespace(
        **{
            **vars(PROBLEM),
            "layers": (1, 8, 1),
            "init_params": lambda k: {"W": jnp.zeros((1, 8)), "b": jnp.zeros(8), "v": jnp.zeros(8)},
        }
    )
    with pytest.raises(ValueError, match=r"architecture\.layers is \[1, 4, 1\] in the checkpoint but \[1, 8, 1\]"):
        pa.train(wide, steps=4, resume=saved, **KW)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"weighting": "pc"}, "weighting.estimator"),
        ({"seed": 1}, "training.seed"),
        ({"resample": False}, "training.resample"),
    ],
)
def test_resume_refuses_a_mismatch_naming_the_field(saved, change, field):
    with pytest.raises(ValueError, match=rf"{field} is .* in the checkpoint"):
        pa.train(PROBLEM, steps=4, resume=saved, **{**KW, **change})


def test_resume_refuses_another_problem(saved):
    other = types.SimpleNamespace(**{**vars(PROBLEM), "name": "other"})
    with pytest.raises(ValueError, match=r"problem\.name is 'tiny' in the checkpoint but 'other'"):
        pa.train(other, steps=4, resume=saved, **KW)


def test_resume_refuses_another_optimizer_state(saved):
    with pytest.raises(ValueError, match="arrays but this run's state has"):
        pa.train(PROBLEM, steps=4, resume=saved, **{**KW, "optimizer": optax.sgd(0.1)})


@pytest.mark.parametrize("content", [b"", os.urandom(64), b"PK\x03\x04garbage", b"\x80\x04K\x01."])
def test_corrupt_or_foreign_checkpoint_names_the_path(tmp_path, content):
    path = tmp_path / "bad.ckpt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"checkpoint '.*bad\.ckpt' is not a readable pinn_adapters checkpoint"):
        pa.train(PROBLEM, steps=4, resume=path, **KW)


def test_truncated_checkpoint_names_the_path(tmp_path, saved):
    data = saved.read_bytes()
    for cut in (len(data) // 3, len(data) - 10):
        path = tmp_path / f"cut{cut}.ckpt"
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=rf"checkpoint '.*cut{cut}\.ckpt' is not a readable"):
            pa.train(PROBLEM, steps=4, resume=path, **KW)


def test_other_npz_and_pickles_are_not_checkpoints(tmp_path):
    npz = tmp_path / "arrays.npz"
    np.savez(npz, a=np.ones(3))
    with pytest.raises(ValueError, match="not a readable pinn_adapters checkpoint"):
        pa.train(PROBLEM, steps=4, resume=npz, **KW)
    pkl = tmp_path / "old.pkl"
    pkl.write_bytes(b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01.")  # pickle of 1: never unpickled
    with pytest.raises(ValueError, match="not an .npz"):
        pa.train(PROBLEM, steps=4, resume=pkl, **KW)


def test_missing_checkpoint_and_unwritable_checkpoint_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pa.train(PROBLEM, steps=4, resume=tmp_path / "nope.ckpt", **KW)
    with pytest.raises(FileNotFoundError, match=r"checkpoint: the directory .*missing.* does not exist"):
        pa.train(PROBLEM, steps=4, checkpoint=tmp_path / "missing" / "c.ckpt", **KW)


def test_manifest_records_versions_problem_architecture_and_weighting(saved):
    manifest, _ = _checkpoint.read_checkpoint(saved)
    assert manifest["format"] == "pinn_adapters.checkpoint" and manifest["step"] == 2
    assert {"jax", "numpy", "sketchtrace"} <= set(manifest["versions"])
    assert manifest["problem"]["name"] == "tiny" and manifest["architecture"]["layers"] == [1, 4, 1]
    assert manifest["weighting"]["estimator"] == "none" and manifest["training"]["seed"] == 0


def test_rejected_count_is_in_the_history():
    res = pa.train(PROBLEM, steps=4, **{**KW, "log_every": 2})
    assert res.history["rejected"] == [0, 0]
