"""`cogview serve`: a local web page and HTTP API over one loaded text-to-image model (FastAPI + uvicorn)."""
