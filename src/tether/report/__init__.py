"""``tether report``: the posture of a deployment, control by control, mapped to the frameworks.

``evidence.gather`` reads a snapshot from the live configuration and store,
``controls.run_controls`` judges it (pure), ``render.render`` writes Markdown, HTML or
JSON. ``measure`` times one revocation against a running STS.
"""

from tether.report.controls import CONTROLS, run_controls
from tether.report.model import SEVERITIES, Evidence, Report, Result
from tether.report.render import FORMATS, render

__all__ = ["CONTROLS", "FORMATS", "SEVERITIES", "Evidence", "Report", "Result", "render", "run_controls"]
