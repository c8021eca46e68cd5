r"""Reference traces of aihwkit 1.2.0's pulsed devices, for roa_jax's technology devices (issue 34).

Generated once with aihwkit itself and committed (traces.npz beside this file), so that the
tests run without aihwkit. aihwkit 1.2.0 is a source distribution; it built here on 2 CPU cores
in 23 min (measured beside a running calibration job), in an activated virtual
environment of its own (its build runs mypy's `stubgen` after the link, so mypy and the venv's
bin/ on PATH are needed; `utils.visualization` imports matplotlib):

  apt-get install libopenblas-dev
  pip install torch==2.13.0 cmake pybind11 scikit-build ninja mypy numpy scipy requests \
      tqdm protobuf matplotlib
  CMAKE_BUILD_PARALLEL_LEVEL=2 USE_CUDA=OFF pip install --no-build-isolation --no-deps \
      aihwkit==1.2.0
  python tests/data/aihwkit/make_traces.py --out=tests/data/aihwkit/traces.npz   # 5 s

Pulses are applied exactly as aihwkit's own response plots do (`utils.visualization`:
`get_tile_for_plotting`, desired_bl=1, fixed_bl, no update management, learning rate 1;
`compute_pulse_response`, `tile.update` with x = -1 and d = +-1, so +1 is an up pulse; the
weights read exactly after every pulse). For every device family (at aihwkit's defaults) and
every preset of `presets/devices.py`, with `construction_seed` fixed:

- `<name>/clean/*`: NOISE_FREE_DEVICES devices (device-to-device variation kept, their hidden
  parameters saved: bounds, up/down steps, slopes or gammas, references), started at states
  spread over each device's range, then a train of up and down pulses (aihwkit's own direction
  pattern, sign(sin(pi (k + 1) / n_steps))), cycle-to-cycle and write noise off (aihwkit's
  `noise_free`): the trace a JAX model fed the same hidden parameters must reproduce.
- `<name>/noisy/*`: NOISY_DEVICES devices with all noise on, from the middle of the range,
  UP_PULSES up pulses then as many down: per pulse the mean and standard deviation over devices
  of the weight and of its step, the hidden parameters' mean and standard deviation over
  devices, and SAVED_NOISY whole traces.

Keys are flat ("reram_es/clean/trace"), arrays float32. The aihwkit and torch versions are saved
under "versions".
"""

import argparse
import json

import numpy as np
import torch
from aihwkit import __version__ as aihwkit_version
from aihwkit.simulator.configs import SingleRPUConfig
from aihwkit.simulator.configs import devices as families
from aihwkit.simulator.presets import devices as presets
from aihwkit.utils.visualization import compute_pulse_response, get_tile_for_plotting

SEED = 2026
NOISE_FREE_DEVICES = 8
NOISY_DEVICES = 2000
UP_PULSES = 50
SAVED_NOISY = 16  # devices of the noisy run whose whole traces are kept
MAX_STEPS = 300  # pulses per half-cycle of the clean train (fine devices: a part of the range)

DEVICES = {
    "constant_step": families.ConstantStepDevice,
    "linear_step": families.LinearStepDevice,
    "soft_bounds": families.SoftBoundsDevice,
    "soft_bounds_reference": families.SoftBoundsReferenceDevice,
    "exp_step": families.ExpStepDevice,
    "pow_step": families.PowStepDevice,
    "piecewise_step": lambda **kw: families.PiecewiseStepDevice(
        piecewise_up=[0.2, 0.6, 1.0, 1.2, 0.8], piecewise_down=[1.0, 0.9, 0.7, 0.5, 0.3], **kw
    ),
    "reram_es": presets.ReRamESPresetDevice,
    "reram_sb": presets.ReRamSBPresetDevice,
    "reram_array_om": presets.ReRamArrayOMPresetDevice,
    "reram_array_hfo2": presets.ReRamArrayHfO2PresetDevice,
    "capacitor": presets.CapacitorPresetDevice,
    "ecram": presets.EcRamPresetDevice,
    "ecram_mo": presets.EcRamMOPresetDevice,
    "idealized": presets.IdealizedPresetDevice,
    "gokmen_vlasov": presets.GokmenVlasovPresetDevice,
    "pcm": presets.PCMPresetDevice,
}


def _tile(make, n, noise_free, w0):
    torch.manual_seed(SEED)
    config = SingleRPUConfig(device=make(construction_seed=SEED))
    tile = get_tile_for_plotting(config, n, use_cuda=False, noise_free=noise_free)
    tile.set_weights(torch.tensor(np.asarray(w0, np.float32).reshape(n, 1)))
    return tile, config


def _hidden(tile) -> dict:
    return {k: v.detach().cpu().numpy().ravel() for k, v in tile.get_hidden_parameters().items()}


def _steps(config) -> int:
    """aihwkit's estimate_n_steps for the device, capped at MAX_STEPS."""
    device = config.device
    granularity = device.as_bindings(config.runtime.data_type).calc_weight_granularity()
    return int(min(MAX_STEPS, np.round((device.w_max - device.w_min) / granularity)))


def _clean(make) -> dict:
    probe, config = _tile(make, NOISE_FREE_DEVICES, True, np.zeros(NOISE_FREE_DEVICES))
    hidden = _hidden(probe)
    lo, hi = hidden["min_bound"], hidden["max_bound"]
    w0 = lo + (hi - lo) * np.linspace(0.05, 0.95, NOISE_FREE_DEVICES)
    tile, _ = _tile(make, NOISE_FREE_DEVICES, True, w0)
    start = tile.get_weights()[0].detach().cpu().numpy().ravel()
    n_steps = _steps(config)
    total = 4 * n_steps
    direction = np.sign(np.sin(np.pi * (np.arange(total) + 1) / n_steps))
    trace = compute_pulse_response(tile, direction, use_forward=False)
    out = {f"hidden/{k}": v for k, v in _hidden(tile).items()}
    out.update(start=start, direction=direction, trace=np.asarray(trace).reshape(total, -1))
    return out


def _noisy(make) -> dict:
    probe, _ = _tile(make, NOISY_DEVICES, False, np.zeros(NOISY_DEVICES))
    hidden = _hidden(probe)
    mid = 0.5 * (hidden["min_bound"] + hidden["max_bound"])
    tile, _ = _tile(make, NOISY_DEVICES, False, mid)
    start = tile.get_weights()[0].detach().cpu().numpy().ravel()
    direction = np.concatenate([np.ones(UP_PULSES), -np.ones(UP_PULSES)])
    trace = np.asarray(compute_pulse_response(tile, direction, use_forward=False))
    trace = trace.reshape(len(direction), -1)
    steps = np.diff(np.concatenate([start[None], trace]), axis=0)
    out = {"direction": direction, "trace_head": trace[:, :SAVED_NOISY]}
    for name, x in (("trace", trace), ("step", steps)):
        out[f"{name}_mean"], out[f"{name}_std"] = x.mean(axis=1), x.std(axis=1)
    for k, v in _hidden(tile).items():
        out[f"hidden_mean/{k}"], out[f"hidden_std/{k}"] = v.mean(), v.std()
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="The .npz to write.")
    args = parser.parse_args()
    arrays = {}
    for name, make in DEVICES.items():
        for kind, run in (("clean", _clean), ("noisy", _noisy)):
            for key, value in run(make).items():
                arrays[f"{name}/{kind}/{key}"] = np.asarray(value, np.float32)
        print(name, "done", flush=True)
    versions = {"aihwkit": aihwkit_version, "torch": torch.__version__, "seed": SEED}
    arrays["versions"] = np.frombuffer(json.dumps(versions).encode(), np.uint8)
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out}: {len(arrays)} arrays, {versions}")


if __name__ == "__main__":
    main()
