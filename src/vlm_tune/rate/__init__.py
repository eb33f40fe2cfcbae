"""`vlm-tune rate`: a team rates model outputs (or images) in the browser; ratings go to SQLite, then to the
ratings builder's CSV (export) or to a which-config-is-best report.

    tasks.py     read and check a task file (JSONL: image, prompt, responses, group)
    store.py     the SQLite store: items, current scores, history, skips; task-file changes
    queue.py     what a rater sees next / before: per-rater blind order of items and candidates
    progress.py  per-rater counts and the team's Krippendorff alpha (the ratings builder's code)
    guard.py     the web server's gate: password, body limits, one-line JSON errors
    server.py    the FastAPI app (JSON API, page, images) and running it under uvicorn
    export.py    ratings -> the ratings builder's CSV
    report.py    image mode: groups ranked by z-scored team mean; report_render.py writes Markdown + HTML
    command.py   the `vlm-tune rate serve|export|report` command line
"""
