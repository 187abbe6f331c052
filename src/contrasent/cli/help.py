"""Help texts of the command line, rendered from the options dataclasses and their docstrings.

``contrasent train --help`` is short (the options most runs set, and how to see the rest);
``--help SECTION`` shows one recipe section, ``--help all`` every option.
"""

from __future__ import annotations

from contrasent.cli.parse import describe_fields, sections
from contrasent.core.errors import UserError
from contrasent.core.options import suggest

TRAIN_SHORT = """\
usage: contrasent train RECIPE.yaml [--section.option VALUE ...]

Train an encoder from a YAML recipe (configs/*.yaml); any recipe option can be overridden on the
command line (--train.lr 1e-5, --objective.temperature 0.1). Relative paths are resolved against
the folder you run from (the shipped recipes expect the repository root, with the data at
../shared/data).

options most runs set:
  --model.name_or_path PATH|HUB_ID   the encoder to start from
  --objective.name NAME              simcse_unsup, simcse_sup, pairs, ... (--help objective)
  --data.kind KIND --data.path PATH  the training data; --data.max_seq_length N truncates it
  --train.batch_size N --train.lr LR --train.max_steps N
  --output_dir DIR                   final/, best/, checkpoints/, metrics.jsonl
  --resume_from latest               continue an interrupted run
  --overwrite_output_dir true        replace an earlier run (kept until this one has a checkpoint)
  --data-dir DIR                     the STS data for evaluation (= --eval.data_dir)

more:
  contrasent train --help SECTION    one section: {sections}
  contrasent train --help all        every option
  contrasent train --objective.help NAME   one objective's options ({objectives})
"""


def render(command: str, options: type, topic: str | None) -> str:
    if command != "train":
        doc = (options.__doc__ or "").strip().split("\n\n")[0]
        return f"usage: contrasent {command} [--option VALUE ...]\n\n{doc}\n\n" + describe_fields(
            options
        )
    from contrasent.objectives import OBJECTIVES

    names = [*sections(options), "objective", "run"]
    if topic is None:
        return TRAIN_SHORT.format(sections=", ".join(names), objectives=", ".join(OBJECTIVES))
    if topic == "all":
        return "\n\n".join(_section(options, n) for n in names)
    if topic not in names:
        raise UserError(
            f"no help section {topic!r}{suggest(topic, names)}; sections: {', '.join(names)}"
        )
    return _section(options, topic)


def _section(options: type, name: str) -> str:
    from contrasent.objectives import describe_objectives

    secs = sections(options)
    if name == "objective":
        return (
            "objective (objective.name and objective.<option>; defaults shown):\n\n"
            + describe_objectives()
        )
    if name == "run":
        return "run (top-level options):\n" + _top_level(options)
    text = f"{name}: {(secs[name].__doc__ or '').strip().splitlines()[0]}\n"
    text += describe_fields(secs[name], prefix=f"{name}.")
    if name == "data":
        text += "\n\ndata kinds (data.kind):" + _data_kinds()
    return text


def _top_level(options: type) -> str:
    lines = describe_fields(options).splitlines()
    keep, skip = [], False
    for line in lines:  # drop the mapping-valued 'objective' (its own section)
        if line.startswith("  --objective:"):
            skip = True
            continue
        if skip and line.startswith("      "):
            continue
        skip = False
        keep.append(line)
    return "\n".join(keep)


def _data_kinds() -> str:
    from contrasent.core.options import describe
    from contrasent.data.registry import DATA_KINDS

    lines = []
    for name in sorted(DATA_KINDS):
        kind = DATA_KINDS[name]
        lines.append(f"\n  {name}: {kind.summary} -> {kind.batch_type.__name__}")
        if kind.options is not None:
            lines.append(
                "\n    options (data.options.<option>):\n" + describe(kind.options, "      ")
            )
    return "".join(lines)


def objective_help(argv: list[str]) -> str:
    """``train --objective.help NAME``: that objective's options."""
    from contrasent.objectives import OBJECTIVES, objective_class

    i = argv.index("--objective.help")
    if i + 1 >= len(argv):
        return f"usage: contrasent train --objective.help NAME ({', '.join(sorted(OBJECTIVES))})"
    cls = objective_class(argv[i + 1])
    doc = (cls.__doc__ or "").strip()
    options = cls.describe().split("\n", 1)[1]
    return f"{doc}\n\nbatches: {cls.batch_type.__name__}\noptions:\n{options}"
