"""`flowd web`: the dashboard and HTTP API (Starlette under uvicorn), beside the CLI over TaskManager."""
