"""Write docs/reference/parameters.md from the RunConfig fields (the single source of truth):
`python tools/params_table.py > docs/reference/parameters.md`; tests/test_docs.py checks it is current."""

from bloodml.config import GROUPS, PARAMETERS, commands_reading, format_value

HEADER = """# Reference: run parameters

Every parameter works as `-P name=value` (`mlflow run`), as `--name value` on the commands that take it, and as a
key in an `experiments/*.yaml` run file. `-P` values override the YAML file named by `config` (default
`experiments/wbc.yaml`; `-P config=` for none), which overrides the recipe's values, which override the defaults
below; every run logs every resolved value. `bloodml params [GROUP]` prints the same in a terminal. Defaults follow
the original study (20 epochs, batch 17, 70/15/15 split, its augmentation set, oversampling to the majority class,
early stopping with best-weights restore).
"""


def table() -> str:
    lines = ["| parameter | default | taken by | meaning |", "|---|---|---|---|"]
    for group, title in GROUPS.items():
        lines.append(f"| **{title}** | | | |")
        for name, spec in PARAMETERS.items():
            meta = spec.metadata
            if meta["group"] != group:
                continue
            default = format_value(spec.default)
            default = f"`{default}`" if default != "" else "(empty)"
            choices = f" ({' / '.join(meta['choices'])})" if meta["choices"] else ""
            limits = f" [{meta['low']}, {meta['high']}]" if meta["low"] is not None else ""
            lines.append(f"| `{name}` | {default} | {', '.join(commands_reading(name))} | {meta['help']}{choices}"
                         f"{limits} |")
    return "\n".join(lines)


def page() -> str:
    return HEADER + "\n" + table() + "\n"


if __name__ == "__main__":
    print(page(), end="")
