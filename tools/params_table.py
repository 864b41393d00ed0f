"""Print the README's parameter table from the RunConfig fields (the single source of truth)."""

from bloodml.config import PARAMETERS


def table() -> str:
    lines = ["| parameter | default | meaning |", "|---|---|---|"]
    group = None
    for name, spec in PARAMETERS.items():
        meta = spec.metadata
        if meta["group"] != group:
            group = meta["group"]
            lines.append(f"| **{group}** | | |")
        default = str(spec.default).lower() if isinstance(spec.default, bool) else spec.default
        default = f"`{default}`" if default != "" else "(empty)"
        choices = f" ({' / '.join(meta['choices'])})" if meta["choices"] else ""
        lines.append(f"| `{name}` | {default} | {meta['help']}{choices} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
