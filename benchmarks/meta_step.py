r"""Time of one MAML++ meta-step and one evaluation chunk per task shape, against PyTorch.

  pip install -e '.[bench]'    # torch (CPU), a benchmark-only dependency
  python benchmarks/meta_step.py --inner_steps=1 --repeats=5     # the three task shapes
  python benchmarks/meta_step.py --shapes=omniglot_5w --inner_steps=1,5 --strategies=unroll,vmap

For each task shape (Omniglot 5-way: 8 tasks of 5 x 16 images, 28x28x1; Omniglot 20-way: 4
tasks of 20 x 16; miniImageNet 5-way: 2 tasks of 5 x 16, 84x84x3; conv4-64, 1 shot, 15
queries) and inner-step count, prints seconds per call (median of --repeats interleaved rounds
after a warm-up) of:
  - the second-order and the first-order meta-step, and the same steps written plainly in
    PyTorch (a loop over tasks, autograd; `create_graph=True` for second order): the ratio
    PyTorch / JAX (> 1: JAX is faster);
  - the same second-order step as the code stood before the speed work (commit 4412a0a: XLA's
    default libraries, YNNPACK convolutions; batch norm, ReLU and a max-pool with JAX's own
    derivative rules) and, with --lax_conv, with JAX's own convolution derivatives: the ratio
    reference / now;
  - one evaluation chunk (--meta_batch tasks of the shape, `roa.adapt_tasks`): exact
    adaptation ("origin") and the hardware write (ROA), now and as before.
Random data of each shape; no dataset needed.
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

# name -> (n_way, meta-batch, image side, channels): the paper's task shapes at our configs.
SHAPES = {
    "omniglot_5w": (5, 8, 28, 1),
    "omniglot_20w": (20, 4, 28, 1),
    "miniimagenet": (5, 2, 84, 3),
}

FLAGS = flags.FLAGS
flags.DEFINE_list("shapes", list(SHAPES), f"Task shapes to time, of {list(SHAPES)}.")
flags.DEFINE_list("inner_steps", ["1", "5"], "Inner-step counts to time.")
flags.DEFINE_list("strategies", ["unroll"], "Task batching strategies (unroll, vmap, map).")
flags.DEFINE_integer("meta_batch", None, "Tasks per meta-step (default: the shape's own).")
flags.DEFINE_integer("width", 64, "Conv filters.")
flags.DEFINE_integer("image_size", None, "Image side (default: the shape's own).")
flags.DEFINE_integer("repeats", 5, "Timed repeats (median reported).")
flags.DEFINE_bool("torch", True, "Also time the PyTorch reference.")
flags.DEFINE_bool("reference", True, "Also time the code as it stood before the speed work.")
flags.DEFINE_bool("first_order", True, "Also time the first-order meta-step.")
flags.DEFINE_bool(
    "lax_conv", False, "Also time the first strategy with JAX's own convolution derivatives."
)

# The XLA:CPU libraries before batching.configure_xla (jaxlib 0.10's defaults).
_YNN_DEFAULT = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,"
    "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,LIBRARY_FUSION_TYPE_REDUCE"
}


def _reference_block(x, scale, offset):
    """Batch norm, ReLU and max-pool as at 4412a0a: pooled last, with JAX's own rules."""
    mean, var = jnp.mean(x, (0, 1, 2)), jnp.var(x, (0, 1, 2))
    y = jax.nn.relu((x - mean) * jax.lax.rsqrt(var + models._BN_EPS) * scale + offset)
    b, h, w, c = y.shape
    y = y[:, : h // 2 * 2, : w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c)
    return jnp.max(y, axis=(2, 4))


def _compile(fn, args, reference=False, lax_conv=False):
    """`jax.jit(fn)` compiled for `args`; `reference`: as the code stood at 4412a0a."""
    saved = models.conv3x3, models.batch_norm_relu_pool
    if lax_conv:
        models.conv3x3 = models._lax_conv
    if reference:
        models.batch_norm_relu_pool = _reference_block
    cpu = jax.default_backend() == "cpu"
    try:
        lowered = jax.jit(fn).lower(*args)
        return lowered.compile(_YNN_DEFAULT) if reference and cpu else lowered.compile()
    finally:
        models.conv3x3, models.batch_norm_relu_pool = saved


def _shape(name):
    n_way, meta_batch, size, channels = SHAPES[name]
    return (
        n_way,
        FLAGS.meta_batch or meta_batch,
        FLAGS.image_size or size,
        channels,
    )


def _setup(name, num_steps, strategy):
    n_way, meta_batch, size, channels = _shape(name)
    cfg = config.Config(
        n_way=n_way,
        num_inner_steps=num_steps,
        width=FLAGS.width,
        image_size=size,
        meta_batch_size=meta_batch,
        task_batching=strategy,
        msl_epochs=0,  # the last step's query loss only, as at the cpu scales and in PyTorch's
    )
    meta = train.init_meta(cfg, (size, size, channels))
    key = jax.random.PRNGKey(0)
    classes = jax.random.randint(key, (max(40, n_way), 20, size, size, channels), 0, 256)
    batch = episodes_lib.sample_episodes(
        key, classes.astype(jnp.uint8), meta_batch, n_way, cfg.k_shot, cfg.n_query
    )
    return cfg, meta, batch


def meta_step_fn(cfg, meta, batch, first_order, **compile_kw):
    """The jitted meta-step on (meta, batch), compiled now; returns a timed callable."""
    optimizer = train.make_optimizer(cfg)
    state = train.TrainState(meta, optimizer.init(meta), jnp.int32(0))
    msl_w = maml.msl_weights(cfg.num_inner_steps, 0, cfg.msl_epochs)
    objective = train.objective(cfg)
    if compile_kw.get("reference"):  # 4412a0a queried after every inner step
        objective = objective._replace(multi_step_loss=True)
    step = functools.partial(
        train.train_step, objective=objective, optimizer=optimizer, first_order=first_order
    )
    args = (state, batch, jax.random.PRNGKey(1), msl_w, None)
    compiled = _compile(step, args, **compile_kw)
    return lambda: jax.block_until_ready(compiled(*args))


def eval_fn(cfg, meta, batch, hw, **compile_kw):
    """One evaluation chunk (`roa.adapt_tasks`, rho 2) of the batch's tasks, compiled now."""
    model = train.build_model(cfg)

    def evaluate(k, m, b):
        return roa.adapt_tasks(k, model, m, b, cfg.num_inner_steps, hw, 2.0, cfg.task_batching)

    args = (jax.random.PRNGKey(2), meta, batch)
    compiled = _compile(evaluate, args, **compile_kw)
    return lambda: jax.block_until_ready(compiled(*args))


def torch_fn(name, num_steps, first_order):
    """The same meta-step in plain PyTorch: a loop over tasks, autograd (create_graph for
    second order), Adam."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    n_way, meta_batch, size, ch = _shape(name)
    width = FLAGS.width
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
    xs = torch.rand(meta_batch, n_way, ch, size, size)
    ys = torch.arange(n_way)
    xq = torch.rand(meta_batch, n_way * 15, ch, size, size)
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
        for task in range(meta_batch):
            fast = params
            for s in range(num_steps):
                loss = F.cross_entropy(forward(fast, xs[task], s), ys)
                grads = torch.autograd.grad(loss, fast, create_graph=not first_order)
                fast = [w - lr[s] * g for w, g, lr in zip(fast, grads, lslr, strict=True)]
            total = total + F.cross_entropy(forward(fast, xq[task], num_steps), yq)
        (total / meta_batch).backward()
        opt.step()

    return run


def _median_times(fns: dict, repeats: int) -> dict:
    """Median seconds per call of each function, timed in interleaved rounds after a warm-up.

    Interleaving matters on a shared VM, whose speed drifts by 20-30 % over minutes: each
    round times every function once, so a drift slows them all alike and the ratio holds.
    """
    for fn in fns.values():
        fn()  # warm-up
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _rows(name, num_steps):
    """[(case, seconds, reference seconds, reference name)] of one shape and step count."""
    hw = writers.hardware(device.paper(), 1.0)
    first, *others = FLAGS.strategies
    fns, rows = {}, []
    for strategy in (first, *others):
        cfg, meta, batch = _setup(name, num_steps, strategy)
        fns[strategy] = meta_step_fn(cfg, meta, batch, first_order=False)
        if strategy == first:
            if FLAGS.first_order:
                fns["first order"] = meta_step_fn(cfg, meta, batch, first_order=True)
            if FLAGS.reference:
                fns["reference"] = meta_step_fn(cfg, meta, batch, False, reference=True)
            if FLAGS.lax_conv:
                fns["lax_conv"] = meta_step_fn(cfg, meta, batch, False, lax_conv=True)
            fns["origin"] = eval_fn(cfg, meta, batch, None)
            fns["hardware"] = eval_fn(cfg, meta, batch, hw)
            if FLAGS.reference:
                fns["origin reference"] = eval_fn(cfg, meta, batch, None, reference=True)
                fns["hardware reference"] = eval_fn(cfg, meta, batch, hw, reference=True)
    if FLAGS.torch:
        fns["torch"] = torch_fn(name, num_steps, first_order=False)
        if FLAGS.first_order:
            fns["torch first order"] = torch_fn(name, num_steps, first_order=True)
    t = _median_times(fns, FLAGS.repeats)
    nan = float("nan")
    case = f"{name}, {num_steps} step(s),"
    for strategy in FLAGS.strategies:
        rows.append((f"{case} meta-step, {strategy}", t[strategy], t.get("torch", nan), "torch"))
    if FLAGS.first_order:
        torch_first = t.get("torch first order", nan)
        rows.append((f"{case} meta-step, first order", t["first order"], torch_first, "torch"))
    if FLAGS.reference:
        rows.append((f"{case} meta-step, {first}", t[first], t["reference"], "4412a0a"))
    if FLAGS.lax_conv:
        rows.append((f"{case} meta-step, lax.conv rules", t["lax_conv"], t[first], "now"))
    for kind in ("origin", "hardware"):
        reference = t.get(f"{kind} reference", nan)
        rows.append((f"{case} eval chunk, {kind}", t[kind], reference, "4412a0a"))
    return rows


def main(argv):
    del argv
    if unknown := sorted(set(FLAGS.shapes) - set(SHAPES)):
        raise app.UsageError(f"--shapes: {unknown} are not among {list(SHAPES)}.")
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}; conv4-{FLAGS.width}, 1 shot, "
        "15 queries; second order unless said; XLA_FLAGS="
        f"{os.environ.get('XLA_FLAGS', '')!r}"
    )
    print(f"{'case':58s} {'jax s':>7s} {'ref s':>7s} {'ref/jax':>7s}  ref")
    for name in FLAGS.shapes:
        for num_steps in map(int, FLAGS.inner_steps):
            for case, seconds, reference, ref_name in _rows(name, num_steps):
                ratio = reference / seconds
                print(f"{case:58s} {seconds:7.3f} {reference:7.3f} {ratio:7.2f}  {ref_name}")


if __name__ == "__main__":
    app.run(main)
