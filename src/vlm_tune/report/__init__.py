"""The single-run report (data layer: imports only core): `run` reads a run folder, `plots` draws its
curves, `sections` builds its tables, `page` renders HTML + Markdown, `run_report` writes the report
and is the `vlm-tune report` command."""
