"""Co-design: gradients of ROA's post-write query loss with respect to the device (issue 14).

The loss is ROA's (MODEL.md 4): a meta-trained theta_0 programmed exactly onto crossbars, ONE
open-loop noisy write of the rho-scaled LSLR update of a task's support set, and the
cross-entropy of the task's queries on the written crossbars; averaged over tasks, each task
with its own noise draw. The device enters through the write only: programming is exact and
the read returns theta_0 whatever the device, so the support gradient does not depend on the
device, and the derivative of the query loss needs no second-order term of the network
(`maml.adapt(first_order=True)` is exact for the device).

One idea per module, each building on the ones above it:

    parameterization   the knobs: a device and rho in unconstrained coordinates
    estimators         the loss per task; straight-through and central-difference gradients
    optimizer          adam over the free knobs (and theta_0 when joint)
    diagnostics        sensitivity lines and the gradient check around a device
    report             CSV, Markdown and plots
    study              experiments/codesign.py's study, part by part

The public names of every module are re-exported here (`codesign.optimize`, ...).
"""

from roa_jax.codesign.diagnostics import (
    Direction,
    directional,
    directions,
    gradient_check,
    mean_ci,
    mean_ci_fields,
    physical_value,
    sensitivity,
)
from roa_jax.codesign.estimators import ESTIMATORS, fd_gradients, task_gradients, task_losses
from roa_jax.codesign.optimizer import (
    Problem,
    Result,
    State,
    check_problem,
    gradient,
    optimize,
    sample_tasks,
)
from roa_jax.codesign.parameterization import (
    DEFAULT_FREE,
    NAMES,
    Knobs,
    check_base,
    describe,
    device_params,
    knobs,
    shifted,
)
from roa_jax.codesign.report import (
    check_markdown,
    comparison_markdown,
    plot_optimization,
    plot_sensitivity,
    write_csv,
)
from roa_jax.codesign.study import (
    PARTS,
    Setup,
    Study,
    check_study,
    comparison_rows,
    gradient_check_rows,
    history_rows,
    optimize_devices,
    preset_rho,
    run_study,
    sensitivity_rows,
)

__all__ = [
    "DEFAULT_FREE",
    "ESTIMATORS",
    "NAMES",
    "PARTS",
    "Direction",
    "Knobs",
    "Problem",
    "Result",
    "Setup",
    "State",
    "Study",
    "check_base",
    "check_markdown",
    "check_problem",
    "check_study",
    "comparison_markdown",
    "comparison_rows",
    "describe",
    "device_params",
    "directional",
    "directions",
    "fd_gradients",
    "gradient",
    "gradient_check",
    "gradient_check_rows",
    "history_rows",
    "knobs",
    "mean_ci",
    "mean_ci_fields",
    "optimize",
    "optimize_devices",
    "physical_value",
    "plot_optimization",
    "plot_sensitivity",
    "preset_rho",
    "run_study",
    "sample_tasks",
    "sensitivity",
    "sensitivity_rows",
    "shifted",
    "task_gradients",
    "task_losses",
    "write_csv",
]
