"""The HTTP service on Ray Serve: OpenAI-shaped image API and durable video jobs.

settings.py  ServeSettings (every knob)          schemas.py  request bodies + limits
errors.py    the JSON error shape                 files.py    outputs, named only by ids
jobs.py      durable job store (SQLite WAL / Postgres)
runner.py    video-job worker loop (leases, heartbeats, progress, cancel)
engine.py    one replica's work without Ray       generator.py  the Serve deployment (@serve.batch)
service.py   the ingress's logic                  api.py      FastAPI routes
metrics.py   Prometheus text                      app.py      build/start the Serve application
serve_config.yaml  for `serve deploy`
"""
