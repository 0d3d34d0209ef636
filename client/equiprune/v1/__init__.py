"""Generated protobuf and gRPC stubs of proto/equiprune/v1 (do not edit: run proto/generate.py).

Both the client and the service import them, so they live with the torch-free client.
"""
