"""Where the service keeps jobs (SQLite) and artifacts (a folder or any fsspec filesystem).
The store is built by `equiprune.service.factory.artifact_store`."""
