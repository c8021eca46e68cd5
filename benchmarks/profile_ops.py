r"""Where the time of a meta-step or an evaluation chunk goes: XLA:CPU's operations by kind.

  python benchmarks/profile_ops.py                               # second-order 5-way meta-step
  python benchmarks/profile_ops.py --program=meta_step --first_order
  python benchmarks/profile_ops.py --program=eval_roa            # also eval_origin, eval_5step
  taskset -c 0 python benchmarks/profile_ops.py                  # one core: events do not overlap

Compiles the program, traces --steps calls with `jax.profiler`, reads the trace back
(`jax.profiler.ProfileData`) and sums the duration of every XLA operation, grouped by the
network layer it belongs to (from the HLO's op_name metadata: conv0-3, bn0-3, head), forward or
backward (a `transpose(...)` in the op_name), and kind: `conv` (a convolution, forward or input
gradient; the filter gradient has the kernel's shape), `transpose` (a layout copy), `library`
(a YNNPACK fusion: dots and reductions) or `loop` (XLA's own elementwise fusions: batch norm,
ReLU, pooling, the write). Durations are thread time: with two threads busy, a wait inside an
operation counts too, so read the shares, or run on one core (taskset) for exclusive times.
XLA:CPU runs Eigen's convolutions in Eigen's own thread pool, which the trace does not see:
`conv` there is only their dispatch, and the wall time less the operations' share is theirs;
--conv_layers then times each conv layer alone (forward, input and filter gradient).
(Not named profile.py: beside meta_step.py it would shadow the standard library's `profile`,
which torch imports.)
"""

import collections
import functools
import re
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from roa_jax import config, device, maml, models, roa, train, writers  # noqa: E402
from roa_jax.data import episodes as episodes_lib  # noqa: E402

PROGRAMS = ("meta_step", "eval_origin", "eval_roa", "eval_5step")

FLAGS = flags.FLAGS
flags.DEFINE_enum("program", "meta_step", PROGRAMS, "What to profile.")
flags.DEFINE_bool("first_order", False, "meta_step: first order.")
flags.DEFINE_integer("inner_steps", 1, "meta_step: inner steps.")
flags.DEFINE_integer("n_way", 5, "Classes per task.")
flags.DEFINE_integer("meta_batch", 8, "Tasks per call.")
flags.DEFINE_integer("width", 64, "Conv filters.")
flags.DEFINE_integer("image_size", 28, "Image side.")
flags.DEFINE_integer("channels", 1, "Image channels.")
flags.DEFINE_integer("steps", 3, "Traced calls.")
flags.DEFINE_integer("top", 30, "Groups printed.")
flags.DEFINE_bool("conv_layers", True, "Also time each conv layer alone (fwd, both gradients).")


def _program():
    """(jitted function compiled for its arguments, the arguments)."""
    steps = 5 if FLAGS.program == "eval_5step" else FLAGS.inner_steps
    cfg = config.Config(
        n_way=FLAGS.n_way,
        num_inner_steps=steps,
        width=FLAGS.width,
        image_size=FLAGS.image_size,
        meta_batch_size=FLAGS.meta_batch,
        msl_epochs=0,  # as the cpu scales: the last step's query loss only
    )
    size, ch = FLAGS.image_size, FLAGS.channels
    meta = train.init_meta(cfg, (size, size, ch))
    key = jax.random.PRNGKey(0)
    classes = jax.random.randint(key, (max(40, cfg.n_way), 20, size, size, ch), 0, 256)
    batch = episodes_lib.sample_episodes(
        key, classes.astype(jnp.uint8), cfg.meta_batch_size, cfg.n_way, 1, cfg.n_query
    )
    if FLAGS.program == "meta_step":
        optimizer = train.make_optimizer(cfg)
        state = train.TrainState(meta, optimizer.init(meta), jnp.int32(0))
        msl_w = maml.msl_weights(steps, 0, cfg.msl_epochs)
        fn = functools.partial(
            train.train_step,
            objective=train.objective(cfg),
            optimizer=optimizer,
            first_order=FLAGS.first_order,
        )
        args = (state, batch, jax.random.PRNGKey(1), msl_w, None)
    else:
        model = train.build_model(cfg)
        hw = None if FLAGS.program == "eval_origin" else writers.hardware(device.paper(), 1.0)
        fn = functools.partial(roa.adapt_tasks, model=model, num_steps=steps, hw=hw, rho=2.0)
        fn = lambda k, m, b, fn=fn: fn(k, meta=m, episodes=b)  # noqa: E731
        args = (jax.random.PRNGKey(2), meta, batch)
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    print(f"compile {time.perf_counter() - start:.1f} s")
    return compiled, args


def _hlo_ops(hlo: str) -> dict:
    """{instruction name: (result shape, op_name metadata, is a convolution)}."""
    ops = {}
    for line in hlo.splitlines():
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (\(?[a-z0-9]+\[[\d,]*\])?", line)
        if m:
            op_name = re.search(r'op_name="([^"]*)"', line)
            ops[m.group(1)] = (
                m.group(2) or "",
                op_name.group(1) if op_name else "",
                "convolution(" in line,
            )
    return ops


def _group(name, shape, op_name, is_conv):
    layers = re.findall(r"(conv\d|bn\d|head)", op_name)
    direction = "bwd" if "transpose(" in op_name else "fwd"
    if is_conv or name.startswith("conv"):
        kind = "conv"
    elif "transpose" in name or "copy" in name:
        kind = "transpose"
    elif name.startswith(("ynn", "xnn")):
        kind = "library"
    else:
        kind = "loop"
    what = op_name.split("/")[-1] if op_name else name.split(".")[0]
    return f"{layers[-1] if layers else '-':5s} {direction} {kind:9s} {what[:26]:26s} {shape}"


def _median_ms(fn, *args, repeats=9):
    compiled = jax.jit(fn).lower(*args).compile()
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return sorted(times)[repeats // 2] * 1e3


def _input_gradient(x, w, g):
    return jax.vjp(lambda x: models.conv3x3(x, w), x)[1](g)[0]


def _filter_gradient(x, w, g):
    return jax.vjp(lambda w: models.conv3x3(x, w), w)[1](g)[0]


def conv_layer_times():
    """Each conv layer of the network alone, at the query and the support batch: forward,
    input gradient and filter gradient (ms). XLA:CPU runs Eigen's convolutions in Eigen's own
    thread pool, which the trace does not see: these are their times."""
    key = jax.random.PRNGKey(0)
    print(f"{'conv layer alone':34s} {'fwd ms':>7s} {'d/dx ms':>8s} {'d/dw ms':>8s} {'GFLOP':>6s}")
    for batch, what in ((FLAGS.n_way * 15, "query"), (FLAGS.n_way, "support")):
        size, c_in = FLAGS.image_size, FLAGS.channels
        for layer in range(4):
            x = jax.random.normal(key, (batch, size, size, c_in))
            w = jax.random.normal(key, (3, 3, c_in, FLAGS.width)) * 0.05
            g = jax.random.normal(key, (batch, size, size, FLAGS.width))
            fwd = _median_ms(models.conv3x3, x, w)
            dx = _median_ms(_input_gradient, x, w, g)
            dw = _median_ms(_filter_gradient, x, w, g)
            gflop = 2 * batch * size * size * 9 * c_in * FLAGS.width / 1e9
            name = f"{what} conv{layer} {batch}x{size}x{size}x{c_in}"
            print(f"{name:34s} {fwd:7.2f} {dx:8.2f} {dw:8.2f} {gflop:6.3f}")
            size, c_in = size // 2, FLAGS.width


def main(argv):
    del argv
    compiled, args = _program()
    for _ in range(2):
        jax.block_until_ready(compiled(*args))
    start = time.perf_counter()
    for _ in range(FLAGS.steps):
        jax.block_until_ready(compiled(*args))
    wall = (time.perf_counter() - start) / FLAGS.steps
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        for _ in range(FLAGS.steps):
            jax.block_until_ready(compiled(*args))
        jax.profiler.stop_trace()
        (trace,) = Path(trace_dir).rglob("*.xplane.pb")
        profile = jax.profiler.ProfileData.from_file(str(trace))
    durations = collections.Counter()
    for plane in profile.planes:
        for line in plane.lines:
            for event in line.events:
                durations[event.name] += event.duration_ns
    ops = _hlo_ops(compiled.as_text())
    groups = collections.Counter()
    for name, ns in durations.items():
        if name in ops:
            groups[_group(name, *ops[name])] += ns / FLAGS.steps / 1e6
    total = sum(groups.values())
    print(f"{FLAGS.program}: {wall * 1e3:.0f} ms per call (wall), {total:.0f} ms of operations")
    by_kind = collections.Counter()
    for group, ms in groups.items():
        by_kind[group.split()[2]] += ms
    shares = [f"{k} {ms:.0f} ms ({100 * ms / total:.0f} %)" for k, ms in by_kind.most_common()]
    print("by kind: " + ", ".join(shares))
    print(f"{'ms':>8s} {'%':>5s}  layer dir kind      operation                  shape")
    for group, ms in groups.most_common(FLAGS.top):
        print(f"{ms:8.1f} {100 * ms / total:5.1f}  {group}")
    if FLAGS.conv_layers:
        conv_layer_times()


if __name__ == "__main__":
    app.run(main)
