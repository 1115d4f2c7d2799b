"""`activeit-jax report`: tables, plots and a self-contained HTML report of a run directory.

    activeit-jax report --run=RUN [--out=RUN/report]

writes results.md, results.csv, curves.png, curves.svg, selected_uncertainty.png and
report.html (each atomically). The run directory's layout: `activeit_jax/layout.py`.
"""
from __future__ import annotations

import json
import logging

from absl import flags

from activeit_jax import layout
from activeit_jax.commands import common
from activeit_jax.reporting import render as reports

logger = logging.getLogger(__name__)

_RUN = flags.DEFINE_string("run", None, "run directory (RUN/seed_{s}/...).")
_OUT = flags.DEFINE_string("out", None, "output directory; default RUN/report.")


def main(argv: list[str]) -> None:
    common.check_args(argv, ("run",))
    common.refuse_outputs_among_inputs({"run": _RUN.value}, {"out": _OUT.value},
                                       {"out": layout.REPORT_FILES})
    paths = reports.write_report(_RUN.value, _OUT.value)
    for name, path in paths.items():
        logger.info("wrote %s", path)
    print(json.dumps(paths))
