r"""Time of one second-order MAML++ meta-step, against the same step written plainly in PyTorch.

  pip install -e '.[bench]'    # torch (CPU), a benchmark-only dependency
  python benchmarks/meta_step.py                      # conv4-64, 5-way 1-shot, 8 tasks
  python benchmarks/meta_step.py --strategies=unroll,vmap,map --inner_steps=1

Prints seconds per meta-step (median of --repeats interleaved rounds after a warm-up) for each
inner-step count and task-batching strategy, the same step with JAX's own convolution
derivatives instead of models.conv3x3's, the time of one evaluation batch (ideal and hardware
one-step adaptation of --meta_batch tasks), and the ratio PyTorch / JAX measured in the same
run (> 1: JAX is faster). Random data of the Omniglot shape; no dataset needed.
"""

import functools
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from roa_jax import config, device, maml, models, roa, train, writers  # noqa: E402
from roa_jax.data import episodes as episodes_lib  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("inner_steps", ["1", "5"], "Inner-step counts to time.")
flags.DEFINE_list("strategies", ["unroll"], "Task batching strategies (unroll, vmap, map).")
flags.DEFINE_integer("meta_batch", 8, "Tasks per meta-step.")
flags.DEFINE_integer("width", 64, "Conv filters.")
flags.DEFINE_integer("image_size", 28, "Image side (28: Omniglot, 84: miniImageNet).")
flags.DEFINE_integer("channels", 1, "Image channels.")
flags.DEFINE_integer("repeats", 5, "Timed repeats (median reported).")
flags.DEFINE_bool("torch", True, "Also time the PyTorch reference.")
flags.DEFINE_bool(
    "lax_conv", True, "Also time the first strategy with JAX's own convolution derivatives."
)


def _median_times(fns: dict, repeats: int) -> dict:
    """Median seconds per call of each function, timed in interleaved rounds after a warm-up.

    Interleaving matters on a shared VM, whose speed drifts by 20-30 % over minutes: each
    round times every function once, so a drift slows them all alike and the ratio holds.
    """
    for fn in fns.values():
        fn()  # warm-up (compile)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _episodes(key, cfg):
    classes = jax.random.randint(
        key, (40, 20, cfg.image_size, cfg.image_size, FLAGS.channels), 0, 256
    ).astype(jnp.uint8)
    return episodes_lib.sample_episodes(
        key, classes, FLAGS.meta_batch, cfg.n_way, cfg.k_shot, cfg.n_query
    )


def jax_fn(num_steps, strategy, lax_conv=False):
    """The jitted meta-step, compiled now; lax_conv: with JAX's own derivative rules for the
    convolutions instead of models.conv3x3's (the reference for that choice)."""
    cfg = config.Config(
        num_inner_steps=num_steps,
        width=FLAGS.width,
        image_size=FLAGS.image_size,
        meta_batch_size=FLAGS.meta_batch,
        task_batching=strategy,
    )
    shape = (FLAGS.image_size, FLAGS.image_size, FLAGS.channels)
    meta = train.init_meta(cfg, shape)
    optimizer = train.make_optimizer(cfg)
    state = train.TrainState(meta, optimizer.init(meta), jnp.int32(0))
    batch = _episodes(jax.random.PRNGKey(0), cfg)
    msl_w = maml.msl_weights(num_steps, 0, cfg.msl_epochs)
    step = functools.partial(
        train.train_step, objective=train.objective(cfg), optimizer=optimizer, first_order=False
    )
    conv3x3 = models.conv3x3
    models.conv3x3 = conv3x3.fun if lax_conv else conv3x3
    try:
        step = jax.jit(step).lower(state, batch, jax.random.PRNGKey(1), msl_w, None).compile()
    finally:
        models.conv3x3 = conv3x3

    def run():
        jax.block_until_ready(step(state, batch, jax.random.PRNGKey(1), msl_w, None))

    return run, state.meta, batch, cfg


def eval_fn(meta, batch, cfg, hw):
    model = train.build_model(cfg)

    def evaluate(k, m, b):
        return roa.adapt_tasks(k, model, m, b, cfg.num_inner_steps, hw, 2.0, cfg.task_batching)

    fn = jax.jit(evaluate)
    return lambda: jax.block_until_ready(fn(jax.random.PRNGKey(2), meta, batch))


def torch_fn(num_steps):
    """The same meta-step in plain PyTorch: a loop over tasks, autograd with create_graph."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    n_way, width, size, ch = 5, FLAGS.width, FLAGS.image_size, FLAGS.channels
    feat = (size // 16) ** 2 * width
    params = []
    c_in = ch
    for _ in range(4):
        params.append(torch.randn(width, c_in, 3, 3) * (2 / (9 * c_in)) ** 0.5)
        c_in = width
    params.append(torch.randn(n_way, feat) / feat**0.5)
    params.append(torch.zeros(n_way))
    bn = [(torch.ones(num_steps + 1, width), torch.zeros(num_steps + 1, width)) for _ in range(4)]
    lslr = [torch.full((num_steps,), 0.1) for _ in params]
    leaves = params + [t for pair in bn for t in pair] + lslr
    for t in leaves:
        t.requires_grad_(True)
    opt = torch.optim.Adam(leaves, lr=1e-3)
    xs = torch.rand(FLAGS.meta_batch, n_way, ch, size, size)
    ys = torch.arange(n_way)
    xq = torch.rand(FLAGS.meta_batch, n_way * 15, ch, size, size)
    yq = torch.arange(n_way).repeat_interleave(15)

    def forward(p, x, step):
        for i in range(4):
            x = F.conv2d(x, p[i], padding=1)
            x = F.batch_norm(x, None, None, bn[i][0][step], bn[i][1][step], training=True)
            x = F.max_pool2d(F.relu(x), 2)
        return F.linear(x.flatten(1), p[4], p[5])

    def run():
        opt.zero_grad()
        total = 0.0
        for task in range(FLAGS.meta_batch):
            fast = params
            for s in range(num_steps):
                loss = F.cross_entropy(forward(fast, xs[task], s), ys)
                grads = torch.autograd.grad(loss, fast, create_graph=True)
                fast = [w - lr[s] * g for w, g, lr in zip(fast, grads, lslr, strict=True)]
            total = total + F.cross_entropy(forward(fast, xq[task], num_steps), yq)
        (total / FLAGS.meta_batch).backward()
        opt.step()

    return run


def main(argv):
    del argv
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}; meta-batch {FLAGS.meta_batch}, "
        f"conv4-{FLAGS.width}, {FLAGS.image_size}x{FLAGS.image_size}x{FLAGS.channels}, "
        "5-way 1-shot, 15 queries, second order"
    )
    rows = []
    for num_steps in map(int, FLAGS.inner_steps):
        fns, timed = {}, {}
        if FLAGS.torch:
            fns["torch"] = torch_fn(num_steps)
        for strategy in FLAGS.strategies:
            fns[strategy], *timed[strategy] = jax_fn(num_steps, strategy)
        if FLAGS.lax_conv:
            fns["lax_conv"] = jax_fn(num_steps, FLAGS.strategies[0], lax_conv=True)[0]
        # Evaluation is timed with the first strategy given (the backend default: unroll).
        meta, batch, cfg = timed[FLAGS.strategies[0]]
        fns["origin"] = eval_fn(meta, batch, cfg, None)
        fns["hardware"] = eval_fn(meta, batch, cfg, writers.hardware(device.paper(), 1.0))
        seconds = _median_times(fns, FLAGS.repeats)
        reference = seconds.get("torch", float("nan"))
        for strategy in FLAGS.strategies:
            rows.append(
                (f"meta-step, {num_steps} inner step(s), {strategy}", seconds[strategy], reference)
            )
        if FLAGS.lax_conv:
            rows.append(
                (
                    f"meta-step, {num_steps} inner step(s), {FLAGS.strategies[0]}, lax.conv rules",
                    seconds["lax_conv"],
                    reference,
                )
            )
        rows.append((f"eval batch, {num_steps} step(s), origin", seconds["origin"], float("nan")))
        rows.append(
            (f"eval batch, {num_steps} step(s), hardware write", seconds["hardware"], float("nan"))
        )
    print(f"{'case':62s} {'jax s':>8s} {'torch s':>8s} {'torch/jax':>9s}")
    for name, seconds, reference in rows:
        print(f"{name:62s} {seconds:8.3f} {reference:8.3f} {reference / seconds:9.2f}")


if __name__ == "__main__":
    app.run(main)
