r"""Time of one second-order MAML++ meta-step, against the same step written plainly in PyTorch.

  pip install -e '.[bench]'    # torch (CPU), a benchmark-only dependency
  python benchmarks/meta_step.py                      # conv4-64, 5-way 1-shot, 8 tasks
  python benchmarks/meta_step.py --strategies=unroll,vmap,map --inner_steps=1

Prints seconds per meta-step (median of --repeats after a warm-up) for each inner-step count
and task-batching strategy, the time of one evaluation batch (ideal and hardware one-step
adaptation of --meta_batch tasks), and the ratio PyTorch / JAX measured in the same run
(> 1: JAX is faster). Random data of the Omniglot shape; no dataset needed.
"""

import os
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from roa_jax import device, maml, roa, train  # noqa: E402
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


def _median_time(fn, repeats):
    fn()  # warm-up (compile)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _episodes(key, cfg):
    classes = jax.random.randint(
        key, (40, 20, cfg.image_size, cfg.image_size, FLAGS.channels), 0, 256
    ).astype(jnp.uint8)
    return episodes_lib.sample_episodes(
        key, classes, FLAGS.meta_batch, cfg.n_way, cfg.k_shot, cfg.n_query
    )


def time_jax(num_steps, strategy):
    cfg = train.Config(
        num_inner_steps=num_steps,
        width=FLAGS.width,
        image_size=FLAGS.image_size,
        meta_batch_size=FLAGS.meta_batch,
        task_batching=strategy,
    )
    shape = (FLAGS.image_size, FLAGS.image_size, FLAGS.channels)
    state = train.init_state(cfg, shape)
    batch = _episodes(jax.random.PRNGKey(0), cfg)
    msl_w = maml.msl_weights(num_steps, 0, cfg.msl_epochs)
    step = jax.jit(train.train_step, static_argnames=("cfg", "first_order"))

    def run():
        new, metrics = step(state, batch, jax.random.PRNGKey(1), msl_w, cfg=cfg, first_order=False)
        jax.block_until_ready((new, metrics))

    return _median_time(run, FLAGS.repeats), state.meta, batch, cfg


def time_eval(meta, batch, cfg, hw):
    fn = jax.jit(
        lambda k, m, b: roa.evaluate_tasks(k, m, b, cfg.num_inner_steps, hw, 2.0, cfg.task_batching)
    )
    return _median_time(
        lambda: jax.block_until_ready(fn(jax.random.PRNGKey(2), meta, batch)), FLAGS.repeats
    )


def time_torch(num_steps):
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

    return _median_time(run, FLAGS.repeats)


def main(argv):
    del argv
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}; meta-batch {FLAGS.meta_batch}, "
        f"conv4-{FLAGS.width}, {FLAGS.image_size}x{FLAGS.image_size}x{FLAGS.channels}, "
        "5-way 1-shot, 15 queries, second order"
    )
    rows = []
    for num_steps in map(int, FLAGS.inner_steps):
        reference = time_torch(num_steps) if FLAGS.torch else float("nan")
        timed = {}
        for strategy in FLAGS.strategies:
            seconds, *timed[strategy] = time_jax(num_steps, strategy)
            rows.append((f"meta-step, {num_steps} inner step(s), {strategy}", seconds, reference))
        # Evaluation is timed with the first strategy given (the backend default: unroll).
        meta, batch, cfg = timed[FLAGS.strategies[0]]
        origin = time_eval(meta, batch, cfg, None)
        hardware = time_eval(meta, batch, cfg, roa.hardware(device.paper(), 1.0))
        rows.append((f"eval batch, {num_steps} step(s), origin", origin, float("nan")))
        rows.append((f"eval batch, {num_steps} step(s), hardware write", hardware, float("nan")))
    print(f"{'case':48s} {'jax s':>8s} {'torch s':>8s} {'torch/jax':>9s}")
    for name, seconds, reference in rows:
        print(f"{name:48s} {seconds:8.3f} {reference:8.3f} {reference / seconds:9.2f}")


if __name__ == "__main__":
    app.run(main)
