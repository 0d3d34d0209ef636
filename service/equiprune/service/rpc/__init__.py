"""Protocol-level pieces of the gRPC contract: structured error details (status), the
standard health service (health), server reflection from the committed descriptor set
(reflection) and the hooks installed in Serve's gRPC proxy process (proxy_status)."""
