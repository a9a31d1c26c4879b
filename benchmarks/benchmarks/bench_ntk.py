"""asv suite: NTK loss-weight updates (exact, sketched, predictor-corrector) per training step.

The wave problem of Wang et al. (``pinn_adapters.problems.wave1d``), MLP 2-64-64-64-1,
300 + 4 x 100 points, float32, as in ``benchmarks/ntk_cost.py``. ``setup`` compiles
the training step and the jitted ``ntk_weighting(...).update``. ``track_step_ratio``
is the update's median time over the training step's (5 interleaved calls each);
``track_weight_error`` is the largest relative error of the weights against exact
weights at the same parameters.
"""

import os
import statistics
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import pinn_adapters as pa  # noqa: E402

CONFIGS = {
    "exact": dict(estimator="exact", chunk_size=128),
    "hutchinson": dict(estimator="hutchinson", num_probes=8),
    "pc": dict(estimator="pc", fd="forward", subsample=None),
    "pc_jvp": dict(estimator="pc", fd="jvp", subsample=None),
    "pc_not_batched": dict(estimator="pc", fd="forward", batched=False, subsample=None),
    "pc_subsample": dict(estimator="pc", fd="forward", subsample=0.1),
}


class NTKWeights:
    params = (list(CONFIGS),)
    param_names = ["estimator"]
    timeout = 300
    problem = dict(layers=(2, 64, 64, 64, 1), n_res=300, n_bc=100)

    def setup(self, estimator):
        prob = pa.problems.wave1d(**self.problem, dtype=jnp.float32)
        blocks = prob.blocks
        self.key = jax.random.key(0)
        self.params = prob.init_params(self.key)
        self.p1 = jax.tree.map(lambda a: a * 1.001, self.params)
        self.batch = prob.sample_batch(jax.random.key(1))
        opt = optax.adam(1e-3)
        self.opt_state = opt.init(self.params)
        self.w1 = {n: jnp.float32(1.0) for n in blocks.names}

        @jax.jit
        def step(params, opt_state, batch, weights):
            R, vjp = jax.vjp(lambda p: blocks.residuals(p, batch), params)
            (g,) = vjp({n: weights[n] * 2.0 * R[n] / R[n].shape[0] for n in blocks.names})
            upd, opt_state = opt.update(g, opt_state, params)
            return optax.apply_updates(params, upd), opt_state, R

        self.step = step
        self.R0 = blocks.residuals(self.params, self.batch)
        self.R1 = blocks.residuals(self.p1, self.batch)
        w = pa.ntk_weighting(blocks, **CONFIGS[estimator])
        self.state = w.init(self.key, self.params, self.batch)
        self.upd = jax.jit(lambda k, s, a, b, bt, r, rp: w.update(k, s, a, b, bt, residuals=r, residuals_prev=rp))
        exact = pa.ntk_weighting(blocks, estimator="exact")
        self.exact_weights, _ = exact.update(
            self.key, exact.init(self.key, self.params, self.batch), self.params, self.p1, self.batch
        )
        self.run_update()
        self.run_step()

    def run_update(self):
        return jax.block_until_ready(self.upd(self.key, self.state, self.params, self.p1, self.batch, self.R1, self.R0))

    def run_step(self):
        return jax.block_until_ready(self.step(self.params, self.opt_state, self.batch, self.w1))

    def time_update(self, estimator):
        self.run_update()

    def time_training_step(self, estimator):
        self.run_step()

    def peakmem_update(self, estimator):
        self.run_update()

    def track_step_ratio(self, estimator):
        tu, ts = [], []
        for _ in range(5):
            t0 = time.perf_counter()
            self.run_update()
            tu.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            self.run_step()
            ts.append(time.perf_counter() - t0)
        return statistics.median(tu) / statistics.median(ts)

    track_step_ratio.unit = "training steps"

    def track_weight_error(self, estimator):
        weights, _ = self.run_update()
        return max(
            abs(float(weights[n]) - float(self.exact_weights[n])) / float(self.exact_weights[n]) for n in weights
        )

    track_weight_error.unit = "relative error"
