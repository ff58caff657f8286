"""Builds Sandstorm's E2B template and publishes it under a name.

    E2B_API_KEY=e2b_... python template/build.py

The name is `sandstorm` (what `ds` and `ds serve` use when SANDSTORM_TEMPLATE
is unset), or the value of SANDSTORM_TEMPLATE.
"""

import os

from e2b import Template, default_build_logger

from template import template


def main() -> None:
    name = os.environ.get("SANDSTORM_TEMPLATE") or "sandstorm"
    Template.build(
        template,
        name,
        cpu_count=2,
        memory_mb=2048,
        on_build_logs=default_build_logger(),
    )
    print(f"built E2B template {name!r}")


if __name__ == "__main__":
    main()
