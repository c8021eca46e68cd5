r"""The paper's multi-panel Figures 3-5, Table 2 over all tasks, and the claims across tasks.

  python experiments/paper_figures.py --scale=cpu --out_dir=results/paper --readme=README.md

Reads results/<task>_<scale>/results.json of every task that has one (reproduce.py writes
them) and writes figure3.png (A-D 1-step vs 5-step, E-H best rho), figure4.png (A-D offline
vs ROA), figure5.png (A-E ablations, D the 128-filter network), table2.md, claims.md (each
task's claims and the cross-task ones) and maml_sanity.md (origin at sigma_w 0 against MAML++'s
published accuracy, with each task's scale) to --out_dir. With --readme, the README's sections
between its `<!-- claims-summary -->` and `<!-- maml-sanity -->` markers are replaced by the
generated ones, and each task's `<!-- table2 <task>_<scale> -->` section, where the README has
one, by that task's Table 2 (its table2.md). Each task's claims.md, claims.json and table2.md are
written again from its results.json (with claims.py and figures.py as they are now).

A task that also has results at a --compare_scales scale (the longer Omniglot 5-way run,
cpu_long) gets scales_<task>.md (each method's accuracy and each claim's verdict per scale) and
scales_<task>.png (a panel per method, a curve per scale), and the README's `<!-- scales <task>
-->` section, where it has one, that table.
"""

import pathlib

import common
from absl import flags, logging

from roa_jax import claims, comparison, errors, figures, tasks
from roa_jax import config as config_lib

FLAGS = flags.FLAGS
flags.DEFINE_enum("scale", "cpu", config_lib.SCALES, "Scale whose results to assemble.")
flags.DEFINE_string("results", "results", "Folder holding <task>_<scale>/results.json.")
flags.DEFINE_string("out_dir", "results/paper", "Output folder.")
flags.DEFINE_string("readme", None, "README to update between its generated-section markers.")
flags.DEFINE_list(
    "compare_scales",
    ["cpu_long"],
    "Longer-training scales to compare each task with, where run (--scale itself is skipped).",
)

_SECTIONS = ("claims-summary", "maml-sanity")  # README sections: <!-- name --> ... <!-- /name -->


def _table2_section(task: str) -> str:
    """A task's README section holding its table2.md (optional: prose goes around it)."""
    return f"table2 {task}_{FLAGS.scale}"


def _scales_section(task: str) -> str:
    return f"scales {task}"


def _other_scales(root: pathlib.Path, by_task: dict) -> dict:
    """{task: {scale: results}} of the tasks that also have results at a --compare_scales."""
    out = {}
    for task, results in by_task.items():
        longer = {
            scale: comparison.load(root / f"{task}_{scale}")
            for scale in FLAGS.compare_scales
            if scale != FLAGS.scale and (root / f"{task}_{scale}" / "results.json").exists()
        }
        if longer:
            out[task] = {FLAGS.scale: results, **longer}
    return out


def main(argv):
    del argv
    root = pathlib.Path(FLAGS.results)
    if not root.is_dir():
        raise errors.RunFolderError(f"--results={FLAGS.results}: no such folder.")
    if FLAGS.readme:
        text = pathlib.Path(FLAGS.readme).read_text()
        for name in _SECTIONS:
            begin, end = common.readme_markers(name)
            if begin not in text or end not in text:
                raise errors.ConfigError(
                    f"--readme={FLAGS.readme} has no {begin} ... {end} markers."
                )
        for name in [f(t) for t in tasks.PAPER_TASKS for f in (_table2_section, _scales_section)]:
            begin, end = common.readme_markers(name)
            if (begin in text) != (end in text):
                raise errors.ConfigError(
                    f"--readme={FLAGS.readme} has one of {begin} ... {end}, not both."
                )
    for scale in FLAGS.compare_scales:
        if scale not in config_lib.SCALES:
            raise errors.ConfigError(f"--compare_scales={scale}: not one of {config_lib.SCALES}.")
    by_task = {
        task: comparison.load(root / f"{task}_{FLAGS.scale}")
        for task in tasks.PAPER_TASKS
        if (root / f"{task}_{FLAGS.scale}" / "results.json").exists()
    }
    if not by_task:
        raise errors.RunFolderError(
            f"--results={FLAGS.results}: no <task>_{FLAGS.scale}/results.json."
        )
    out = pathlib.Path(FLAGS.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures.paper_figure3(by_task, out / "figure3.png")
    figures.paper_figure4(by_task, out / "figure4.png")
    figures.paper_figure5(by_task, out / "figure5.png")
    (out / "table2.md").write_text(figures.paper_table2(by_task))
    summary = claims.summary(by_task, FLAGS.scale)
    (out / "claims.md").write_text(summary)
    sanity = figures.maml_sanity_table(by_task)
    (out / "maml_sanity.md").write_text(sanity)
    by_scale = _other_scales(root, by_task)
    # Each task's claims.md/json and table2.md again from its results.json (as reproduce.py
    # writes them), so a change of claims.py or figures.py reaches every committed folder.
    for task, by in {**{t: {FLAGS.scale: r} for t, r in by_task.items()}, **by_scale}.items():
        for scale, results in by.items():
            name = f"{task}_{scale}"
            claims.write(claims.evaluate(results, task), root / name, title=name)
            (root / name / "table2.md").write_text(figures.table2(results))
    for task, results in by_scale.items():
        text = figures.scales_table(results) + "\n" + claims.by_scale(results, task)
        (out / f"scales_{task}.md").write_text(text)
        figures.scales_figure(results, tasks.TASKS[task].title, out / f"scales_{task}.png")
    if FLAGS.readme:
        readme = pathlib.Path(FLAGS.readme)
        text = readme.read_text()
        sections = dict(zip(_SECTIONS, (summary, sanity), strict=True))
        for task in by_task:
            if common.readme_markers(_table2_section(task))[0] in text:
                sections[_table2_section(task)] = figures.table2(by_task[task])
        for task in by_scale:
            if common.readme_markers(_scales_section(task))[0] in text:
                sections[_scales_section(task)] = (out / f"scales_{task}.md").read_text()
        for name, body in sections.items():
            text = common.replace_readme_section(text, name, body)
        readme.write_text(text)
    logging.info(
        "Wrote figures 3-5, table2.md, claims.md, maml_sanity.md for %s (scales_<task> for %s) "
        "to %s.",
        sorted(by_task),
        sorted(by_scale),
        out,
    )
    print(summary)


if __name__ == "__main__":
    common.run(main)
