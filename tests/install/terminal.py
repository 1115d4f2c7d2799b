"""What a command's terminal may show: our lines and bars, never other libraries' chatter."""
from __future__ import annotations

import re

# Lines of TensorFlow / XLA native logging, absl's glog-style prefixes, orbax's INFO lines.
FOREIGN = re.compile(r"oneDNN|cuda|absl::|orbax|tensorflow|^[IWEF]\d{4} |^WARNING: All log",
                     re.IGNORECASE | re.MULTILINE)


def foreign_lines(output: str) -> list[str]:
    """Lines of `output` (tqdm's carriage returns split too) that come from other libraries'
    logging."""
    lines = output.replace("\r", "\n").splitlines()
    return [line for line in lines if FOREIGN.search(line)]
